from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

from matforge.engine.store.sql import CampaignStore

ROOT = Path(__file__).resolve().parents[2]


def test_deployment_entrypoint_runs_a_campaign_file(prefect_server, tmp_path):
    spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    deployment = spec["deployments"][0]
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    assert (ROOT / deployment["parameters"]["config_path"]).is_file()

    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "scheduled", "elements": ["Cu", "Pt"], "generator": {"pool_size": 10},
             "batch_size": 3, "budget": 100, "store": "sqlite:///s.db"}
        )
    )
    summary = flow(config_path=str(path), budget=3)
    assert summary["evaluations"] == 3
    store = CampaignStore(f"sqlite:///{tmp_path / 's.db'}")
    assert store.count(store.campaign_id("scheduled")) == 3
