"""Several ``matforge run`` of one campaign at once, one of them killed mid-run: every
evaluation is paid for exactly once and the budget is spent exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from matforge.engine.store.sql import FINISHED, CampaignStore

pytestmark = pytest.mark.slow

BUDGET = 12
LEASE = 3.0


def _ledger(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line.strip())


def _holder_pid(url: str) -> int | None:
    store = CampaignStore(url)
    try:
        live = [o for o in store.owners(store.campaign_id("together")) if o.alive()]
        return live[0].pid if live else None
    except KeyError:
        return None
    finally:
        store.close()


@pytest.mark.parametrize("backend,runs", [("sqlite", 2), ("postgresql", 3)])
def test_concurrent_runs_of_one_campaign_pay_for_each_evaluation_once(
    backend, runs, prefect_server, testing_adapters, tmp_path, request
):
    url = (f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    ledger = tmp_path / "ledger.txt"
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": "together",
        "elements": ["Cu", "Au", "Pt"],
        "generator": {"pool_size": 30, "max_atoms": 6},
        "batch_size": 3,
        "budget": BUDGET,
        "evaluator": {"adapter": "emt-ledger",
                      "parameters": {"ledger": str(ledger), "fmax": 0.1, "max_steps": 100}},
        "anomaly": {"enabled": False},
        "store": url,
        "seed": 4,
    }))
    env = {**os.environ, "PREFECT_API_URL": prefect_server,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MATFORGE_LEASE": str(LEASE)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "matforge.flows.cli", "run", str(path)],
                         cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                         stderr=open(tmp_path / f"stderr-{k}.log", "wb"),
                         start_new_session=True)
        for k in range(runs)
    ]
    # mid-run: some evaluations paid for, then kill the run that holds the campaign
    deadline = time.monotonic() + 300
    while sum(_ledger(ledger).values()) < 2 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a run ended before the kill"
        time.sleep(0.1)
    pid = _holder_pid(url)
    victim = next((p for p in procs if p.pid == pid), procs[0])
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()

    for k, proc in enumerate(procs):
        if proc is not victim:
            assert proc.wait(timeout=600) == 0, (tmp_path / f"stderr-{k}.log").read_text()[-3000:]

    store = CampaignStore(url)
    cid = store.campaign_id("together")
    evaluations = store.evaluations(cid)
    owners = store.owners(cid)
    store.close()
    paid = _ledger(ledger)
    assert len(evaluations) == BUDGET
    assert all(e.status in FINISHED for e in evaluations)
    assert set(paid) == {e.fingerprint for e in evaluations}
    assert {fp: n for fp, n in paid.items() if n > 1} == {}, "an evaluation was paid twice"
    assert sum(paid.values()) == BUDGET
    # the killed run's lease expired and another run took over; the others ended cleanly
    ended = Counter(o.ended.split(";")[0] for o in owners)
    assert ended["lease expired"] == 1 and ended["finished"] == runs - 1, ended
