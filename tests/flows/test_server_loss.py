"""Losing the Prefect server mid-campaign: the run stops soon with one message and exit 1,
keeps what it finished, and a rerun against a live server continues to the budget.

Without the watchdog (``matforge.flows.watchdog``) Prefect's client retries the dead API
for minutes, so the run neither stops nor says why.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from matforge.engine.store.sql import FINISHED, CampaignStore
from matforge.flows.server import start_server
from matforge.flows.watchdog import ServerWatchdog

NAME = "server-loss"
BUDGET = 12
STOP_WITHIN_S = 30.0
MESSAGE = "matforge: error: lost the Prefect server at "


def _campaign(root: Path) -> Path:
    path = root / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": NAME,
        "elements": ["Cu", "Au", "Pt"],
        "generator": {"pool_size": 20, "max_atoms": 6},
        "batch_size": 3,
        "budget": BUDGET,
        "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 60}},
        "store": f"sqlite:///{root / 'store.db'}",
        "workdir": str(root / "runs"),
        "seed": 1,
    }))
    return path


def _server(root: Path, name: str, port: int) -> tuple[str, subprocess.Popen]:
    home = root / name
    home.mkdir()
    return start_server(port=port, log_path=home / "server.log",
                        env={"PREFECT_HOME": str(home)})


def _run(path: Path, api_url: str, home: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MATFORGE_") and k != "PREFECT_API_URL"}
    env.update({
        "MATFORGE_PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MATFORGE_THREADS": "1",
    })
    return subprocess.Popen(
        [sys.executable, "-m", "matforge.flows.cli", "run", str(path)],
        cwd=path.parent, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def _finished(store_url: str) -> dict[int, tuple[str, str, float | None]]:
    """Finished evaluations by id: (fingerprint, status, objective); empty before the start."""
    store = CampaignStore(store_url)
    try:
        cid = store.campaign_id(NAME)
    except KeyError:
        return {}
    try:
        return {e.id: (e.fingerprint, e.status, e.objective)
                for e in store.evaluations(cid, statuses=FINISHED)}
    finally:
        store.close()


class _Lines:
    """Reads a pipe in a thread, keeping each line with the time it arrived."""

    def __init__(self, pipe) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def since(self, moment: float) -> list[str]:
        self._thread.join(timeout=10)
        return [line for t, line in self.lines if t >= moment and line.strip()]

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@pytest.mark.slow
def test_losing_the_prefect_server_stops_the_run_with_one_message_and_a_rerun_continues(
    tmp_path, free_port, stop_process_group
):
    path = _campaign(tmp_path)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    api_url, server = _server(tmp_path, "server-1", free_port())
    run = None
    try:
        run = _run(path, api_url, tmp_path / "server-1")
        out, err = _Lines(run.stdout), _Lines(run.stderr)
        deadline = time.monotonic() + 300
        while not _finished(store_url) and run.poll() is None:
            assert time.monotonic() < deadline, "no evaluation finished within 300 s"
            time.sleep(0.1)
        assert run.poll() is None, f"the run ended before the server was lost: {err.text()}"
        stop_process_group(server)
        killed = time.monotonic()
        stored = _finished(store_url)
        assert 0 < len(stored) < BUDGET
        try:
            run.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            stop_process_group(run)
            pytest.fail(f"the run did not stop within {STOP_WITHIN_S:.0f} s of losing the "
                        f"server; stderr since: {err.since(killed)[-20:]}")
        stopped = time.monotonic() - killed
    finally:
        stop_process_group(server)
        if run is not None:
            stop_process_group(run)

    assert run.returncode == 1, err.text()[-3000:]
    # after the loss: the one message on stderr, nothing else there, no traceback anywhere
    lines = err.since(killed)
    assert len(lines) == 1 and lines[0].startswith(MESSAGE + api_url), lines[-20:]
    assert not any("Traceback" in line for line in out.since(killed))
    after = _finished(store_url)
    assert {i: after[i] for i in stored} == stored

    # a rerun against a fresh server continues to exactly the budget, nothing evaluated twice
    api_url, server = _server(tmp_path, "server-2", free_port())
    try:
        run = _run(path, api_url, tmp_path / "server-2")
        try:
            _, stderr = run.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            stop_process_group(run)
            pytest.fail("the rerun did not finish within 600 s")
    finally:
        stop_process_group(server)
        stop_process_group(run)
    assert run.returncode == 0, stderr[-3000:]
    store = CampaignStore(store_url)
    try:
        evaluations = store.evaluations(store.campaign_id(NAME))
    finally:
        store.close()
    assert len(evaluations) == BUDGET
    assert all(e.status in FINISHED for e in evaluations)
    assert len({e.fingerprint for e in evaluations}) == BUDGET
    final = {e.id: (e.fingerprint, e.status, e.objective) for e in evaluations}
    assert {i: final[i] for i in stored} == stored
    print(f"stopped {stopped:.1f} s after the server was lost, with {len(stored)} of "
          f"{BUDGET} evaluations stored")


class _Calls:
    """Stands in for the health check, ``in_flight``, ``release_all`` and ``os._exit``."""

    def __init__(self, answers, in_flight=(0,)):
        self.answers = list(answers)
        self.in_flight = list(in_flight)
        self.events: list[str] = []
        self.done = threading.Event()

    def healthy(self, url, timeout):
        self.events.append("poll")
        return self.answers.pop(0) if self.answers else self.answers_after

    answers_after = False

    def count(self):
        self.events.append("in_flight")
        return self.in_flight.pop(0) if len(self.in_flight) > 1 else self.in_flight[0]

    def release(self):
        self.events.append("release")

    def exit(self, code):
        self.events.append(f"exit {code}")
        self.done.set()


def _watchdog(calls: _Calls, **options) -> ServerWatchdog:
    return ServerWatchdog("http://127.0.0.1:9/api", interval=0.01, timeout=0.01,
                          healthy=calls.healthy, in_flight=calls.count, release=calls.release,
                          exit=calls.exit, **options)


def test_watchdog_stops_the_process_after_the_server_stops_answering(capsys):
    calls = _Calls([True, True, False, True, False, False, False], in_flight=[2, 1, 0])
    with _watchdog(calls, misses=3):
        assert calls.done.wait(5)
    # one miss in a row is forgiven; three end the run once nothing is in flight
    assert calls.events[:7] == ["poll"] * 7
    assert calls.events[7:] == ["in_flight"] * 3 + ["release", "exit 1"]
    err = capsys.readouterr().err
    assert err == ("matforge: error: lost the Prefect server at http://127.0.0.1:9/api; "
                   "evaluations finished so far are stored; run the same command again to "
                   "continue\n")


def test_watchdog_exits_even_when_evaluations_stay_in_flight(capsys):
    calls = _Calls([True], in_flight=[1])
    started = time.monotonic()
    with _watchdog(calls, misses=2, drain_timeout=0.3):
        assert calls.done.wait(5)
    assert 0.3 <= time.monotonic() - started < 3
    assert calls.events[-2:] == ["release", "exit 1"]
    assert capsys.readouterr().err.startswith("matforge: error: lost the Prefect server")


def test_watchdog_stays_quiet_while_the_server_answers_and_after_the_run(capsys):
    calls = _Calls([True] * 20)
    calls.answers_after = True
    raise_exceptions = logging.raiseExceptions
    with _watchdog(calls, misses=1):
        time.sleep(0.3)
    polls = len(calls.events)
    calls.answers_after = False  # the server goes away after the run: nobody is watching
    time.sleep(0.1)
    assert polls > 3 and calls.events == ["poll"] * polls
    assert not calls.done.is_set() and capsys.readouterr().err == ""
    assert logging.raiseExceptions == raise_exceptions


def test_watchdog_gives_a_starting_server_its_grace_period(capsys):
    calls = _Calls([False] * 10 + [True])
    with _watchdog(calls, misses=3, startup_grace=60):
        assert calls.done.wait(5)
    # ten misses before the first answer (still starting), then three after it end the run
    assert calls.events[:14] == ["poll"] * 14 and calls.events[14:] == [
        "in_flight", "release", "exit 1"]
    assert "lost the Prefect server" in capsys.readouterr().err

    calls = _Calls([])
    with _watchdog(calls, misses=3, startup_grace=0.2):
        assert calls.done.wait(5)  # it never answered: given up after the grace period
    assert "the Prefect server does not answer at" in capsys.readouterr().err
