"""The adapter contract: the conformance kit passes the built-in adapter and names every
broken promise of a broken one; job adapters re-attach to a job instead of paying twice."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure

from matforge.adapters.base import Resources
from matforge.adapters.conformance import check_adapter
from matforge.engine.loop.isolate import EvaluationTimeout, run_isolated
from matforge.engine.loop.results import evaluate_to_file, read_result
from matforge.flows.cli import main

EMT = {"fmax": 0.1, "max_steps": 100}


def test_the_emt_adapter_conforms(capsys):
    assert check_adapter("emt", EMT) == []
    assert main(["adapters", "check", "emt", "--parameters", '{"fmax": 0.1}']) == 0
    assert capsys.readouterr().out == "emt: conforms\n"


def test_a_broken_adapter_gets_a_list_of_what_it_breaks(testing_adapters, capsys):
    problems = check_adapter("broken")
    expected = [
        "implemented_properties: 'band_gap' has no unit",
        "result: declared property 'band_gap' is missing",
        "result: reports 'magnetization', which implemented_properties does not declare",
        "idempotency: 'energy' was",
        "raised ValueError, not EvaluationError",
    ]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert len(problems) == len(expected), problems
    assert main(["adapters", "check", "broken"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"broken: {len(expected)} problem(s)\n") and "  - " in out


def test_matforge_adapters_lists_properties_with_units_and_resources(capsys):
    assert main(["adapters"]) == 0
    out = capsys.readouterr().out
    assert "emt          matforge.adapters.ase_calc:EMTEvaluator" in out
    assert "formation_energy_per_atom [eV/atom]" in out and "density [g/cm^3]" in out
    assert "1 core(s), 0 GPU(s), 2 GiB, walltime 3600 s" in out


def test_an_unknown_adapter_or_bad_parameters_exit_2(capsys):
    assert main(["adapters", "check", "nope"]) == 2
    assert main(["adapters", "check", "emt", "--parameters", "[1]"]) == 2
    err = capsys.readouterr().err
    assert "adapter 'nope' is not installed" in err and "JSON object" in err


def test_resources_are_declared_and_a_campaign_may_override_them(tmp_path, capsys):
    assert Resources().override({"cores": 8, "walltime": 60.0}).cores == 8
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "r", "elements": ["Cu", "Au"],
        "evaluator": {"adapter": "emt", "resources": {"gpus": -1}},
    }))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "field 'evaluator.resources.gpus'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_job_adapter_re_attaches_to_its_job_instead_of_submitting_again(testing_adapters,
                                                                         tmp_path):
    from mf_testing_adapters import ProcessJob

    cu = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
    workdir = tmp_path / "run"
    args = (ProcessJob(8.0), cu.as_dict(), str(workdir), "key")
    run_isolated(int, (), None)  # the fork server's start-up is not the job's time
    with pytest.raises(EvaluationTimeout):  # the campaign's process stops watching it
        run_isolated(evaluate_to_file, (_itself_factory(args[0]), *args[1:]), 4.0)
    assert (workdir / "job.json").exists() and not (workdir / "energy").exists()
    # started again in the same directory, it waits for the job it already has
    run_isolated(evaluate_to_file, (_itself_factory(args[0]), *args[1:]), 30.0)
    assert read_result(workdir, "key")["energy"] == -3.5
    assert Path(workdir / "submissions").read_text() == "submitted\n"


def _itself_factory(evaluator):
    from functools import partial

    from matforge.engine.loop.round import _itself

    return partial(_itself, evaluator)


def test_the_readmes_example_adapter_installs_and_conforms(tmp_path, monkeypatch):
    import sys

    example = Path(__file__).parents[2] / "examples" / "my_adapter"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", "--no-build-isolation", "--target", str(tmp_path),
                    str(example)], check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert check_adapter("lj") == []
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert (example / "my_adapter.py").read_text() in readme  # the README shows it whole


def test_every_built_in_adapter_has_a_conformance_test():
    """A new built-in adapter comes with a test that runs the kit on it."""
    import re
    from importlib.metadata import entry_points

    root = Path(__file__).resolve().parents[2]
    built_in = {ep.name for ep in entry_points(group="matforge.adapters")
                if ep.value.startswith("matforge.adapters.")}
    assert {"emt", "qe", "bpnn"} <= built_in
    checked = set()
    for path in (root / "tests" / "adapters").glob("test_*.py"):
        checked |= set(re.findall(r'check_adapter\(\s*["\x27]([\w-]+)["\x27]', path.read_text()))
    assert built_in - checked == set()
