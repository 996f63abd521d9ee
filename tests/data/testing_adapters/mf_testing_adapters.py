"""Evaluators for testing durability and fault handling; real EMT underneath.

``emt-ledger`` counts what the campaign paid for; ``emt-flaky`` fails a seeded
share of calls in the ways real codes do. Both register as entry points of this
package of their own (the tests install it with pip), so campaigns use them by
name where it is installed and nowhere else.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import time
from pathlib import Path

from pymatgen.core import Structure

from matforge.adapters.ase_calc import EMTEvaluator
from matforge.adapters.base import (
    EvaluationError,
    EvaluationResult,
    Evaluator,
    JobEvaluator,
    Resources,
)
from matforge.engine.loop.results import hold_termination
from matforge.engine.materials.structures import fingerprint


class LedgerEMTEvaluator(EMTEvaluator):
    """EMT that appends one line per completed call to a ledger file.

    The line ``<fingerprint> <energy> <pid>`` is written and fsynced after the
    relaxation has finished and immediately before the result is returned, so
    the ledger counts completed (paid) calls: a call killed while computing
    leaves no line, and one killed after its line (:func:`hold_termination`) still
    writes its result for the campaign to collect.

    Parameters
    ----------
    ledger : path of the ledger file (appended to)
    fmax, max_steps, relax_cell : as :class:`EMTEvaluator`
    delay : seconds of ``time.sleep`` before the relaxation (a longer calculation)

    After the pid the line names where the call ran: the evaluation process's
    grandparent (the process that started its fork server: the campaign's process,
    a Dask worker) and the Slurm job (``-`` outside one).
    """

    name = "emt-ledger"
    path_parameters = ("ledger",)

    def __init__(
        self, ledger: str, fmax: float = 0.05, max_steps: int = 300, relax_cell: bool = True,
        delay: float = 0.0,
    ):
        super().__init__(fmax=fmax, max_steps=max_steps, relax_cell=relax_cell)
        self.ledger = str(ledger)
        self.delay = float(delay)

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        time.sleep(self.delay)
        result = super().evaluate(structure, workdir)
        hold_termination()  # paid from the ledger line on: a kill now waits for the result file
        grandparent = Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[1]
        line = (f"{fingerprint(structure)} {result.energy!r} {os.getpid()} {grandparent} "
                f"{os.environ.get('SLURM_JOB_ID', '-')}\n")
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return result


def _uniform(*parts: object) -> float:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


FAILURES = ("exception", "timeout", "nan", "unconverged")


class FlakyEMTEvaluator(EMTEvaluator):
    """EMT that fails a share of calls, decided by (seed, structure fingerprint, attempt).

    A failing call fails in one of :data:`FAILURES`: raises ``ConnectionError``
    (transient, so retryable), hangs for ``hang`` seconds (to hit a timeout),
    returns a NaN energy, or returns ``converged=False``. The attempt number is
    counted in a file in the evaluation's own directory, so a retry may succeed
    where the first attempt failed, reproducibly.

    Parameters
    ----------
    failure_rate : share of calls that fail, in [0, 1]
    hang : seconds a "timeout" call sleeps
    seed : changes which calls fail
    fmax, max_steps, relax_cell : as :class:`EMTEvaluator`
    """

    name = "emt-flaky"

    def __init__(
        self,
        failure_rate: float = 0.3,
        hang: float = 60.0,
        seed: int = 0,
        fmax: float = 0.05,
        max_steps: int = 300,
        relax_cell: bool = True,
    ):
        super().__init__(fmax=fmax, max_steps=max_steps, relax_cell=relax_cell)
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in [0, 1], got {failure_rate}")
        self.failure_rate = float(failure_rate)
        self.hang = float(hang)
        self.seed = int(seed)

    def failure(self, fp: str, attempt: int) -> str | None:
        """How call number ``attempt`` (0-based) on fingerprint ``fp`` fails, or None."""
        if _uniform(self.seed, fp, attempt, "fails") >= self.failure_rate:
            return None
        return FAILURES[int(_uniform(self.seed, fp, attempt, "how") * len(FAILURES))]

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        counter = workdir / "attempts"
        attempt = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(attempt + 1))
        how = self.failure(fingerprint(structure), attempt)
        if how == "exception":
            raise ConnectionError(f"lost the connection to the compute node (attempt {attempt})")
        if how == "timeout":
            time.sleep(self.hang)  # blocks: only killing the process stops it
            raise EvaluationError(f"hung for {self.hang} s and nobody stopped it")
        result = super().evaluate(structure, workdir)
        if how == "nan":
            return result.model_copy(update={"energy": math.nan, "energy_per_atom": math.nan})
        if how == "unconverged":
            return result.model_copy(update={"converged": False})
        return result


class SleepEvaluator(Evaluator):
    """Blocks for ``seconds`` in ``time.sleep`` (``how="python"``) or in a ``sleep`` child
    process (``how="process"``), as a hung code would, then returns a fixed result, or with
    ``energy="emt"`` the cell's EMT energy without relaxation (milliseconds), so a campaign of
    sleeps has something to learn."""

    name = "sleep"
    implemented_properties = {"energy": "eV", "energy_per_atom": "eV/atom"}

    def __init__(self, seconds: float = 60.0, how: str = "python", energy: str = "fixed"):
        if how not in ("python", "process"):
            raise ValueError(f"how must be 'python' or 'process', got {how!r}")
        if energy not in ("fixed", "emt"):
            raise ValueError(f"energy must be 'fixed' or 'emt', got {energy!r}")
        self.seconds = float(seconds)
        self.how = how
        self.energy = energy

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        if self.how == "python":
            time.sleep(self.seconds)
        else:
            subprocess.run(["sleep", str(self.seconds)], check=True)
        if self.energy == "emt":
            from ase.calculators.emt import EMT
            from pymatgen.io.ase import AseAtomsAdaptor

            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.calc = EMT()
            energy = float(atoms.get_potential_energy())
            return EvaluationResult(energy=energy, energy_per_atom=energy / len(atoms))
        return EvaluationResult(energy=-1.0 * len(structure), energy_per_atom=-1.0)


class GPUSleepEvaluator(SleepEvaluator):
    """:class:`SleepEvaluator` that needs one GPU (``resources.gpus``) and appends
    ``<start> <end> <CUDA_VISIBLE_DEVICES>`` to ``log`` for each call, to show slots.

    With ``together = n`` a call also waits (up to 60 s) until ``n`` calls have started, so
    calls that may run at once overlap however slowly a busy machine starts them, and calls
    held one after the other show it (the first ends only at that deadline)."""

    name = "gpu-sleep"
    resources = Resources(gpus=1)
    path_parameters = ("log",)

    def __init__(self, log: str, seconds: float = 2.0, together: int = 1):
        super().__init__(seconds=seconds)
        self.log = str(log)
        self.together = int(together)

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        start = time.time()
        started = Path(f"{self.log}.started")
        with open(started, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        result = super().evaluate(structure, workdir)
        while (len(started.read_text().split()) < self.together
               and time.time() < start + 60):
            time.sleep(0.05)
        with open(self.log, "a") as handle:
            handle.write(f"{start!r} {time.time()!r} "
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\n")
        return result


class ProcessJob(JobEvaluator):
    """A job that runs on after the evaluation's process dies, as a cluster job does: a
    detached ``sh`` that sleeps ``seconds``, then writes the energy. Each submission is
    counted in ``workdir/submissions``."""

    name = "process-job"
    implemented_properties = {"energy": "eV"}
    poll_interval = 0.05

    def __init__(self, seconds: float = 1.0):
        self.seconds = float(seconds)

    def submit(self, structure: Structure, workdir: Path) -> dict:
        with open(workdir / "submissions", "a") as handle:
            handle.write("submitted\n")
        job = subprocess.Popen(
            ["sh", "-c", f"sleep {self.seconds}; echo -3.5 > energy.partial; "
                         "mv energy.partial energy"],
            cwd=workdir, start_new_session=True,  # outside the evaluation's process group
        )
        return {"pid": job.pid}

    def poll(self, handle: dict, workdir: Path) -> str:
        if (workdir / "energy").exists():
            return "done"
        try:
            os.kill(handle["pid"], 0)
            return "running"
        except ProcessLookupError:
            return "failed"

    def collect(self, handle: dict, structure: Structure, workdir: Path) -> EvaluationResult:
        return EvaluationResult(energy=float((workdir / "energy").read_text()))


class BrokenEvaluator(Evaluator):
    """Breaks the contract on purpose, for the conformance kit's tests: a property without
    a unit that it never reports, one it reports undeclared, an energy that changes from
    run to run, and a ValueError instead of EvaluationError for an unsupported element."""

    name = "broken"
    implemented_properties = {"energy": "eV", "band_gap": ""}
    supported_elements = frozenset({"Cu", "Au"})

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        if {el.symbol for el in structure.composition} - self.supported_elements:
            raise ValueError("unsupported element")
        energy = -1.0 - _uniform(time.time_ns(), os.getpid())
        return EvaluationResult(energy=energy, properties={"magnetization": 1.0})
