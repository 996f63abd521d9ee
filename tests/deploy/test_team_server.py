"""The team topology of ``deploy/docker-compose.yml``, without containers (Docker's daemon
does not run on these machines): a Prefect server whose database is PostgreSQL, a process
worker, and a campaign store on PostgreSQL. A cron deployment made by ``matforge deploy`` and
triggered through the API runs on the worker and writes the campaign to the PostgreSQL store;
the server's runs are rows in its PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml
from sqlalchemy import create_engine, text

from matforge.engine.store.sql import CampaignStore
from matforge.flows.cli import main
from matforge.flows.server import start_server

PREFECT = str(Path(sys.executable).parent / "prefect")


def test_a_prefect_server_on_postgresql_a_worker_and_a_postgresql_store_run_a_campaign(
    prefect_database, pg_url, free_port, tmp_path, stop_process_group
):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path / "server-home"
    api, server = start_server(port=free_port(), log_path=home / "server.log", env={
        "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database})
    pool = f"team-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump({
        "name": "team", "elements": ["Cu", "Au"],
        "generator": {"pool_size": 12, "max_atoms": 4}, "batch_size": 2, "budget": 40,
        "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 60}},
        "anomaly": {"enabled": False}, "store": pg_url}))
    env = {**os.environ, "PREFECT_API_URL": api, "OMP_NUM_THREADS": "1",
           "PREFECT_HOME": str(tmp_path / "worker-home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    worker = None
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            assert main(["deploy", str(path), "--cron", "0 2 * * *", "--per-run", "2",
                         "--pool", pool, "--name", "team-nightly"]) == 0
            worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", pool], env=env,
                                      cwd=tmp_path, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / "worker.log", "wb"),
                                      start_new_session=True)
            subprocess.run([PREFECT, "deployment", "run", "campaign-from-file/team-nightly"],
                           env=env, check=True, capture_output=True, timeout=120)
            deadline = time.monotonic() + 240
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline:
                    runs = [r for r in client.read_flow_runs()
                            if r.name.startswith("team · run 1")]
                    if runs and runs[0].state and runs[0].state.is_final():
                        break
                    time.sleep(1)
            assert runs and runs[0].state.is_completed(), \
                (tmp_path / "worker.log").read_text()[-3000:]
        store = CampaignStore(pg_url)
        assert store.count(store.campaign_id("team")) == 2  # the run's per-run budget
        store.close()
        # the server kept its runs in PostgreSQL, not in a SQLite file under PREFECT_HOME
        prefect_db = create_engine(prefect_database.replace("+asyncpg", "+psycopg2"))
        with prefect_db.connect() as conn:
            names = set(conn.execute(text("SELECT name FROM flow_run")).scalars())
        prefect_db.dispose()
        assert "team · run 1 · round 0" in names
        assert not list(home.glob("*.db"))
    finally:
        if worker is not None:
            stop_process_group(worker)
        stop_process_group(server)
