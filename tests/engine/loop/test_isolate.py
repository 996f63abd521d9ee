"""Evaluations run in a child process: a timeout stops blocking work, results reach the disk
before the store, and a result found on disk is collected instead of paid for again."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from matforge.adapters.base import EvaluationResult, Evaluator
from matforge.engine.loop.isolate import ChildDied, run_isolated
from matforge.engine.loop.results import RESULT_FILE, read_result, write_result
from matforge.engine.loop.round import SerialDispatcher, Work, evaluate_claimed
from matforge.engine.materials.structures import fingerprint
from matforge.engine.store.sql import CampaignStore

CU = Structure(Lattice.cubic(3.6), ["Cu"] * 4,
               [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


class Blocking(Evaluator):
    """Blocks like a hung code: in ``time.sleep`` or waiting on a ``sleep`` process."""

    implemented_properties = ("energy", "energy_per_atom")

    def __init__(self, how: str, seconds: float, marker: str):
        self.how, self.seconds, self.marker = how, seconds, marker

    def evaluate(self, structure, workdir):
        if self.how == "python":
            time.sleep(self.seconds)
        else:
            subprocess.run(["sleep", str(self.seconds)], check=True)
        Path(self.marker).write_text("ran to the end")
        return EvaluationResult(energy=-4.0, energy_per_atom=-1.0)


class Counting(Evaluator):
    """Appends a line to ``ledger`` per call (a paid call)."""

    implemented_properties = ("energy", "energy_per_atom")

    def __init__(self, ledger: str):
        self.ledger = ledger

    def evaluate(self, structure, workdir):
        with open(self.ledger, "a") as handle:
            handle.write("paid\n")
        return EvaluationResult(energy=-4.0, energy_per_atom=-1.0)


class TerminatedAfterPaying(Evaluator):
    """Pays (``hold_termination``), then gets SIGTERM while other threads of its process run,
    as a numerical library's thread pool does."""

    implemented_properties = ("energy", "energy_per_atom")

    def evaluate(self, structure, workdir):
        import os
        import signal
        import threading

        from matforge.engine.loop.results import hold_termination

        worker = threading.Thread(target=time.sleep, args=(3,), daemon=True)
        worker.start()  # started before the hold, so SIGTERM is not blocked in it
        hold_termination()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the signal has been delivered (to the worker thread) by now
        return EvaluationResult(energy=-4.0, energy_per_atom=-1.0)


def _sleeps(seconds: float) -> int:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return sum(line.strip() == f"sleep {seconds}" for line in out.splitlines())


@pytest.fixture
def claimed(tmp_path):
    store = CampaignStore(f"sqlite:///{tmp_path / 'store.db'}")
    cid = store.campaign_id("c", {})
    claim = store.claim(cid, 0, CU, fingerprint(CU), "test", "x", {})
    (e,) = store.evaluations(cid)
    yield store, cid, claim.id, e.key
    store.close()


@pytest.mark.parametrize("how", ["python", "process"])
def test_a_timeout_kills_a_blocked_evaluation_at_its_deadline(claimed, tmp_path, how):
    store, cid, eid, key = claimed
    marker = tmp_path / "marker"
    evaluator = Blocking(how, 20.0, str(marker))
    work = Work(eid, CU, fingerprint(CU), str(tmp_path / "run"), key, None, timeout=2.0)
    run_isolated(int, (), None)  # the fork server's start-up (imports) is not the deadline's
    start = time.monotonic()
    SerialDispatcher(store, evaluator, "energy_per_atom")([work])
    took = time.monotonic() - start
    (e,) = store.evaluations(cid)
    assert e.status == "failed"
    assert "EvaluationTimeout" in e.error and "timed out after 2 s" in e.error
    assert took < 10, f"the timed-out evaluation held its slot for {took:.1f} s"
    time.sleep(0.5)
    assert _sleeps(20.0) == 0, "the code the evaluation started is still running"
    assert not marker.exists()


def test_a_timeout_is_a_timeout_error_so_retry_on_timeouterror_applies():
    with pytest.raises(TimeoutError, match="timed out after 1 s"):
        run_isolated(time.sleep, (30,), 1.0, "sleeper")


def test_an_adapter_exception_is_raised_with_its_own_class(claimed, tmp_path):
    with pytest.raises(ConnectionError, match="reset"):
        run_isolated(_raise, (ConnectionError("reset"),), 10.0)


def _raise(error):
    raise error


def test_a_child_that_dies_without_an_outcome_is_reported():
    import os

    with pytest.raises(ChildDied, match="exit code 3"):
        run_isolated(os._exit, (3,), 10.0, "dies")


def test_a_result_on_disk_is_collected_not_paid_for_again(claimed, tmp_path):
    store, cid, eid, key = claimed
    ledger = tmp_path / "ledger"
    workdir = tmp_path / "run"
    work = Work(eid, CU, fingerprint(CU), str(workdir), key)
    # the run that paid for it died after the result reached the disk, before the commit
    write_result(workdir, key, EvaluationResult(energy=-8.0, energy_per_atom=-2.0).model_dump())
    status = evaluate_claimed(store, work, "energy_per_atom", lambda: Counting(str(ledger)))
    assert status == "accepted"
    assert not ledger.exists()
    (e,) = store.evaluations(cid)
    assert e.objective == -2.0


def test_a_result_file_of_another_evaluation_is_not_taken(claimed, tmp_path):
    store, cid, eid, key = claimed
    ledger = tmp_path / "ledger"
    workdir = tmp_path / "run"
    write_result(workdir, "another-key", {"energy": -8.0, "energy_per_atom": -2.0})
    dispatch = SerialDispatcher(store, Counting(str(ledger)), "energy_per_atom")
    dispatch([Work(eid, CU, fingerprint(CU), str(workdir), key)])
    assert ledger.read_text() == "paid\n"
    assert read_result(workdir, key)["energy_per_atom"] == -1.0
    assert (workdir / RESULT_FILE).exists()


def test_sigterm_to_any_thread_after_the_adapter_paid_waits_for_the_result_file(tmp_path):
    """A process-directed SIGTERM may land on any thread; a hold must hold against all of
    them (a BLAS pool's thread took it while the main thread held it, and a paid result was
    lost: CI caught a call paid twice)."""
    from matforge.engine.loop.results import evaluate_isolated

    with pytest.raises(ChildDied):  # the held SIGTERM ends the process once the file is written
        evaluate_isolated(TerminatedAfterPaying, CU, tmp_path, "key-1", timeout=30, label="held")
    assert read_result(tmp_path, "key-1") == EvaluationResult(energy=-4.0,
                                                              energy_per_atom=-1.0).model_dump()


def test_an_evaluation_does_not_run_the_parents_main_script_again(tmp_path):
    """A driver script without an ``if __name__ == "__main__"`` guard ran once more in every
    evaluation's process (multiprocessing re-imports __main__): its side effects repeated
    and its imports were paid per evaluation."""
    import subprocess
    import sys

    runs = tmp_path / "runs.txt"
    script = tmp_path / "driver.py"
    script.write_text(
        "import os\n"
        f"open({str(runs)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "from matforge.engine.loop.isolate import run_isolated\n"
        "print(run_isolated(os.getpid, (), 60))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(runs.read_text().split()) == 1  # the driver ran once: not again in the child


def test_two_processes_evaluating_one_claim_pay_once(testing_adapters, tmp_path):
    """A Dask worker or Slurm job left running by a controller that died, and the resumed
    run's evaluation of the same claim: the second waits for the first and collects its
    result."""
    import threading
    from functools import partial

    from pymatgen.core import Lattice, Structure

    from matforge.adapters import load_evaluator
    from matforge.engine.loop.results import evaluate_isolated

    ledger = tmp_path / "ledger.txt"
    make = partial(load_evaluator, "emt-ledger", {"ledger": str(ledger), "delay": 2.0})
    cu = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
    results = []

    def evaluate():
        results.append(evaluate_isolated(make, cu, tmp_path / "run", "key-1", 120, "x"))

    threads = [threading.Thread(target=evaluate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2 and results[0] == results[1]
    assert len(ledger.read_text().splitlines()) == 1
