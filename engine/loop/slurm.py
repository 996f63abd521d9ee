"""Evaluations as Slurm jobs: submitted once, re-attached after any restart, collected once.

One claimed evaluation becomes one ``sbatch`` job that runs
``python -m matforge.engine.loop.job`` in the evaluation's directory; the job
writes the adapter's result there (:mod:`~matforge.engine.loop.results`) or,
when the adapter raised, ``matforge-error.json``. The controller (the campaign's
process) commits what it finds; it never computes.

Never paid twice: the job is submitted held (``sbatch --hold``), its id is
stored with the claim (:meth:`CampaignStore.set_job`), and only then is it
released. A campaign killed at any moment and resumed finds the job by the id in
the store, or, if it died between ``sbatch`` and the store, by the job's name
(``mf-<key>``), and polls it instead of submitting another. A job that ended
without a result is turned into the error its state means: ``TIMEOUT`` into
:class:`~matforge.engine.loop.isolate.EvaluationTimeout`, ``CANCELLED``,
``NODE_FAIL`` or a job Slurm no longer knows into :class:`JobLost`, a failed
adapter into :class:`JobFailed` naming the adapter's exception; the campaign's
retry policy decides whether another job is submitted.

The queue is read with one ``squeue`` per poll interval for all of a campaign's
jobs (:class:`SlurmQueue`), not once per job; a job that has left the queue is
looked up with ``scontrol show job`` and, where accounting is kept, ``sacct``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from matforge.engine.loop.isolate import EvaluationTimeout
from matforge.engine.loop.results import read_result

SPEC_FILE = "matforge-job.pkl"
SCRIPT_FILE = "matforge-job.sh"
ERROR_FILE = "matforge-error.json"

TEMPLATE = """#!/bin/bash
#SBATCH --job-name=${job_name}
#SBATCH --output=${log}
#SBATCH --chdir=${workdir}
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=${cores}
#SBATCH --mem=${memory_mb}M
#SBATCH --time=${time}
${directives}
# one evaluation of matforge campaign ${campaign}: evaluation ${evaluation} (${label})
${setup}
export OMP_NUM_THREADS=${threads} OPENBLAS_NUM_THREADS=${threads} MKL_NUM_THREADS=${threads}
export MATFORGE_THREADS=${threads} MATFORGE_WORKERS=1
exec ${python} -m matforge.engine.loop.job ${spec}
"""
"""The built-in job script; ``executor.slurm.template`` names a file to use instead.
``${name}`` fields are filled (string.Template, so the script's own ``${VAR}`` stay as they
are): job_name, log, workdir, cores, threads, memory_mb, time (minutes), gpus,
directives (``#SBATCH`` lines for partition, account, qos, GPUs and the extra
options), setup (the ``setup`` lines), python, spec, campaign, evaluation, label."""

ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
                    "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT",
                    "STOPPED", "RESV_DEL_HOLD"})
"""Job states in which the job may still run (or is running)."""


class SlurmError(ConnectionError):
    """A Slurm command failed or did not answer (the controller is down or busy); the
    message has its output. A ``ConnectionError``, so the default retry policy retries it."""


class JobLost(RuntimeError):
    """A job that ended without a result and without an error of its own: cancelled
    (``scancel``), its node failed, preempted, or unknown to Slurm."""


class JobFailed(RuntimeError):
    """The adapter raised in the job; ``bases`` names the class and base classes of its
    exception, so a retry policy by class name (``retry_on``) reads it as the original."""

    def __init__(self, message: str, bases: tuple[str, ...] = ()):
        super().__init__(message)
        self.bases = bases


@dataclass(frozen=True)
class JobState:
    """One look at a job: its Slurm state, the reason Slurm gives and its exit code."""

    state: str
    reason: str = ""
    exit_code: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def held(self) -> bool:
        return self.state == "PENDING" and "held" in self.reason.lower()


def _slurm(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} not found: is Slurm installed and on PATH?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(args[:2])}: no answer in {timeout:g} s") from None
    if check and done.returncode != 0:
        raise SlurmError(f"{' '.join(args[:2])} failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[:500]}")
    return done


def job_name(key: str) -> str:
    """The Slurm job name of the evaluation with idempotency key ``key``."""
    return f"mf-{key[:20]}"


def sbatch_time(seconds: float) -> int:
    """Whole minutes for ``--time`` (Slurm keeps time limits in minutes), at least 1."""
    return max(1, math.ceil(seconds / 60))


def render_script(template: str, fields: dict[str, Any]) -> str:
    """The job script: ``template`` with its ``${field}`` placeholders filled."""
    return Template(template).safe_substitute({k: str(v) for k, v in fields.items()})


def script_fields(settings, resources, *, name: str, workdir: Path, spec: Path,
                  walltime: float, campaign: str, evaluation: int, label: str) -> dict:
    """The template's fields for one evaluation: ``settings`` is the campaign's
    ``executor.slurm`` section, ``resources`` the adapter's (with the campaign's over them)."""
    directives = [f"--partition={settings.partition}" if settings.partition else "",
                  f"--account={settings.account}" if settings.account else "",
                  f"--qos={settings.qos}" if settings.qos else "",
                  f"--gres=gpu:{resources.gpus}" if resources.gpus else "",
                  *settings.directives]
    return {
        "job_name": name, "log": workdir / "slurm-%j.out", "workdir": workdir,
        "cores": resources.cores, "threads": resources.cores,
        "memory_mb": max(1, math.ceil(resources.memory_gb * 1024)),
        "time": sbatch_time(walltime), "gpus": resources.gpus,
        "directives": "\n".join(f"#SBATCH {d}" for d in directives if d),
        "setup": "\n".join(settings.setup),
        "python": shlex.quote(settings.python or sys.executable), "spec": shlex.quote(str(spec)),
        "campaign": campaign, "evaluation": evaluation, "label": label,
    }


def submit_held(script: Path, workdir: Path) -> str:
    """``sbatch --hold`` the script; returns the job id. The job cannot start before
    :func:`release` (so its id is stored first)."""
    done = _slurm("sbatch", "--parsable", "--hold", str(script), timeout=120)
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {done.stdout.strip()[:200]!r}")
    return job_id


def release(job_id: str) -> None:
    """Let a held job start (nothing happens for a job that is not held)."""
    done = _slurm("scontrol", "release", job_id, check=False)
    if done.returncode != 0 and "not held" not in (done.stderr + done.stdout).lower() and \
            "already completed" not in (done.stderr + done.stdout).lower():
        raise SlurmError(f"scontrol release {job_id}: {done.stderr.strip()[:300]}")


def cancel(job_id: str) -> None:
    _slurm("scancel", job_id, check=False)


def find_jobs(name: str) -> list[str]:
    """Ids of queued or running jobs named ``name`` (oldest first)."""
    done = _slurm("squeue", "-h", "-n", name, "-o", "%i")
    return sorted((line.strip() for line in done.stdout.split() if line.strip()), key=int)


def _parse_scontrol(text: str) -> dict[str, str]:
    fields = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def lookup(job_id: str) -> JobState | None:
    """A job that has left the queue: ``scontrol show job`` (it remembers finished jobs for
    MinJobAge), then ``sacct`` where accounting is kept; None when neither knows it."""
    done = _slurm("scontrol", "show", "job", "-o", job_id, check=False)
    if done.returncode == 0 and "JobState=" in done.stdout:
        fields = _parse_scontrol(done.stdout)
        return JobState(fields["JobState"], fields.get("Reason", ""), fields.get("ExitCode", ""))
    if shutil.which("sacct"):
        done = _slurm("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,Reason",
                      check=False)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode == 0 and lines:
            state, exit_code, reason = (lines[-1].split("|") + ["", ""])[:3]
            return JobState(state.split()[0], reason, exit_code)
    return None


class SlurmQueue:
    """What Slurm says about this process's jobs, read at most once per ``interval`` with one
    ``squeue`` for all of them, whichever thread asks."""

    def __init__(self, interval: float = 5.0):
        self.interval = interval
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._states: dict[str, JobState] = {}

    def _refresh(self) -> None:
        done = _slurm("squeue", "-h", "--me", "-o", "%i|%T|%r")
        states = {}
        for line in done.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                states[parts[0]] = JobState(parts[1], parts[2])
        self._states, self._read_at = states, time.monotonic()

    def state(self, job_id: str, fresh: bool = False) -> JobState | None:
        """The job's state; None when Slurm no longer knows the job."""
        with self._lock:
            if fresh or time.monotonic() - self._read_at >= self.interval:
                self._refresh()
            found = self._states.get(job_id)
        return found if found is not None else lookup(job_id)

    def wait(self, job_id: str, on_change: Callable[[JobState], None] | None = None
             ) -> JobState | None:
        """Poll until the job has ended; returns its last state (None: Slurm lost it)."""
        last = None
        while True:
            state = self.state(job_id)
            if state != last and on_change is not None and state is not None:
                on_change(state)
            last = state
            if state is None or not state.active:
                return state
            if state.held:
                release(job_id)  # stored before a kill stopped the release
            time.sleep(self.interval)


def write_error(workdir: str | Path, key: str, error: BaseException) -> None:
    """Record the adapter's exception for the controller (run in the job)."""
    path = Path(workdir) / ERROR_FILE
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({
        "key": key, "type": type(error).__name__, "message": str(error)[:2000],
        "bases": [c.__name__ for c in type(error).__mro__],
    }))
    os.replace(partial, path)


def read_error(workdir: str | Path, key: str) -> dict | None:
    try:
        stored = json.loads((Path(workdir) / ERROR_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and stored.get("key") == key else None


def _tail(path: str, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[:600]


def failure(job: dict, state: JobState | None, workdir: str | Path, key: str) -> Exception:
    """The exception for a job that ended without a result."""
    job_id, log = job["id"], str(job.get("log", ""))
    error = read_error(workdir, key)
    if error is not None:
        bases = tuple(error.get("bases", ()))
        message = f"{error.get('type')}: {error.get('message')} (Slurm job {job_id})"
        if "TimeoutError" in bases:
            return EvaluationTimeout(message)
        return JobFailed(message, bases)
    if state is None:
        return JobLost(f"Slurm job {job_id} is gone: it left the queue with no result and "
                       f"Slurm no longer knows it (node failure or purged); log {log}")
    if state.state in ("TIMEOUT", "DEADLINE"):
        return EvaluationTimeout(f"Slurm job {job_id} passed its walltime ({state.state}); "
                                 f"log {log}")
    if state.state == "CANCELLED":
        return JobLost(f"Slurm job {job_id} was cancelled (scancel or an administrator); "
                       f"log {log}")
    if state.state in ("NODE_FAIL", "BOOT_FAIL", "PREEMPTED"):
        return JobLost(f"Slurm job {job_id} ended {state.state} ({state.reason}); log {log}")
    tail = _tail(log)
    return JobFailed(f"Slurm job {job_id} ended {state.state} (exit {state.exit_code}) "
                     f"without a result; log {log}" + (f": {tail}" if tail else ""))


def run_job(store, work, objective: str, make_evaluator, settings, resources,
            queue: SlurmQueue, campaign: str, log: Callable[[str], None] = print) -> str:
    """Evaluate one claimed item as a Slurm job and commit its outcome; returns its status.

    Submits a job unless one is recorded for the claim (or queued under its name), stores
    its id before it may start, waits for it, and commits the result it wrote. A job that
    ended without a result raises (see the module's docstring), after forgetting the job so
    that a retry submits a new one. ``settings`` is ``executor.slurm``.
    """
    from matforge.engine.loop.round import record_result
    from matforge.engine.materials.structures import n_atoms

    evaluation = work.evaluation_id
    status = store.status(evaluation)
    if status != "running":
        return status
    workdir = Path(work.workdir)
    result = read_result(workdir, work.key)
    if result is None:
        job = store.job(evaluation)
        if not (job and job.get("kind") == "slurm"):
            job = _adopt_or_submit(store, work, make_evaluator, settings, resources, campaign)
            if job is None:  # another run owns the claim now, or the input is refused
                return store.status(evaluation)
            log(f"evaluation {work.label}: Slurm job {job['id']} submitted; log {job['log']}")
        else:
            log(f"evaluation {work.label}: re-attached to Slurm job {job['id']}; "
                f"log {job['log']}")
        state = queue.wait(job["id"], lambda s: log(
            f"evaluation {work.label}: Slurm job {job['id']} {s.state}"
            + (f" ({s.reason})" if s.reason and s.reason != "None" else "")))
        result = read_result(workdir, work.key)
        if result is None:
            error = failure(job, state, workdir, work.key)
            store.set_job(evaluation, None, work.owner)  # a retry submits a new job
            (workdir / ERROR_FILE).unlink(missing_ok=True)
            raise error
    return record_result(store, evaluation, objective, n_atoms(work.structure), result,
                         work.owner)


def _adopt_or_submit(store, work, make_evaluator, settings, resources, campaign) -> dict | None:
    from matforge.engine.materials.structures import (
        StructureError,
        check_material,
        material_as_dict,
    )

    workdir = Path(work.workdir)
    name = job_name(work.key)
    log_path = str(workdir / "slurm-{id}.out")
    queued = find_jobs(name)  # a kill between sbatch and the store left it held, unrecorded
    if queued:
        job_id = queued[0]
        for extra in queued[1:]:
            cancel(extra)
    else:
        try:
            check_material(work.structure)
        except StructureError as error:
            store.complete(work.evaluation_id, "failed", owner=work.owner,
                           error=f"candidate {work.label}: rejected input: {error}")
            return None
        workdir.mkdir(parents=True, exist_ok=True)
        spec = workdir / SPEC_FILE
        with open(spec, "wb") as handle:
            pickle.dump({"make_evaluator": make_evaluator,
                         "structure": material_as_dict(work.structure),
                         "workdir": str(workdir), "key": work.key, "label": work.label}, handle)
        walltime = min(resources.walltime, work.timeout or math.inf)
        template = (Path(settings.template).read_text() if settings.template else TEMPLATE)
        script = workdir / SCRIPT_FILE
        script.write_text(render_script(template, script_fields(
            settings, resources, name=name, workdir=workdir, spec=spec, walltime=walltime,
            campaign=campaign, evaluation=work.evaluation_id, label=work.label)))
        job_id = submit_held(script, workdir)
    job = {"kind": "slurm", "id": job_id, "name": name, "log": log_path.format(id=job_id)}
    if not store.set_job(work.evaluation_id, job, work.owner):
        cancel(job_id)  # the claim is not ours (or finished) any more
        return None
    release(job_id)
    return job
