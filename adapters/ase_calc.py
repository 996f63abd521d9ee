"""Evaluators that wrap an ASE calculator: relax, then report energies, forces and stress."""

from __future__ import annotations

import abc
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.base import EvaluationError, EvaluationResult, Evaluator
from matforge.engine.materials.structures import atomic_volume

GASES = frozenset({"H", "N", "O", "F", "Cl"})
"""Elements whose standard state, the reference of formation energies, is a diatomic gas."""


class ASECalculatorEvaluator(Evaluator):
    """Relax positions (and the cell) with an ASE calculator and report the result.

    Formation energies are taken against elemental references computed with the
    same calculator and relaxation, cached per process.

    Parameters
    ----------
    fmax : force convergence criterion, eV/Å
    max_steps : most optimizer steps before the relaxation counts as unconverged
    relax_cell : also relax the cell shape and volume
    """

    implemented_properties: ClassVar[dict[str, str]] = {
        "energy": "eV",
        "energy_per_atom": "eV/atom",
        "formation_energy_per_atom": "eV/atom",
        "volume_per_atom": "Å^3/atom",
        "density": "g/cm^3",
    }
    conformance_unconverged: ClassVar[dict] = {"max_steps": 1}
    _references: ClassVar[dict[tuple, float]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, fmax: float = 0.05, max_steps: int = 300, relax_cell: bool = True):
        if not fmax > 0:
            raise ValueError(f"fmax must be > 0, got {fmax}")
        if int(max_steps) < 0:
            raise ValueError(f"max_steps must be >= 0, got {max_steps}")
        self.fmax = float(fmax)
        self.max_steps = int(max_steps)
        self.relax_cell = bool(relax_cell)

    @abc.abstractmethod
    def make_calculator(self) -> Calculator:
        """A fresh calculator instance (one per relaxation, so threads never share one)."""

    def relax(self, atoms: Atoms, logfile: str | None = None) -> tuple[Atoms, bool, int]:
        """Relax ``atoms`` in place; return them, whether forces converged, and the step count."""
        atoms.calc = self.make_calculator()
        target = FrechetCellFilter(atoms) if self.relax_cell else atoms
        opt = BFGS(target, logfile=logfile)
        converged = bool(opt.run(fmax=self.fmax, steps=self.max_steps))
        return atoms, converged, int(opt.nsteps)

    def reference_energy(self, symbol: str) -> float:
        """Energy per atom of the relaxed elemental standard state: the diatomic molecule for
        the gases (:data:`GASES`: H2, N2, O2, F2, Cl2, in a 12 Å box), else ASE's reference
        lattice (fcc at the element's atomic volume where ASE has none)."""
        key = (type(self).__name__, tuple(sorted(self.parameters().items())), symbol)
        with self._lock:
            if key not in self._references:
                if symbol in GASES:
                    atoms = molecule(f"{symbol}2", vacuum=6.0)
                    atoms.pbc = True
                    atoms.calc = self.make_calculator()
                    BFGS(atoms, logfile=None).run(fmax=self.fmax, steps=self.max_steps)
                else:
                    try:
                        atoms = bulk(symbol)
                    except (ValueError, KeyError):
                        a = (4 * atomic_volume(symbol)) ** (1 / 3)
                        atoms = bulk(symbol, "fcc", a=a)
                    atoms, _, _ = self.relax(atoms)
                self._references[key] = atoms.get_potential_energy() / len(atoms)
            return self._references[key]

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms, converged, n_steps = self.relax(atoms, logfile=str(workdir / "relax.log"))
        return relaxed_result(
            atoms, lambda symbols: {s: self.reference_energy(s) for s in symbols},
            converged, n_steps, start, type(self).__name__, self.implemented_properties)


def relaxed_result(atoms: Atoms, references: Callable[[list[str]], dict[str, float]],
                   converged: bool, n_steps: int, started: float, code: str,
                   declared) -> EvaluationResult:
    """The result of a relaxation that ended at ``atoms`` (their calculator holds the final
    energy, forces and stress), with the formation energy against ``references(symbols)``
    (energies per atom of the elements) and those of ``volume_per_atom`` (Å^3), ``density``
    (g/cm^3) and ``pressure`` (GPa) that the adapter ``declared``. Raises
    EvaluationError, before any reference is computed, when ``code`` gave a non-finite
    energy or forces."""
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=True)
    formula = atoms.get_chemical_formula(mode="reduce")
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise EvaluationError(f"{code} returned a non-finite energy or forces for {formula}")
    n = len(atoms)
    symbols = atoms.get_chemical_symbols()
    energies = references(sorted(set(symbols)))
    relaxed = AseAtomsAdaptor.get_structure(atoms)
    properties = {
        "volume_per_atom": float(relaxed.volume / n),
        "density": float(relaxed.density),
        "pressure": float(-stress[:3].mean() * 160.21766208),  # eV/Å^3 -> GPa
    }
    return EvaluationResult(
        energy=energy,
        energy_per_atom=energy / n,
        formation_energy_per_atom=(energy - sum(energies[s] for s in symbols)) / n,
        forces=forces.tolist(),
        stress=stress.tolist(),
        structure=json.loads(relaxed.to_json()),
        converged=converged,
        n_steps=n_steps,
        wall_time=time.perf_counter() - started,
        properties={k: v for k, v in properties.items() if k in declared},
    )


class EMTEvaluator(ASECalculatorEvaluator):
    """ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt; H, C, N, O roughly).

    Cheap and real: the default evaluator for trying campaigns end to end.
    """

    name = "emt"
    supported_elements: ClassVar[frozenset[str]] = frozenset(
        {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"}
    )

    def make_calculator(self) -> Calculator:
        return EMT()

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        missing = {el.symbol for el in structure.composition} - self.supported_elements
        if missing:
            raise EvaluationError(f"EMT has no parameters for {', '.join(sorted(missing))}")
        return super().evaluate(structure, workdir)
