"""The evaluator contract every adapter implements."""

from __future__ import annotations

import abc
import fcntl
import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymatgen.core import Structure


class EvaluationError(RuntimeError):
    """An evaluation that ran but produced no usable result; the message says why."""


class EvaluationResult(BaseModel):
    """What an evaluator returns; round-trips through JSON.

    Every field is optional but the bookkeeping ones: a lab measures a property,
    not an energy. ``forces`` is a list of shape (n_atoms, 3) in eV/Å, ``stress``
    the Voigt 6-vector in eV/Å^3, energies in eV, ``structure`` the relaxed
    structure as a pymatgen dict; further scalars go in ``properties``, in the
    units the adapter declares (``Evaluator.implemented_properties``).
    """

    energy: float | None = None
    energy_per_atom: float | None = None
    formation_energy_per_atom: float | None = None
    forces: list[list[float]] | None = None
    stress: list[float] | None = None
    structure: dict[str, Any] | None = None
    converged: bool = True
    n_steps: int = 0
    wall_time: float = 0.0
    properties: dict[str, float] = Field(default_factory=dict)

    def get(self, name: str) -> float:
        """A scalar property by name: a field of this result or an entry of ``properties``."""
        if name in self.properties:
            return float(self.properties[name])
        value = getattr(self, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise KeyError(f"result has no scalar property {name!r}")

    def relaxed_structure(self) -> Structure | None:
        return Structure.from_dict(self.structure) if self.structure else None


class Resources(BaseModel):
    """What one evaluation needs; an adapter declares it, a campaign file may override it
    (``evaluator.resources``), and dispatchers size cluster jobs and slots by it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cores: int = Field(1, ge=1, le=100_000, description="CPU cores")
    gpus: int = Field(0, ge=0, le=64)
    memory_gb: float = Field(2.0, gt=0, le=100_000, description="memory, GiB")
    walltime: float = Field(3600.0, gt=0, le=30 * 86_400, description="seconds")

    def override(self, changes: dict[str, Any]) -> Resources:
        """A copy with ``changes`` (a campaign file's ``evaluator.resources``) validated in."""
        return Resources.model_validate({**self.model_dump(), **changes})


def check_resources(config, cls: type, source: str = "campaign") -> Resources:
    """The adapter's resources with the campaign's ``evaluator.resources`` over them;
    a :class:`~matforge.engine.config.ConfigError` names a bad entry."""
    from matforge.engine.config import ConfigError

    try:
        return cls.resources.override(config.evaluator.resources)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{source}: field 'evaluator.resources.{where}': "
                          f"{first['msg']}, got {first.get('input')!r}"[:300]) from None


def declared_units(adapter) -> dict[str, str | None]:
    """An adapter's (class or instance) properties and their units (None where a tuple named
    no unit)."""
    declared = adapter.implemented_properties
    if isinstance(declared, dict):
        return {str(k): v for k, v in declared.items()}
    return {str(name): None for name in declared}


class Evaluator(abc.ABC):
    """Computes properties of one structure.

    Settings go in the constructor, the system in the call:
    ``Evaluator(**params).evaluate(structure, workdir)``. Subclasses list the
    scalar properties they return, with their units, in ``implemented_properties``
    (``{"energy_per_atom": "eV/atom"}``), the elements they have parameters for in
    ``supported_elements`` (None: any), the constructor parameters that are file
    paths in ``path_parameters`` (a relative one resolves against the campaign
    file's directory and must stay under it), what one evaluation needs in
    ``resources``, and what it takes in ``inputs``: structures, and compositions where
    it needs no geometry (a campaign of compositions, ``candidates: composition``).

    Failures: a calculation that ran and gave nothing usable raises
    :class:`EvaluationError` with the reason, or returns ``converged=False``;
    ``conformance_unconverged`` names constructor parameters that make a
    calculation stop unconverged, for the conformance kit (``matforge adapters
    check``). Running again in the same ``workdir`` must give the same result.
    """

    name: ClassVar[str] = ""
    implemented_properties: ClassVar[dict[str, str]] = {}
    supported_elements: ClassVar[frozenset[str] | None] = None
    path_parameters: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    conformance_unconverged: ClassVar[dict[str, Any] | None] = None
    inputs: ClassVar[tuple[str, ...]] = ("structure",)

    @abc.abstractmethod
    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        """Evaluate ``structure``, writing any files under ``workdir``."""

    def parameters(self) -> dict[str, Any]:
        """The constructor arguments, for provenance (public attributes named like them)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}


class JobEvaluator(Evaluator):
    """An adapter whose calculation is a job that outlives a call: submit, poll, collect.

    ``submit`` starts the calculation and returns a JSON-able handle (a process id,
    a scheduler job id); ``poll`` says ``"running"``, ``"done"`` or ``"failed"``;
    ``collect`` reads the result. :meth:`evaluate` keeps the handle in
    ``workdir/job.json``, so an evaluation started again in the same directory
    (after its process was killed) re-attaches to the job instead of paying for a
    second one.
    """

    poll_interval: ClassVar[float] = 2.0
    JOB_FILE: ClassVar[str] = "job.json"

    @abc.abstractmethod
    def submit(self, structure: Structure, workdir: Path) -> dict[str, Any]:
        """Start the calculation in ``workdir``; return its handle."""

    @abc.abstractmethod
    def poll(self, handle: dict[str, Any], workdir: Path) -> str:
        """``"running"``, ``"done"`` or ``"failed"``."""

    @abc.abstractmethod
    def collect(self, handle: dict[str, Any], structure: Structure,
                workdir: Path) -> EvaluationResult:
        """The finished job's result; raises :class:`EvaluationError` for a failed one."""

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / self.JOB_FILE
        try:
            handle = json.loads(path.read_text())
        except (OSError, ValueError):
            handle = self.submit(structure, workdir)
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(handle))
            os.replace(partial, path)
        while (state := self.poll(handle, workdir)) == "running":
            time.sleep(self.poll_interval)
        if state != "done":
            raise EvaluationError(f"job {handle} ended {state}")
        return self.collect(handle, structure, workdir)


def shared_references(directory: Path, name: str, parameters: dict[str, Any],
                      symbols: list[str], compute: Callable[[str], float]) -> dict[str, float]:
    """Energies per atom of elemental references, computed once per campaign directory.

    Kept in ``directory/<name>-references.json`` keyed by a hash of ``parameters``,
    under a file lock, so evaluations running side by side (and evaluations in child
    processes, which share no memory) compute each element once.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-references.json"
    key = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()
    with open(directory / f".{name}-references.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = json.loads(path.read_text()) if path.exists() else {}
        mine = stored.setdefault(key, {})
        for symbol in symbols:
            if symbol not in mine:
                mine[symbol] = float(compute(symbol))
                partial = path.with_suffix(".partial")
                partial.write_text(json.dumps(stored, indent=1))
                os.replace(partial, path)
        return {s: mine[s] for s in symbols}
