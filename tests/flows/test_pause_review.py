"""A campaign paused for review in the Prefect UI, resumed through the Prefect API with one
accept, one reject and one re-evaluate: the next round trains on the accepted result only and
evaluates the third again; every decision is stored with who, when and why."""

from __future__ import annotations

import contextvars
import threading
import time

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.flow_runs import resume_flow_run

from matforge.engine.config import load_config
from matforge.engine.loop.round import training_set
from matforge.engine.store.sql import CampaignStore
from matforge.flows.campaign import campaign_flow

CAMPAIGN = {
    "name": "paused", "elements": ["Cu", "Au"], "generator": {"pool_size": 20, "max_atoms": 8},
    "batch_size": 4, "budget": 4, "anomaly": {"enabled": False},
    "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 80}},
    "store": "sqlite:///p.db", "seed": 3,
}


def test_a_paused_campaign_takes_the_decisions_from_the_prefect_api(prefect_server, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    campaign_flow(load_config(path))  # round 0: four results
    store = CampaignStore(f"sqlite:///{tmp_path / 'p.db'}")
    cid = store.campaign_id("paused")
    ids = [e.id for e in store.evaluations(cid)]
    store.set_status(ids[:3], "needs_review", note="planted")  # as DBSCAN would flag them

    path.write_text(yaml.safe_dump({**CAMPAIGN, "budget": 8,
                                    "review": {"pause": True, "poll_interval": 1}}))
    config = load_config(path)
    outcome = {}
    # the flow runs in a thread with this test's Prefect settings (they are context variables)
    runner = threading.Thread(target=contextvars.copy_context().run,
                              args=(lambda: outcome.update(campaign_flow(config)),))
    runner.start()
    run = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run is None:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["paused · run 2"])))
        run = next((r for r in runs if r.state and r.state.is_paused()), None)
        time.sleep(0.5)
    assert run is not None, "the campaign did not pause for review"
    assert store.count(cid) == 4  # it waits before round 1: nothing new is claimed
    resume_flow_run(run.id, run_input={"accept": [ids[0]], "reject": [ids[1]],
                                       "reevaluate": [ids[2]], "reviewer": "ada",
                                       "note": "checked the relaxations"})
    runner.join(timeout=400)
    assert not runner.is_alive() and outcome["evaluations"] == 8

    by_id = {e.id: e for e in store.evaluations(cid)}
    assert by_id[ids[0]].status == "accepted" and by_id[ids[1]].status == "rejected"
    assert by_id[ids[2]].status == "rejected"
    assert by_id[ids[2]].review_note.startswith("evaluated again as #")
    for i in ids[:3]:
        assert by_id[i].reviewed_by == "ada" and by_id[i].reviewed_at is not None
    assert by_id[ids[0]].review_note == "checked the relaxations"
    # round 1 trained on the accepted results only, and evaluated the third candidate again
    assert {e.id for e in training_set(store, cid, 1, maximize=False)} == {ids[0], ids[3]}
    again = [e for e in by_id.values() if e.id not in ids and
             e.fingerprint == by_id[ids[2]].fingerprint]
    assert len(again) == 1 and again[0].round == 1 and again[0].status == "accepted"
    assert f"#{again[0].id}" in by_id[ids[2]].review_note
    store.close()


def test_an_unanswered_review_applies_the_campaigns_default_and_goes_on(prefect_server,
                                                                        tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**CAMPAIGN, "name": "unanswered"}))
    campaign_flow(load_config(path))
    store = CampaignStore(f"sqlite:///{tmp_path / 'p.db'}")
    cid = store.campaign_id("unanswered")
    ids = [e.id for e in store.evaluations(cid)]
    store.set_status(ids[:2], "needs_review", note="planted")
    path.write_text(yaml.safe_dump({
        **CAMPAIGN, "name": "unanswered", "budget": 8,
        "review": {"pause": True, "timeout": 2, "poll_interval": 1, "on_timeout": "reject"}}))
    state = campaign_flow(load_config(path), return_state=True)
    assert state.is_completed() and state.result()["evaluations"] == 8
    by_id = {e.id: e for e in store.evaluations(cid)}
    assert [by_id[i].status for i in ids[:2]] == ["rejected", "rejected"]
    assert by_id[ids[0]].reviewed_by == "timeout"
    assert by_id[ids[0]].review_note == "review.on_timeout: reject"
    store.close()
