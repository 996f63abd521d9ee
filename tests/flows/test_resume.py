"""A campaign killed with SIGKILL at random moments and resumed ends where an uninterrupted one
does, and pays for no evaluation twice.

What is counted: the ``emt-ledger`` adapter appends (and fsyncs) one line per
*completed* adapter call, after the relaxation and just before it returns. The
evaluation's process then writes the result to the evaluation's directory, and
the campaign commits it to the store; a kill between the two leaves the file,
which the resumed run collects instead of paying again. So at the end every
candidate has exactly one ledger line, wherever the kills landed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from matforge.engine.store.sql import FINISHED, CampaignStore

pytestmark = pytest.mark.slow

N_KILLS = 20
BUDGET = 16
LEASE = 3.0


def _campaign(root: Path) -> Path:
    root.mkdir()
    path = root / "campaign.yaml"
    config = {
        "name": "resume",
        "elements": ["Cu", "Au", "Pt"],
        "generator": {"pool_size": 40, "max_atoms": 8},
        "batch_size": 4,
        "budget": BUDGET,
        "evaluator": {
            "adapter": "emt-ledger",
            "parameters": {"ledger": str(root / "ledger.txt"), "fmax": 0.1, "max_steps": 100},
        },
        # a low quantile flags several results, so flags must survive the kills too
        "anomaly": {"min_results": 4, "eps_quantile": 0.5},
        "store": "sqlite:///store.db",
        "seed": 2,  # a trajectory whose rounds 1-3 flag results (seed 3 flags none)
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _start(path: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "matforge.flows.cli", "run", str(path)],
        cwd=path.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(path.parent / "stderr.log", "ab"),
        start_new_session=True,
    )


def _ledger(root: Path) -> Counter:
    path = root / "ledger.txt"
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line.strip())


def _finished(root: Path) -> dict[str, tuple[int, float | None]]:
    """Committed evaluations by fingerprint: (round, objective)."""
    if not (root / "store.db").exists():
        return {}
    store = CampaignStore(f"sqlite:///{root / 'store.db'}")
    try:
        cid = store.campaign_id("resume")
        return {
            e.fingerprint: (e.round, e.objective)
            for e in store.evaluations(cid, statuses=FINISHED)
        }
    except KeyError:
        return {}
    finally:
        store.close()


def _final_state(root: Path) -> dict[int, set]:
    store = CampaignStore(f"sqlite:///{root / 'store.db'}")
    try:
        cid = store.campaign_id("resume")
        rounds: dict[int, set] = {}
        for e in store.evaluations(cid):
            objective = None if e.objective is None else round(e.objective, 6)
            rounds.setdefault(e.round, set()).add((e.fingerprint, e.status, objective))
        return rounds
    finally:
        store.close()


def _env(prefect_server: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # a killed run's lease must expire before the next run may take its campaign
        "MATFORGE_LEASE": str(LEASE),
    }


def test_sigkill_at_20_random_moments_loses_nothing_and_pays_nothing_twice(
    prefect_server, testing_adapters, tmp_path
):
    env = _env(prefect_server, tmp_path)

    # the uninterrupted run, timed: until its store appears (start-up) and until done
    reference = _campaign(tmp_path / "reference")
    t0 = time.monotonic()
    proc = _start(reference, env)
    startup = None
    while proc.poll() is None:
        if startup is None and (reference.parent / "store.db").exists():
            startup = time.monotonic() - t0
        time.sleep(0.05)
    total = time.monotonic() - t0
    assert proc.returncode == 0, (reference.parent / "stderr.log").read_text()[-3000:]
    assert startup is not None
    expected = _final_state(reference.parent)
    assert sum(len(v) for v in expected.values()) == BUDGET
    assert any(status == "needs_review" for v in expected.values() for _, status, _ in v)
    assert sum(_ledger(reference.parent).values()) == BUDGET

    # the same campaign killed at N_KILLS random moments, each resumed
    root = tmp_path / "killed"
    path = _campaign(root)
    rng = np.random.default_rng(20261124)
    seen: dict[str, tuple[int, float | None]] = {}
    paid_uncommitted = 0  # summed over kills: results paid for but not yet in the store
    mid_campaign = 0
    progress = []
    for k in range(N_KILLS):
        # a quarter of the kills land in start-up; the others wait for the next
        # completed adapter call and land a random moment after it (the commit
        # window, recording, flagging, the next round's proposal), so the kills
        # walk through the whole campaign however loaded the machine is
        proc = _start(path, env)
        if rng.random() < 0.25:
            deadline = time.monotonic() + rng.uniform(0.3, 1.0) * startup
        else:
            paid = sum(_ledger(root).values())
            while proc.poll() is None and sum(_ledger(root).values()) <= paid:
                time.sleep(0.02)
            deadline = time.monotonic() + rng.uniform(0.0, 0.4)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

        finished = _finished(root)
        ledger = _ledger(root)
        # no finished evaluation is ever lost or changed
        for fp, (rnd, objective) in seen.items():
            assert fp in finished, f"kill {k}: finished evaluation {fp} was lost"
            assert finished[fp] == (rnd, objective), f"kill {k}: evaluation {fp} changed"
        seen.update(finished)
        paid_uncommitted += sum(fp not in finished for fp in ledger)
        mid_campaign += 0 < len(finished) < BUDGET
        progress.append(len(finished))

    proc = _start(path, env)
    assert proc.wait(timeout=300) == 0, (root / "stderr.log").read_text()[-3000:]

    final = _final_state(root)
    ledger = _ledger(root)
    finished = _finished(root)
    assert len(finished) == BUDGET
    lost = [fp for fp in seen if finished.get(fp) != seen[fp]]
    assert lost == []
    # every candidate paid exactly once, kills between an adapter's return and the commit included
    paid_twice = {fp: n for fp, n in ledger.items() if n > 1}
    assert set(ledger) == set(finished)
    assert paid_twice == {}
    assert final == expected
    assert mid_campaign >= 3, "too few kills landed while the campaign was under way"
    print(
        f"startup {startup:.1f}s, uninterrupted {total:.1f}s, {mid_campaign}/{N_KILLS} kills "
        f"mid-campaign, finished evaluations at each kill {progress}, "
        f"results paid but not committed at a kill, collected on resume: {paid_uncommitted}"
    )


KILLED_BEFORE_COMMIT = """
import os, signal, sys
from matforge.engine.loop import round
def die(*args, **kwargs):  # the adapter has returned, its result is not committed yet
    os.killpg(0, signal.SIGKILL)
round.record_result = die
if __name__ == "__main__":  # evaluation processes import the main module
    from matforge.flows.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_between_the_adapters_return_and_the_commit_pays_nothing_again(
    prefect_server, testing_adapters, tmp_path
):
    path = _campaign(tmp_path / "c")
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, "budget": 6, "batch_size": 3}))
    script = tmp_path / "killed_before_commit.py"
    script.write_text(KILLED_BEFORE_COMMIT)
    env = _env(prefect_server, tmp_path)
    proc = subprocess.Popen([sys.executable, str(script), "run", str(path)], cwd=path.parent,
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=open(path.parent / "stderr.log", "ab"),
                            start_new_session=True)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    paid = _ledger(path.parent)
    assert sum(paid.values()) >= 1 and _finished(path.parent) == {}

    assert _start(path, env).wait(timeout=300) == 0, (path.parent / "stderr.log").read_text()
    ledger = _ledger(path.parent)
    assert len(_finished(path.parent)) == 6
    assert set(ledger) == set(_finished(path.parent))
    assert {fp: n for fp, n in ledger.items() if n > 1} == {}  # no call paid again


def test_a_round_stopped_after_its_last_result_is_finished_on_resume(
    prefect_server, testing_adapters, tmp_path
):
    """Killed after the budget's last commit but before flagging: the resumed run flags it."""
    from sqlalchemy import text

    from matforge.engine.config import load_config
    from matforge.flows.campaign import campaign_flow

    config = load_config(_campaign(tmp_path / "c"))
    campaign_flow(config)
    expected = _final_state(tmp_path / "c")
    flagged = {fp for v in expected.values() for fp, status, _ in v if status == "needs_review"}
    assert flagged
    store = CampaignStore(config.store)
    last = max(expected)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE evaluations SET status = 'accepted', review_note = NULL "
                          "WHERE round = :r AND status = 'needs_review'"), {"r": last})
        conn.execute(text("UPDATE rounds SET finished_at = NULL WHERE round = :r"), {"r": last})
    store.close()
    campaign_flow(config)
    assert _final_state(tmp_path / "c") == expected
