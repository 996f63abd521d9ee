"""One evaluation as a Slurm job, killed at the two moments between ``sbatch`` and a running
job: after ``sbatch`` but before the store has the job's id, and after the store has it but
before the hold is released. Either way the evaluation runs in the one job submitted.
Against the real local Slurm (deploy/local-slurm.sh)."""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from matforge.adapters import load_evaluator
from matforge.adapters.base import Resources
from matforge.engine.config import SlurmSettings
from matforge.engine.loop import slurm
from matforge.engine.loop.round import Work
from matforge.engine.materials.structures import fingerprint
from matforge.engine.store.sql import CampaignStore

pytestmark = pytest.mark.slow


class Killed(BaseException):
    """The controller dying at this point."""


def _claim(tmp_path: Path):
    store = CampaignStore(f"sqlite:///{tmp_path / 'store.db'}")
    cid = store.campaign_id("jobs", {})
    cu = Structure(Lattice.cubic(3.6), ["Cu"] * 4,
                   [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    claim = store.claim(cid, 0, cu, fingerprint(cu), "test", "emt", {})
    (e,) = store.evaluations(cid)
    work = Work(claim.id, cu, e.fingerprint, str(tmp_path / "run"), e.key)
    return store, work


def _run(store, work, log):
    return slurm.run_job(store, work, "formation_energy_per_atom",
                         partial(load_evaluator, "emt", {}), SlurmSettings(poll_interval=0.3),
                         Resources(memory_gb=0.5, walltime=300.0), slurm.SlurmQueue(0.3), "jobs",
                         log.append)


@pytest.mark.parametrize("moment", ["before the store has the id", "before the release"])
def test_a_controller_killed_around_submission_leaves_one_job_that_is_collected(
    local_slurm, tmp_path, monkeypatch, moment
):
    store, work = _claim(tmp_path)
    target = (store, "set_job") if moment == "before the store has the id" else (slurm, "release")
    original = getattr(*target)

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(*target, killed)
    log: list[str] = []
    with pytest.raises(Killed):
        _run(store, work, log)
    (held,) = slurm.find_jobs(slurm.job_name(work.key))
    assert slurm.SlurmQueue().state(held, fresh=True).held  # it cannot run: nothing is paid
    monkeypatch.setattr(*target, original)

    assert _run(store, work, log) == "accepted"
    assert store.job(work.evaluation_id)["id"] == held  # adopted or re-attached, not resubmitted
    assert [p.name for p in Path(work.workdir).glob("slurm-*.out")] == [f"slurm-{held}.out"]
    (e,) = store.evaluations(store.campaign_id("jobs"))
    assert e.status == "accepted" and e.objective is not None
    assert any(f"Slurm job {held} COMPLETED" in line for line in log)
    store.close()


def test_a_failing_adapter_in_a_job_is_reported_as_its_own_error(local_slurm, tmp_path):
    store, work = _claim(tmp_path)
    log: list[str] = []
    with pytest.raises(slurm.JobFailed) as info:
        slurm.run_job(store, work, "formation_energy_per_atom",
                      partial(load_evaluator, "emt", {"max_steps": -1}),
                      SlurmSettings(poll_interval=0.3), Resources(memory_gb=0.5, walltime=300.0),
                      slurm.SlurmQueue(0.3), "jobs", log.append)
    assert "Slurm job" in str(info.value)
    assert {"Exception", "BaseException"} <= set(info.value.bases)
    assert store.job(work.evaluation_id) is None  # forgotten: a retry submits a new job
    assert store.status(work.evaluation_id) == "running"  # the dispatcher records the failure
    store.close()


def test_slurm_commands_that_fail_name_the_command_and_its_message(local_slurm, tmp_path):
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/bash\n#SBATCH --partition=no-such-partition\ntrue\n")
    with pytest.raises(slurm.SlurmError, match=r"sbatch --parsable failed .*partition"):
        slurm.submit_held(script, tmp_path)
    assert slurm.lookup("999999") is None
    assert isinstance(slurm.SlurmError("x"), ConnectionError)  # retried by default


def test_a_retry_after_scancel_submits_a_new_job_and_pays_once(
    local_slurm, testing_adapters, tmp_path
):
    import threading
    import time

    store, work = _claim(tmp_path)
    ledger = tmp_path / "ledger.txt"
    outcome: list[BaseException | str] = []

    def attempt(delay: float):
        try:
            outcome.append(slurm.run_job(
                store, work, "formation_energy_per_atom",
                partial(load_evaluator, "emt-ledger", {"ledger": str(ledger), "delay": delay}),
                SlurmSettings(poll_interval=0.3), Resources(memory_gb=0.5, walltime=300.0),
                slurm.SlurmQueue(0.3), "jobs", lambda line: None))
        except BaseException as error:  # noqa: BLE001 - the test reads it
            outcome.append(error)

    first = threading.Thread(target=attempt, args=(60.0,))
    first.start()
    deadline = time.monotonic() + 120
    while not (store.job(work.evaluation_id) and slurm.SlurmQueue().state(
            store.job(work.evaluation_id)["id"], fresh=True).state == "RUNNING"):
        assert time.monotonic() < deadline, "the job never ran"
        time.sleep(0.2)
    cancelled = store.job(work.evaluation_id)["id"]
    subprocess.run(["scancel", cancelled], check=True)
    first.join(60)
    assert isinstance(outcome[0], slurm.JobLost) and "was cancelled" in str(outcome[0])
    assert not ledger.exists()  # killed before it paid

    attempt(0.0)  # what the retry policy does with a JobLost it is told to retry
    assert outcome[1] == "accepted"
    assert store.job(work.evaluation_id)["id"] != cancelled
    assert len(ledger.read_text().splitlines()) == 1
    store.close()
