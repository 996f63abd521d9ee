"""The closed loop end to end: real Prefect server, real EMT, real store."""

from __future__ import annotations

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from matforge.engine.config import load_config
from matforge.engine.store.sql import CampaignStore
from matforge.flows.campaign import campaign_flow
from matforge.flows.cli import main

CAMPAIGN = {
    "name": "flow-test",
    "elements": ["Cu", "Au", "Pt"],
    "generator": {"pool_size": 30, "max_atoms": 8},
    "batch_size": 4,
    "budget": 8,
    "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 100}},
    "anomaly": {"min_results": 4},
    "store": "sqlite:///store.db",
    "seed": 1,
}


@pytest.fixture
def campaign_file(tmp_path):
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    return path


def test_two_rounds_on_a_real_server_then_resume_does_nothing_new(
    prefect_server, campaign_file, capsys
):
    config = load_config(campaign_file)
    state = campaign_flow(config, return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["evaluations"] == 8 and summary["rounds"] == 2

    store = CampaignStore(config.store)
    cid = store.campaign_id(config.name)
    evaluations = store.evaluations(cid)
    assert [e.round for e in evaluations] == [0] * 4 + [1] * 4
    assert all(e.status in ("accepted", "needs_review") for e in evaluations)
    assert len({e.fingerprint for e in evaluations}) == 8
    first, second = evaluations[:4], evaluations[4:]
    # round 0 had no data: diverse random picks, no model; round 1 was chosen by the GP
    assert all(e.model_version is None and e.predicted_mean is None for e in first)
    assert all(e.model_version == "gp-n4" and e.predicted_std > 0 for e in second)
    assert all(e.acquisition_value is not None for e in second)
    for e in evaluations:
        assert e.adapter == "emt"
        assert -1.0 < e.objective < 1.0
        assert e.objective == e.result["formation_energy_per_atom"]
        assert len(e.result["forces"]) == len(e.input_structure())
    rounds = store.rounds(cid)
    assert rounds[-1].finished
    # every round stores the held-out quality of the model that picks the next one
    metrics = rounds[-1].result.surrogate_metrics
    assert set(metrics) >= {"rmse", "mae", "nll", "coverage90", "miscalibration_area"}
    assert metrics["rmse"] > 0 and 0 <= metrics["coverage90"] <= 1

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.state.is_completed()
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
        names = [t.name for t in tasks]
        assert sum(n.startswith("evaluate-") for n in names) == 8

    # a second run of the finished campaign evaluates nothing new
    assert main(["run", str(campaign_file)]) == 0
    assert [e.id for e in store.evaluations(cid)] == [e.id for e in evaluations]
    out = capsys.readouterr().out
    assert "flow-test: 8 evaluations in 2 rounds" in out

    # a larger budget continues the same campaign without repeating a candidate
    assert main(["run", str(campaign_file), "--budget", "12"]) == 0
    more = store.evaluations(cid)
    assert len(more) == 12 and len({e.fingerprint for e in more}) == 12
    assert {e.round for e in more[8:]} == {2}

    assert main(["status", str(campaign_file)]) == 0
    out = capsys.readouterr().out
    assert "flow-test: 12 evaluations in 3 rounds" in out
    assert "best by formation_energy_per_atom" in out


def test_bad_campaign_file_exits_2_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**CAMPAIGN, "batch_size": -3}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "field 'batch_size'" in err and "greater than or equal to 1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]

    path.write_text(yaml.safe_dump({**CAMPAIGN, "evaluator": {"adapter": "nope"}}))
    assert main(["run", str(path)]) == 2
    assert "adapter 'nope' is not installed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize("change, field, name", [
    ({"objective": {"property": "formation_energy_per_atm"}}, "objective.property",
     "formation_energy_per_atm"),
    ({"constraints": [{"property": "band_gap", "above": 0.5}]}, "constraints.0.property",
     "band_gap"),
])
def test_a_property_the_adapter_does_not_report_exits_2_and_writes_nothing(
    tmp_path, capsys, change, field, name
):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**CAMPAIGN, **change}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"field '{field}': adapter 'emt' does not report {name!r}" in err
    assert "(it reports: density, energy, energy_per_atom, formation_energy_per_atom" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize("change, field, remedy", [
    ({"objective": {"property": "energy_per_atom"}}, "objective", "give the campaign a new name"),
    ({"elements": ["Cu", "Pt"]}, "elements", "run with --new-config"),
    ({"evaluator": {"adapter": "emt", "parameters": {"fmax": 0.3}}}, "evaluator.parameters",
     "run with --new-config"),
])
def test_another_campaign_under_an_existing_name_exits_2_and_changes_nothing(
    tmp_path, capsys, change, field, remedy
):
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(CAMPAIGN))
    config = load_config(first)
    store = CampaignStore(config.store)
    store.campaign_id(config.name, config.model_dump(mode="json"))
    before = store.campaign_config(config.name)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**CAMPAIGN, **change}))
    assert main(["run", str(changed)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"field '{field}': campaign 'flow-test'" in err
    assert remedy in err
    assert store.campaign_config(config.name) == before and store.owners(1) == []
    store.close()


def test_cli_exit_code_from_a_shell(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nelements: [Cu, Unobtainium]\n")
    out = subprocess.run(
        [sys.executable, "-m", "matforge.flows.cli", "run", str(path)],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "field 'elements': 'Unobtainium' is not a chemical element symbol" in out.stderr


def test_two_objective_campaign_picks_by_hypervolume_and_stores_the_front(prefect_server, tmp_path):
    """Low formation energy and high density compete (Au is dense, Cu-Au mixes)."""
    path = tmp_path / "pareto.yaml"
    path.write_text(yaml.safe_dump({
        **CAMPAIGN, "name": "pareto",
        "objectives": [{"property": "density", "direction": "maximize"}],
        "budget": 12,
    }))
    config = load_config(path)
    summary = campaign_flow(config)
    assert summary["evaluations"] == 12
    store = CampaignStore(config.store)
    cid = store.campaign_id("pareto")
    later = [e for e in store.evaluations(cid) if e.round >= 1]
    assert later and all(e.model_version.startswith("gp-nehvi-n") for e in later)
    pareto = store.rounds(cid)[-1].result.pareto
    assert pareto["hypervolume"] > 0 and len(pareto["front"]) >= 2
    front = pareto["front"]
    # on the front, more density is paid for with formation energy (or they would not be a front)
    front.sort(key=lambda p: p["density"])
    energies = [p["formation_energy_per_atom"] for p in front]
    assert all(a >= b for a, b in zip(energies[1:], energies)) or len(front) == 1


def test_a_pool_proposed_ahead_shows_as_the_next_rounds_task_while_evaluations_run(
    prefect_server, tmp_path
):
    path = tmp_path / "ahead.yaml"
    path.write_text(yaml.safe_dump({
        **CAMPAIGN, "name": "ahead-flow", "batch_size": 2, "budget": 6,
        "generator": {**CAMPAIGN["generator"], "ahead": True}, "anomaly": {"enabled": False}}))
    state = campaign_flow(load_config(path), return_state=True)
    assert state.is_completed() and state.result()["evaluations"] == 6
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    runs = {t.name: t for t in tasks}
    assert {f"propose · round {r}" for r in range(3)} <= set(runs)
    assert all(t.state.is_completed() for t in tasks)
    for round in (1, 2):
        # the previous round's evaluations: started between its pick and this round's
        picked = runs[f"select · round {round - 1}"].end_time
        evaluations = [t for t in tasks if t.name.startswith("evaluate-")
                       and picked < t.start_time < runs[f"select · round {round}"].start_time]
        assert len(evaluations) == 2
        # this round's pool was proposed while they ran
        assert runs[f"propose · round {round}"].start_time < max(
            t.end_time for t in evaluations)
