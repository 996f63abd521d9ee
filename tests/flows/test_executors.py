"""Evaluations dispatched to a real local Slurm, to Dask workers, and held by slots.

Everything here runs for real: Slurm is deploy/local-slurm.sh's single-node cluster
(slurmctld, slurmd, munge), Dask a ``LocalCluster`` or a ``dask_jobqueue.SLURMCluster``
on that Slurm, and the slots are global concurrency limits of the tests' Prefect server.
The ``emt-ledger`` adapter counts paid calls and says where each ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from matforge.engine.config import parse_config
from matforge.engine.store.sql import CampaignStore

pytestmark = pytest.mark.slow


def _config(root: Path, name: str, executor: dict, budget: int = 4, batch_size: int = 2,
            evaluator: dict | None = None) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    return {
        "name": name,
        "elements": ["Cu", "Au"],
        "generator": {"pool_size": 30, "max_atoms": 4},
        "batch_size": batch_size,
        "budget": budget,
        "evaluator": evaluator or {
            "adapter": "emt-ledger",
            "parameters": {"ledger": str(root / "ledger.txt"), "fmax": 0.1, "max_steps": 60},
        },
        "executor": executor,
        "store": f"sqlite:///{root / 'store.db'}",
        "workdir": str(root / "runs"),
        "anomaly": {"enabled": False},
        "seed": 1,
    }


def _ledger(root: Path) -> list[list[str]]:
    path = root / "ledger.txt"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _evaluations(root: Path, name: str):
    store = CampaignStore(f"sqlite:///{root / 'store.db'}")
    try:
        return store.evaluations(store.campaign_id(name))
    finally:
        store.close()


def _run(config: dict):
    from matforge.flows.campaign import campaign_flow

    return campaign_flow(parse_config(config))


def test_a_campaign_whose_evaluations_are_slurm_jobs_completes_its_budget(
    prefect_server, testing_adapters, local_slurm, tmp_path
):
    config = _config(tmp_path, "slurm-emt", {"kind": "slurm", "slurm": {"poll_interval": 0.5}})
    summary = _run(config)
    assert summary["by_status"] == {"accepted": 4}
    lines = _ledger(tmp_path)
    assert len(lines) == 4 and len({line[0] for line in lines}) == 4  # none paid twice
    evaluations = _evaluations(tmp_path, "slurm-emt")
    jobs = {e.job["id"] for e in evaluations}
    assert len(jobs) == 4 and {line[4] for line in lines} == jobs  # each ran in its own job
    for e in evaluations:
        assert e.job["kind"] == "slurm" and Path(e.job["log"]).is_file()
        script = Path(e.job["log"]).parent / "matforge-job.sh"
        assert "#SBATCH --cpus-per-task=1" in script.read_text()


def _squeue(name_prefix: str = "mf-") -> list[tuple[str, str, str]]:
    """(job id, name, state) of the queued and running jobs."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True,
                         check=True).stdout
    rows = [tuple(line.split("|")) for line in out.splitlines() if line.strip()]
    return [r for r in rows if r[1].startswith(name_prefix)]


@pytest.fixture(autouse=True)
def _no_jobs_left_behind(request):
    """Each Slurm test starts and ends with an empty queue, so a test that failed with jobs
    queued does not hand them to the next one (which picks jobs from squeue)."""
    if "local_slurm" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("local_slurm")

    def cancel_all():
        jobs = [job for job, _, _ in _squeue()]
        if jobs:
            subprocess.run(["scancel", *jobs], check=False)
            deadline = time.monotonic() + 60
            while _squeue() and time.monotonic() < deadline:
                time.sleep(0.5)

    cancel_all()
    yield
    cancel_all()


def _matforge_run(path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "matforge.flows.cli", "run", str(path)],
                            cwd=path.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(path.parent / "stderr.log", "ab"),
                            start_new_session=True)


def _wait(condition, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"the campaign ended ({process.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"not within {timeout} s: {what}")


def test_a_campaign_killed_while_its_jobs_run_re_attaches_and_collects_each_once(
    prefect_server, testing_adapters, local_slurm, tmp_path
):
    """SIGKILL to the campaign's process while Slurm jobs are queued and running; the
    restarted campaign polls the same jobs and commits each result once."""
    config = _config(tmp_path, "slurm-kill", {"kind": "slurm", "slurm": {"poll_interval": 0.5}},
                     budget=6, batch_size=6)
    config["evaluator"]["parameters"]["delay"] = 6.0
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "MATFORGE_LEASE": "3",
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    first = _matforge_run(path, env)
    # the node has 2 CPUs: 2 jobs run, 4 wait
    states = _wait(lambda: (lambda s: s if {"RUNNING", "PENDING"} <= s else None)(
        {state for _, _, state in _squeue()}), 240, "jobs running and pending", first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert {"RUNNING", "PENDING"} <= states
    submitted = {job for job, _, _ in _squeue()}
    assert len(_ledger(tmp_path)) < 6  # killed before every job was done
    status = subprocess.run([sys.executable, "-m", "matforge.flows.cli", "status", str(path)],
                            env={**env, "COLUMNS": "400"}, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    shown = [line for line in status.stdout.splitlines() if "Slurm job" in line]
    assert shown and all("not alive" in line and "log " in line for line in shown)
    assert any(f"Slurm job {job} RUNNING" in line or f"Slurm job {job} PENDING" in line
               for line in shown for job in submitted)

    second = _matforge_run(path, env)
    assert second.wait(timeout=400) == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    evaluations = _evaluations(tmp_path, "slurm-kill")
    assert [e.status for e in evaluations] == ["accepted"] * 6
    lines = _ledger(tmp_path)
    paid = Counter(line[0] for line in lines)
    assert sorted(paid) == sorted(e.fingerprint for e in evaluations)
    assert set(paid.values()) == {1}  # none paid twice, none lost
    jobs = [e.job["id"] for e in evaluations]
    assert len(set(jobs)) == 6 and submitted <= set(jobs)  # the queued jobs were re-attached
    assert sorted(line[4] for line in lines) == sorted(jobs)
    logs = list((tmp_path / "runs").rglob("slurm-*.out"))
    assert len(logs) == 6  # six jobs ran in all: no second submission


def test_a_cancelled_job_fails_with_the_reason_and_a_job_past_its_walltime_is_a_timeout(
    prefect_server, testing_adapters, local_slurm, tmp_path
):
    config = _config(
        tmp_path, "slurm-lost", {"kind": "slurm", "slurm": {"poll_interval": 0.5}},
        budget=2, batch_size=2,
        evaluator={"adapter": "sleep", "parameters": {"seconds": 400},
                   "resources": {"walltime": 30.0}})
    config["objective"] = {"property": "energy_per_atom", "direction": "minimize"}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PREFECT_API_URL": prefect_server,
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    run = _matforge_run(path, env)
    running = _wait(lambda: [j for j, _, s in _squeue() if s == "RUNNING"] or None, 240,
                    "a running job", run)
    cancelled = running[0]
    subprocess.run(["scancel", cancelled], check=True)
    # the other job runs into its 1-minute limit; the campaign goes on and ends
    assert run.wait(timeout=300) == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    by_job = {e.job: e for e in _evaluations(tmp_path, "slurm-lost")}
    assert all(job is None for job in by_job)  # forgotten once failed: a retry would resubmit
    failed = [e for e in _evaluations(tmp_path, "slurm-lost")]
    assert [e.status for e in failed] == ["failed", "failed"]
    errors = sorted(e.error for e in failed)
    assert any(f"Slurm job {cancelled} was cancelled" in e and "JobLost" in e
               for e in errors), errors
    assert any("passed its walltime (TIMEOUT)" in e and "EvaluationTimeout" in e
               for e in errors), errors


def _runs_elsewhere(lines: list[list[str]]) -> set[str]:
    """The processes that started each evaluation's fork server (the ledger's 4th column);
    none is this test process, where the flow runs."""
    starters = {line[3] for line in lines}
    assert str(os.getpid()) not in starters
    return starters


def test_a_campaign_on_a_dask_local_cluster_of_two_worker_processes(
    prefect_server, testing_adapters, tmp_path
):
    config = _config(tmp_path, "dask-local",
                     {"kind": "dask", "dask": {"cluster": "local", "n_workers": 2}})
    summary = _run(config)
    assert summary["by_status"] == {"accepted": 4}
    lines = _ledger(tmp_path)
    assert len(lines) == 4 and len({line[0] for line in lines}) == 4
    assert 1 <= len(_runs_elsewhere(lines)) <= 2  # the two Dask workers
    workers = {e.job["worker"] for e in _evaluations(tmp_path, "dask-local")}
    assert 1 <= len(workers) <= 2 and all(w.startswith("tcp://") for w in workers)


def test_a_campaign_on_dask_workers_that_are_slurm_jobs(
    prefect_server, testing_adapters, local_slurm, tmp_path
):
    config = _config(tmp_path, "dask-slurm",
                     {"kind": "dask", "dask": {"cluster": "slurm", "n_workers": 2}})
    config["evaluator"]["resources"] = {"memory_gb": 1.0, "walltime": 600.0}
    summary = _run(config)
    assert summary["by_status"] == {"accepted": 4}
    lines = _ledger(tmp_path)
    assert len(lines) == 4 and len({line[0] for line in lines}) == 4
    _runs_elsewhere(lines)
    jobs = {line[4] for line in lines}
    assert "-" not in jobs and 1 <= len(jobs) <= 2  # inside the workers' Slurm jobs
    assert not _squeue("dask")  # the workers' jobs ended with the campaign
    assert list((tmp_path / "runs" / "dask-slurm" / "dask-workers").glob("*.out"))  # their logs


def _intervals(log: Path) -> list[tuple[float, float, str]]:
    rows = [line.split() for line in log.read_text().splitlines()]
    return sorted((float(a), float(b), device) for a, b, device in rows)


def test_one_gpu_slot_holds_the_second_gpu_evaluation_until_the_first_ends(
    prefect_server, testing_adapters, tmp_path
):
    """Two GPU evaluations (resources.gpus = 1) on 2 workers: with one GPU device they run
    one after the other, each given device 0; with two devices they overlap on 0 and 1 (each
    waits until both have started, so a slow start on a busy machine cannot separate them)."""
    for devices in ([0], [0, 1]):
        root = tmp_path / f"gpus-{len(devices)}"
        log = root / "calls.txt"
        config = _config(root, f"gpu-{len(devices)}", {"kind": "local", "workers": 2,
                                                       "gpus": devices},
                         budget=2, evaluator={"adapter": "gpu-sleep",
                                              "parameters": {"log": str(log), "seconds": 1.0,
                                                             "together": len(devices)}})
        config["objective"] = {"property": "energy_per_atom", "direction": "minimize"}
        assert _run(config)["by_status"] == {"accepted": 2}
        (s1, e1, d1), (s2, e2, d2) = _intervals(log)
        if len(devices) == 1:
            assert s2 >= e1 and d1 == d2 == "0"  # held until the first ended
        else:
            assert s2 < e1 and {d1, d2} == {"0", "1"}  # both slots at once, one GPU each


def test_a_licence_limit_of_one_slot_serializes_evaluations(
    prefect_server, testing_adapters, tmp_path
):
    licence = f"licence-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "calls.txt"
    config = _config(tmp_path, "licence", {"kind": "local", "workers": 2, "limits": {licence: 1}},
                     budget=2, evaluator={"adapter": "gpu-sleep",
                                          "parameters": {"log": str(log), "seconds": 2.0},
                                          "resources": {"gpus": 0}})
    config["objective"] = {"property": "energy_per_atom", "direction": "minimize"}
    assert _run(config)["by_status"] == {"accepted": 2}
    (s1, e1, d1), (s2, e2, d2) = _intervals(log)
    assert s2 >= e1 and d1 == d2 == "-"  # no GPU asked for: none given
