"""The evaluator contract every adapter implements."""

from __future__ import annotations

import abc
import inspect
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from pymatgen.core import Structure


class EvaluationError(RuntimeError):
    """An evaluation that ran but produced no usable result; the message says why."""


class EvaluationResult(BaseModel):
    """What an evaluator returns; round-trips through JSON.

    ``forces`` is a list of shape (n_atoms, 3) in eV/Å, ``stress`` the Voigt
    6-vector in eV/Å^3, energies in eV, ``structure`` the relaxed structure as
    a pymatgen dict.
    """

    energy: float
    energy_per_atom: float
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


class Evaluator(abc.ABC):
    """Computes properties of one structure.

    Settings go in the constructor, the system in the call:
    ``Evaluator(**params).evaluate(structure, workdir)``. Subclasses list the
    scalar properties they return in ``implemented_properties``, the elements
    they have parameters for in ``supported_elements`` (None: any), and the
    constructor parameters that are file paths in ``path_parameters`` (a
    relative one resolves against the campaign file's directory and must stay
    under it).
    """

    name: ClassVar[str] = ""
    implemented_properties: ClassVar[tuple[str, ...]] = ()
    supported_elements: ClassVar[frozenset[str] | None] = None
    path_parameters: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        """Evaluate ``structure``, writing any files under ``workdir``."""

    def parameters(self) -> dict[str, Any]:
        """The constructor arguments, for provenance (public attributes named like them)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}
