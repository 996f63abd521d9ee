"""What a campaign shows in the Prefect UI, read back through the Prefect API: run names,
task runs by stage and round, and the artifacts under their stable keys; and the same
report as one HTML file."""

from __future__ import annotations

import re

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.sorting import ArtifactSort

from matforge.adapters.registry import build_evaluators
from matforge.engine.config import load_config, parse_config
from matforge.engine.loop import report as report_module
from matforge.engine.loop.isolate import run_isolated
from matforge.engine.loop.report import stored_report
from matforge.engine.loop.round import run_campaign
from matforge.engine.store.sql import CampaignStore
from matforge.flows import artifacts
from matforge.flows.artifacts import publish_round
from matforge.flows.campaign import campaign_flow
from matforge.flows.cli import main

CAMPAIGN = {
    "name": "UI_test", "elements": ["Cu", "Au", "Pt"],
    "generator": {"pool_size": 30, "max_atoms": 8},
    "batch_size": 4, "budget": 8,
    "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 100}},
    "anomaly": {"min_results": 4}, "store": "sqlite:///store.db", "seed": 2,
}


def _artifacts(client, key):
    return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
        any_=[key])), sort=ArtifactSort.CREATED_DESC)


def test_a_campaign_names_its_runs_and_publishes_its_artifacts(prefect_server, tmp_path,
                                                                capsys):
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    config = load_config(path)
    state = campaign_flow(config, return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.name == "UI_test · run 1 · rounds 0–1"
        # what a viewer needs, not the whole configuration
        assert run.parameters == {
            "campaign": "UI_test", "objective": "minimize formation_energy_per_atom",
            "evaluator": "emt", "budget": 8, "batch_size": 4, "acquisition": "ptop",
            "find": "best", "store": "sqlite:///" + str(tmp_path / "store.db"), "new_config": False}
        names = [t.name for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))]
        assert {"propose · round 0", "select · round 1", "flag · round 1"} <= set(names)
        # the model's held-out quality is read from the fit that picked: no refits
        assert not any(n.startswith("retrain") for n in names)
        assert sum(n.startswith("evaluate-") for n in names) == 8

        picks = _artifacts(client, "ui-test-picks")
        assert len(picks) == 2  # one version per round, the latest first
        rows = picks[0].data if isinstance(picks[0].data, list) else yaml.safe_load(
            picks[0].data)
        assert len(rows) == 4 and {"formula", "generator", "predicted", "acquisition",
                                   "status"} <= set(rows[0])
        assert all(re.fullmatch(r"-?[\d.]+ ± [\d.]+", r["predicted"]) for r in rows)

        (report, *_) = _artifacts(client, "ui-test-report")
        assert report.type == "markdown"
        images = re.findall(r"data:image/png;base64,", report.data)
        assert len(images) >= 4  # progress, parity, calibration, map
        assert "# UI_test: campaign report" in report.data

        (budget, *_) = _artifacts(client, "ui-test-budget")
        assert budget.type == "progress" and float(budget.data) == 100.0

    # a second run is run 2, named by the round it adds
    assert main(["run", str(path), "--budget", "12"]) == 0
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        assert "UI_test · run 2 · round 2" in {r.name for r in runs}

    out = tmp_path / "report.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<img ") >= 4
    assert "12 of 12 evaluations claimed" in page and "http" not in page
    assert str(out) in capsys.readouterr().out


def test_a_rounds_report_is_drawn_in_a_process_of_its_own(prefect_server, tmp_path,
                                                          monkeypatch):
    # drawn in a thread of the campaign's process, its figures held the interpreter's lock
    # against the next round's pick and proposal (benchmarks/orchestration.py)
    run_isolated(int, (), None)  # the fork server runs, started in another directory:
    monkeypatch.chdir(tmp_path)  # its child opens the relative store path from this one
    config, evaluator, _ = build_evaluators(parse_config({**CAMPAIGN, "budget": 4}))
    store = CampaignStore(config.store)
    run_campaign(config, store, evaluator)
    cid = store.campaign_id(config.name)
    expected = stored_report(store, config, cid)

    def drawn_here(*args, **kwargs):
        raise AssertionError("the report was drawn in the campaign's process")

    for module in (report_module, artifacts):
        monkeypatch.setattr(module, "campaign_report", drawn_here, raising=False)
    report = publish_round(config, store, cid)
    assert [f.key for f in report.figures] == [f.key for f in expected.figures]
    assert report.summary == expected.summary and report.picks == expected.picks
    with get_client(sync_client=True) as client:
        (latest, *_) = _artifacts(client, "ui-test-report")
        assert latest.data == report.markdown()
