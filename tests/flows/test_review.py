"""Flagged results: held out of training, shown as a Prefect artifact, decided by a person."""

from __future__ import annotations

import getpass
import re

import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from matforge.engine.config import load_config
from matforge.engine.loop.round import training_set as _training
from matforge.engine.store.sql import CampaignStore
from matforge.flows.artifacts import publish_review
from matforge.flows.campaign import campaign_flow
from matforge.flows.cli import main


def test_review_holds_results_out_until_a_person_decides(prefect_server, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "Review-Me", "elements": ["Cu", "Au"],
             "generator": {"pool_size": 20, "max_atoms": 8},
             "batch_size": 5, "budget": 5, "anomaly": {"enabled": False},
             "store": "sqlite:///r.db"}
        )
    )
    config = load_config(path)
    campaign_flow(config)
    store = CampaignStore(config.store)
    cid = store.campaign_id(config.name)
    ids = [e.id for e in store.evaluations(cid)]
    store.set_status(ids[:2], "needs_review", note="planted")
    assert {e.id for e in _training(store, cid, 1, maximize=False)} == set(ids[2:])

    @flow
    def publish():
        publish_review(config, store, cid)

    publish()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["review-me-needs-review"])),
            sort=ArtifactSort.CREATED_DESC)
    assert artifacts and artifacts[0].type == "table"
    assert str(ids[0]) in str(artifacts[0].data) and str(ids[1]) in str(artifacts[0].data)

    assert main(["review", str(path)]) == 0
    listed = capsys.readouterr().out
    assert f"#{ids[0]} " in listed and f"#{ids[1]} " in listed and f"#{ids[2]} " not in listed
    # numbers to the digits they support, not 16
    assert not re.search(r"\d\.0*[1-9]\d{4,}", listed), listed  # 4 significant digits

    # contradictory or partly wrong decisions are refused whole: nothing changes
    refused = [
        ["--accept", str(ids[0]), "--reject", str(ids[0])],
        ["--accept", str(ids[0]), "--reject", str(ids[2])],
        ["--note", "no decision"],
    ]
    for flags in refused:
        assert main(["review", str(path), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("matforge: error: ") and err.count("\n") == 1
    assert [e.status for e in store.evaluations(cid)][:2] == ["needs_review"] * 2

    assert main(["review", str(path), "--accept", str(ids[0]), "--reject", str(ids[1]),
                 "--note", "checked by hand"]) == 0
    statuses = {e.id: e.status for e in store.evaluations(cid)}
    assert statuses[ids[0]] == "accepted" and statuses[ids[1]] == "rejected"
    assert "needs-review table in the Prefect UI is updated" in capsys.readouterr().out
    # the UI's table follows the decision: it no longer lists what was decided
    with get_client(sync_client=True) as client:
        (latest, *_) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["review-me-needs-review"])),
            sort=ArtifactSort.CREATED_DESC)
    assert "nothing waits for review" in str(latest.data)
    # published by a flow run of its own, named by campaign and reviewer, beside the rounds
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(latest.flow_run_id)
    assert run.name == f"Review-Me · review by {getpass.getuser()}"
    assert run.parameters["accept"] == [ids[0]] and run.parameters["note"] == "checked by hand"
    assert "campaign:Review-Me" in run.tags
    assert main(["review", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "Review-Me: nothing waits for review"
    assert {e.id for e in _training(store, cid, 1, maximize=False)} == {ids[0], *ids[2:]}

    # deciding twice, or on a result that was never flagged, is refused and changes nothing
    assert main(["review", str(path), "--reject", str(ids[0])]) == 2
    assert "not awaiting review" in capsys.readouterr().err
    assert store.evaluations(cid)[0].status == "accepted"
