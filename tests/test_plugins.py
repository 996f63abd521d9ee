"""Third-party plug-ins: a package of its own, installed, used by name in a campaign."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from matforge.engine import plugins
from matforge.engine.store.sql import CampaignStore

PACKAGE = Path(__file__).parent / "data" / "plugin_pkg"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example package installed by pip (its own pyproject.toml and entry points)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(PACKAGE)],
        check=True, capture_output=True,
    )
    return target


def _env(site: Path, **extra) -> dict[str, str]:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **extra}


def _matforge(site: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matforge.flows.cli", *args],
                          capture_output=True, text=True, env=_env(site, **env), timeout=600)


def test_matforge_plugins_lists_builtins_and_installed_plugins(site):
    out = _matforge(site, "plugins")
    assert out.returncode == 0, out.stderr
    for line in ("l12          mf_example_plugins:L12Generator",
                 "fractions    mf_example_plugins:FractionFeaturizer",
                 "shrunk-ridge mf_example_plugins:ShrunkRidge",
                 "gp           matforge.engine.models.gp:GPSurrogate",
                 "ptop         matforge.engine.acquisition.batch:ProbabilityOfTop",
                 "emt          matforge.adapters.ase_calc:EMTEvaluator"):
        assert line in out.stdout
    for group in plugins.GROUPS:
        assert f"{group} (matforge.{group})" in out.stdout


@pytest.mark.slow
def test_a_two_round_campaign_uses_a_plugin_generator_featurizer_and_surrogate(
    site, prefect_server, tmp_path
):
    log = tmp_path / "featurizer.log"
    campaign = {
        "name": "plugins",
        "elements": ["Cu", "Au", "Pt"],
        "generator": {"pool_size": 20, "max_atoms": 4,
                      "sources": [{"kind": "l12", "share": 0.5,
                                   "parameters": {"lattice_constant": 3.95}}]},
        "featurizer": {"kind": "fractions", "parameters": {"log": str(log)}},
        "surrogate": {"kind": "shrunk-ridge"},
        "batch_size": 3,
        "budget": 6,
        "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 60}},
        "anomaly": {"enabled": False},
        "store": "sqlite:///store.db",
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign))
    out = _matforge(site, "run", str(path), PREFECT_API_URL=prefect_server)
    assert out.returncode == 0, out.stderr[-3000:]

    store = CampaignStore(f"sqlite:///{tmp_path / 'store.db'}")
    evaluations = store.evaluations(store.campaign_id("plugins"))
    assert len(evaluations) == 6 and {e.round for e in evaluations} == {0, 1}
    assert all(e.status == "accepted" for e in evaluations)
    assert {e.model_version for e in evaluations if e.round == 1} == {"shrunk-ridge-n3"}
    assert any(e.generator == "l12:ordered" for e in evaluations)  # the plug-in's candidates
    assert log.read_text().splitlines()[0].endswith(" x 3")  # fractions of Cu, Au, Pt
    store.close()


def test_a_campaign_naming_a_kind_that_is_not_installed_is_refused(tmp_path):
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "elements": ["Cu"],
                                    "surrogate": {"kind": "shrunk-ridge"}}))
    out = subprocess.run([sys.executable, "-m", "matforge.flows.cli", "run", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "field 'surrogate.kind': surrogate 'shrunk-ridge' is not installed" in out.stderr
    assert "installed: auto, ensemble, forest, gp, ridge" in out.stderr
    assert not (tmp_path / "matforge.db").exists()
