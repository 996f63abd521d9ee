"""``matforge deploy``: a cron deployment run by a real process worker continues the campaign
from its store, a run at most ``per_run`` evaluations, and stops at its stop criterion."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    LogFilter,
    LogFilterFlowRunId,
)

from matforge.engine.store.sql import CampaignStore
from matforge.flows.cli import main

PREFECT = str(Path(sys.executable).parent / "prefect")
CAMPAIGN = {
    "name": "nightly", "elements": ["Cu", "Au"],
    "generator": {"pool_size": 12, "max_atoms": 4}, "batch_size": 2, "budget": 40,
    "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 60}},
    "anomaly": {"enabled": False}, "store": "sqlite:///nightly.db",
}


def _trigger_and_wait(env: dict, log: Path, timeout: float = 240) -> object:
    """Run the deployment now and wait for that flow run (by the id the CLI prints) to end.

    The server's scheduler also makes runs of the deployment for its cron times; they are
    not the one triggered here, so the run is followed by its id, not found among new runs.
    """
    out = subprocess.run([PREFECT, "deployment", "run", "campaign-from-file/nightly-test"],
                         env=env, check=True, capture_output=True, text=True, timeout=120).stdout
    (run_id,) = set(re.findall(r"UUID: ([0-9a-f-]{36})", out))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(UUID(run_id))
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(1)
    state = run.state.name if run.state is not None else None
    raise AssertionError(f"the triggered run {run_id} did not finish in {timeout:.0f} s "
                         f"(state {state}); worker log:\n{log.read_text()[-3000:]}")


def test_a_cron_deployment_run_by_a_worker_continues_and_stops(prefect_server, tmp_path,
                                                                capsys, stop_process_group):
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    assert main(["deploy", str(path), "--cron", "0 2 * * *", "--per-run", "2",
                 "--pool", "matforge-test", "--name", "nightly-test"]) == 0
    assert "deployment campaign-from-file/nightly-test" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        (deployment,) = client.read_deployments(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["nightly-test"])))
        assert deployment.schedules[0].schedule.cron == "0 2 * * *"
        assert deployment.parameters == {"config_path": str(path), "per_run": 2}

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1",
           "PREFECT_HOME": str(tmp_path / "worker-home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "matforge-test"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "worker.log", "wb"),
                              start_new_session=True)
    try:
        store = CampaignStore(f"sqlite:///{tmp_path / 'nightly.db'}")
        for expected in (2, 4):  # each run continues the campaign by per_run evaluations
            run = _trigger_and_wait(env, tmp_path / "worker.log")
            assert run.state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
            assert store.count(store.campaign_id("nightly")) == expected
        # the campaign has found enough: the next run says so and evaluates nothing
        path.write_text(yaml.safe_dump({**CAMPAIGN, "stop": {"target": 10.0}}))
        run = _trigger_and_wait(env, tmp_path / "worker.log")
        assert run.state.is_completed()
        assert store.count(store.campaign_id("nightly")) == 4
        said = []
        for _ in range(30):  # the run's logs reach the server shortly after it ends
            with get_client(sync_client=True) as client:
                logs = client.read_logs(log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            said = [log.message for log in logs if "nothing to do" in log.message]
            if said:
                break
            time.sleep(1)
        assert said and "reached the target 10 (stop.target)" in said[0]
    finally:
        stop_process_group(worker)
