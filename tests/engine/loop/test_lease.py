"""Claims have owners: one live run per campaign, a dead run's work taken over only after its
lease expires, and one campaign name for one campaign."""

from __future__ import annotations

import os
import threading
import time

import pytest
from pymatgen.core import Lattice, Structure

from matforge.adapters import load_evaluator
from matforge.engine.config import ConfigError, parse_config
from matforge.engine.loop.lease import CampaignBusy, Lease
from matforge.engine.loop.round import SerialDispatcher, run_campaign, summarize
from matforge.engine.materials.structures import fingerprint
from matforge.engine.store.sql import CampaignStore

CU = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])

CAMPAIGN = {
    "name": "lease-test",
    "elements": ["Cu", "Au"],
    "generator": {"pool_size": 12, "max_atoms": 4},
    "batch_size": 2,
    "budget": 4,
    "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 40}},
    "anomaly": {"enabled": False},
}


@pytest.fixture
def store(tmp_path):
    store = CampaignStore(f"sqlite:///{tmp_path / 'store.db'}")
    yield store
    store.close()


def test_a_live_runs_claims_are_never_taken_and_a_dead_runs_only_after_its_lease(store):
    cid = store.campaign_id("c", {})
    first = Lease(store, cid, seconds=1.5)
    first.acquire()
    claim = store.claim(cid, 0, CU, fingerprint(CU), "test", "emt", {}, owner=first.id)
    second = Lease(store, cid, seconds=1.5)
    with pytest.raises(CampaignBusy, match=f"owner {first.id[:8]}"):
        second.acquire(wait=False)
    time.sleep(2.0)  # the first run heartbeats: still live after its lease's length
    with pytest.raises(CampaignBusy):
        second.acquire(wait=False)

    first._stop.set()  # the first run dies: no more heartbeats
    first._thread.join()
    start = time.monotonic()
    second.acquire(wait=True)
    waited = time.monotonic() - start
    assert 0.5 < waited < 4, waited  # not before the lease ran out, soon after
    (e,) = store.evaluations(cid)
    assert e.owner == second.id  # the running claim passed to the new run
    # the dead run cannot commit what the new run now owns, nor renew its lease
    assert not store.complete(claim.id, "accepted", objective=1.0, owner=first.id)
    assert not store.renew(first.id, 10)
    assert store.complete(claim.id, "accepted", objective=1.0, owner=second.id)
    owners = {o.id: o for o in store.owners(cid)}
    assert owners[first.id].ended.startswith("lease expired; taken over")
    assert owners[second.id].alive()
    second.release()
    assert not store.owners(cid)[-1].alive()


def test_status_shows_running_work_with_its_owner_and_whether_it_is_alive(store):
    cid = store.campaign_id("c", {})
    lease = Lease(store, cid, seconds=30)
    lease.acquire()
    store.claim(cid, 0, CU, fingerprint(CU), "test", "emt", {}, owner=lease.id)
    (running,) = summarize(store, cid, maximize=False)["running"]
    assert running["alive"] and f"owner {lease.id[:8]} (pid" in running["owner"]
    lease.release()
    (running,) = summarize(store, cid, maximize=False)["running"]
    assert not running["alive"]


def test_a_second_run_waits_for_the_first_and_then_finds_the_campaign_done(store, tmp_path):
    config = parse_config({**CAMPAIGN, "store": store.url, "workdir": str(tmp_path / "runs")})
    evaluator = load_evaluator("emt", config.evaluator.parameters)
    cid = store.campaign_id(config.name, config.model_dump(mode="json"))
    holder = Lease(store, cid, seconds=30)
    holder.acquire()
    waited = []
    summaries = []

    def second_run():
        summaries.append(run_campaign(config, store, evaluator, on_wait=waited.append))

    thread = threading.Thread(target=second_run)
    thread.start()
    time.sleep(1.5)
    assert [o.id for o in waited] == [holder.id] and thread.is_alive()
    assert store.count(cid) == 0  # it waited without claiming anything
    holder.release()
    thread.join(timeout=300)
    assert summaries[0]["evaluations"] == 4
    runs = store.owners(cid)
    assert [o.ended for o in runs] == ["finished", "finished"]
    assert runs[1].config["budget"] == 4  # each run's settings are recorded with it


def test_a_changed_objective_elements_or_evaluator_under_one_name_is_refused(store, tmp_path):
    base = {**CAMPAIGN, "store": store.url, "workdir": str(tmp_path / "runs")}
    config = parse_config(base)
    evaluator = load_evaluator("emt", config.evaluator.parameters)
    dispatch = SerialDispatcher(store, evaluator, config.objective.property)
    run_campaign(config, store, evaluator, dispatch)

    objective = parse_config({**base, "objective": {"property": "energy_per_atom"}})
    with pytest.raises(ConfigError, match=r"field 'objective'.*new name"):
        run_campaign(objective, store, evaluator, dispatch)
    with pytest.raises(ConfigError, match="field 'objective'"):  # never, even when asked
        run_campaign(objective, store, evaluator, dispatch, new_config=True)
    elements = parse_config({**base, "elements": ["Cu", "Pt"]})
    with pytest.raises(ConfigError, match=r"field 'elements'.*\['Cu', 'Au'\].*--new-config"):
        run_campaign(elements, store, evaluator, dispatch)
    params = parse_config({**base, "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.2}}})
    with pytest.raises(ConfigError, match="field 'evaluator.parameters'"):
        run_campaign(params, store, evaluator, dispatch)
    cid = store.campaign_id(config.name)
    assert store.count(cid) == 4 and len(store.owners(cid)) == 1  # nothing was written

    # budget, batch size and acquisition may change; an explicit --new-config continues
    more = parse_config({**base, "budget": 6, "batch_size": 1, "acquisition": {"kind": "ucb"}})
    assert run_campaign(more, store, evaluator, dispatch)["evaluations"] == 6
    wider = parse_config({**base, "budget": 7, "elements": ["Cu", "Au", "Pt"]})
    assert run_campaign(wider, store, evaluator, dispatch, new_config=True)["evaluations"] == 7
    assert [o.config["budget"] for o in store.owners(cid)] == [4, 6, 7]


def test_a_killed_run_on_this_host_is_not_alive_before_its_lease_runs_out():
    import socket
    import subprocess
    from datetime import timedelta

    from matforge.engine.store.sql import Owner, utcnow

    gone = subprocess.Popen(["true"])
    gone.wait()
    now = utcnow()
    owner = Owner(id="a" * 32, host=socket.gethostname(), pid=gone.pid, started_at=now,
                  heartbeat_at=now, expires_at=now + timedelta(seconds=60), ended_at=None,
                  ended=None, config={})
    assert not owner.alive()  # its process is gone: no need to wait for the lease
    elsewhere = Owner(**{**owner.__dict__, "host": "another-node"})
    assert elsewhere.alive()  # another host's process cannot be seen: the lease decides
    assert Owner(**{**owner.__dict__, "pid": os.getpid()}).alive()
