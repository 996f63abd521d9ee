"""The store on the PostgreSQL server of this machine: concurrent writers, concurrent first
opens of an old store, and a whole campaign flow.

Each test gets a schema of its own, dropped afterwards. The tests are skipped only
when no server answers at ``tests/conftest.py``'s ``POSTGRES``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from sqlalchemy import text

from matforge.engine.store.sql import SCHEMA_VERSION, CampaignStore

pytestmark = pytest.mark.postgres

WRITER = """
import json, sys, time, random
from pymatgen.core import Lattice, Structure
from matforge.engine.store.sql import CampaignStore
url, worker, n, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
while time.time() < start:
    time.sleep(0.01)
store = CampaignStore(url)  # all four open (and create) the schema at once
cid = store.campaign_id("shared", {"name": "shared"})
fps = [f"fp{i:03d}" for i in range(n)]
random.Random(worker).shuffle(fps)
structure = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
won = []
for fp in fps:
    claim = store.claim(cid, 0, structure, fp, "test", "emt", {"fmax": 0.1})
    if claim.new:
        won.append(fp)
        store.complete(claim.id, "accepted", objective=int(fp[2:]) / 1000, result={"by": worker})
print(json.dumps(won))
"""


@pytest.mark.slow
def test_four_processes_creating_and_writing_one_campaign_at_once(pg_url):
    n = 100
    start = time.time() + 6.0  # after every worker has imported pymatgen
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, pg_url, str(w), str(n), str(start)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(4)
    ]
    won = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        won.append(json.loads(out.strip().splitlines()[-1]))
    every = sorted(fp for w in won for fp in w)
    assert every == [f"fp{i:03d}" for i in range(n)]  # nothing lost, nothing claimed twice
    assert sum(bool(w) for w in won) >= 2

    store = CampaignStore(pg_url)
    assert store.campaign_names() == ["shared"]
    evaluations = store.evaluations(store.campaign_id("shared"))
    assert len(evaluations) == n == len({e.key for e in evaluations})
    winner = {fp: w for w, fps in enumerate(won) for fp in fps}
    for e in evaluations:
        assert e.status == "accepted" and e.objective == int(e.fingerprint[2:]) / 1000
        assert e.result == {"by": winner[e.fingerprint]}
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == 1
        assert conn.execute(text("SELECT version FROM schema_version")).scalar() == SCHEMA_VERSION
    store.close()


@pytest.mark.slow
def test_a_campaign_flow_on_postgresql_runs_and_resumes(prefect_server, pg_url, tmp_path):
    from matforge.engine.config import parse_config
    from matforge.flows.campaign import campaign_flow

    config = parse_config(
        {
            "name": "pg-flow",
            "elements": ["Cu", "Au", "Pt"],
            "generator": {"pool_size": 30, "max_atoms": 8},
            "batch_size": 4,
            "budget": 8,
            "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 100}},
            "anomaly": {"min_results": 4},
            "store": pg_url,
            "workdir": str(tmp_path / "runs"),
            "seed": 1,
        }
    )
    summary = campaign_flow(config)
    assert summary["evaluations"] == 8 and summary["rounds"] == 2
    store = CampaignStore(pg_url)
    cid = store.campaign_id("pg-flow")
    first = store.evaluations(cid)
    assert all(e.status in ("accepted", "needs_review") for e in first)
    assert all(len(e.result["forces"]) == len(e.input_structure()) for e in first)
    # an interrupted round: one result lost with its process, the round not finished
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE evaluations SET status = 'running', objective = NULL, "
                          "result = NULL WHERE id = :id"), {"id": first[-1].id})
        conn.execute(text("UPDATE rounds SET finished_at = NULL WHERE round = 1"))
    campaign_flow(config)
    again = store.evaluations(cid)
    assert [(e.id, e.fingerprint) for e in again] == [(e.id, e.fingerprint) for e in first]
    assert again[-1].status in ("accepted", "needs_review")
    assert again[-1].objective == pytest.approx(first[-1].objective, abs=1e-9)
    assert store.rounds(cid)[-1].finished and len(store.rounds(cid)) == 2
    store.close()
