"""The ``executor`` section: bad input named with the reason (exit 2), the job script."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matforge.adapters.base import Resources
from matforge.engine.config import ConfigError, parse_config
from matforge.engine.loop.slurm import TEMPLATE, render_script, sbatch_time, script_fields
from matforge.flows.cli import main

GOOD = {"name": "t", "elements": ["Cu", "Au"]}


@pytest.mark.parametrize(
    ("executor", "field", "reason"),
    [
        ({"kind": "pbs"}, "executor.kind", "'local', 'dask' or 'slurm'"),
        ({"workers": 0}, "executor.workers", "greater than or equal to 1"),
        ({"limits": {"vasp licence": 2}}, "executor.limits", "letters, digits"),
        ({"limits": {"vasp": 0}}, "executor.limits", "slots must be a whole number >= 1"),
        ({"gpus": [0, 0]}, "executor.gpus", "distinct"),
        ({"kind": "slurm", "gpus": [0]}, "executor", "Slurm gives jobs their GPUs"),
        ({"slurm": {"directives": ["--mem 4G; rm -rf /"]}}, "executor.slurm.directives",
         "is not one sbatch option"),
        ({"slurm": {"partition": "a b"}}, "executor.slurm.partition", "pattern"),
        ({"dask": {"address": "tcp://h:8786", "cluster": "slurm"}}, "executor",
         "not both"),
    ],
)
def test_bad_executor_fields_are_named_with_the_reason(executor, field, reason):
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, "executor": executor})
    assert f"field '{field}'" in str(info.value)
    assert reason in str(info.value)


def _run_file(tmp_path: Path, executor: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "executor": executor, "store": "sqlite:///s.db"}))
    return path


def test_slurm_without_its_commands_is_refused_before_anything_is_stored(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    path = _run_file(tmp_path, {"kind": "slurm"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "field 'executor.kind': slurm, but sbatch is not on PATH" in err
    assert err.count("\n") == 1 and not (tmp_path / "s.db").exists()


def test_a_template_that_cannot_run_the_evaluation_is_refused(tmp_path, capsys):
    (tmp_path / "job.sh").write_text("#!/bin/bash\necho hello\n")
    path = _run_file(tmp_path, {"slurm": {"template": "job.sh"}})
    assert main(["run", str(path)]) == 2
    assert "never uses ${spec}" in capsys.readouterr().err
    path = _run_file(tmp_path, {"slurm": {"template": "../elsewhere.sh"}})
    assert main(["run", str(path)]) == 2
    assert "leads outside the campaign's directory" in capsys.readouterr().err
    path = _run_file(tmp_path, {"slurm": {"template": "missing.sh"}})
    assert main(["run", str(path)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


def test_the_job_script_asks_for_the_adapters_resources_and_the_sites_options(tmp_path):
    settings = parse_config({**GOOD, "executor": {"kind": "slurm", "slurm": {
        "partition": "gpu", "account": "mat-123", "qos": "normal",
        "directives": ["--constraint=a100"], "setup": ["module load vasp/6.4"],
        "python": "/opt/env/bin/python"}}}).executor.slurm
    resources = Resources(cores=8, gpus=2, memory_gb=15.5, walltime=5400.0)
    script = render_script(TEMPLATE, script_fields(
        settings, resources, name="mf-abc", workdir=tmp_path, spec=tmp_path / "s.pkl",
        walltime=5400.0, campaign="c", evaluation=7, label="7-Cu-abc"))
    for line in ("#SBATCH --job-name=mf-abc", f"#SBATCH --output={tmp_path}/slurm-%j.out",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=15872M", "#SBATCH --time=90",
                 "#SBATCH --partition=gpu", "#SBATCH --account=mat-123", "#SBATCH --qos=normal",
                 "#SBATCH --gres=gpu:2", "#SBATCH --constraint=a100", "module load vasp/6.4",
                 "export MATFORGE_THREADS=8 MATFORGE_WORKERS=1",
                 f"exec /opt/env/bin/python -m matforge.engine.loop.job {tmp_path}/s.pkl"):
        assert line in script.splitlines(), line
    assert "${" not in script
    # a template's own shell variables are left for the shell
    assert render_script("echo ${HOME} ${cores}", {"cores": 4}) == "echo ${HOME} 4"
    assert [sbatch_time(s) for s in (1, 60, 61, 3600)] == [1, 1, 2, 60]

