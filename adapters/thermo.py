"""Helmholtz free energy at a temperature, by Frenkel–Ladd thermodynamic integration.

The candidate is relaxed with the potential (cell included, so at its 0 K volume: no
thermal expansion), repeated into a supercell, and its free energy integrated from an
Einstein crystal (:func:`matforge.engine.materials.thermo.frenkel_ladd`). The supercell's
Γ-point force constants give the Einstein springs (matched to the harmonic mean-square
displacement), the time step (a twentieth of the shortest harmonic period unless given),
the classical harmonic free energy and the harmonic quantum correction.

The integrated free energy is classical (see the engine module); ``quantum_free_energy_per_atom``
adds the harmonic quantum correction, the usual estimate below the Debye temperature.
``workdir/free_energy.json`` keeps the integrand per λ, its errors, the springs and the
supercell.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.ase_calc import ASECalculatorEvaluator, EMTEvaluator
from matforge.adapters.base import EvaluationError, EvaluationResult, Resources
from matforge.engine.materials.thermo import (
    ThermodynamicIntegrationError,
    force_constants,
    frenkel_ladd,
    harmonic_free_energy,
    harmonic_frequencies,
    harmonic_spring_constants,
    supercell_repeats,
)

POTENTIALS: dict[str, tuple[Callable[[], Calculator], frozenset[str]]] = {
    "emt": (EMT, EMTEvaluator.supported_elements),
}
"""Potentials the free energy can be integrated with: name -> (a factory of a fresh ASE
calculator, the elements it has parameters for). A new one is one entry here."""

REPORT_FILE = "free_energy.json"


def make_potential(name: str) -> Calculator:
    """A fresh ASE calculator for the potential called ``name`` (a key of :data:`POTENTIALS`)."""
    try:
        factory, _ = POTENTIALS[name]
    except (KeyError, TypeError):
        raise ValueError(f"calculator {name!r} is not supported for free energies; choose one "
                         f"of {sorted(POTENTIALS)}") from None
    return factory()


def _number(label: str, value, minimum: float, integer: bool = False,
            strict: bool = True) -> float | int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    ok = (not isinstance(value, bool) and math.isfinite(number)
          and (number > minimum if strict else number >= minimum)
          and (not integer or number == int(number)))
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{label} must be {kind} {'>' if strict else '>='} {minimum:g}, "
                         f"got {value!r}")
    return int(number) if integer else number


class FreeEnergyEvaluator(ASECalculatorEvaluator):
    """Classical Helmholtz free energy per atom at ``temperature``, with its statistical error.

    Parameters
    ----------
    temperature : K
    calculator : the potential, a key of :data:`POTENTIALS` (``emt``)
    n_lambda : Gauss–Legendre λ points
    equilibration_steps, production_steps : Langevin MD steps per λ point, discarded and
        averaged
    timestep : fs; None takes a twentieth of the shortest harmonic period of the supercell
    friction : Langevin friction, 1/fs
    seed : seeds the MD; the same seed gives the same result
    min_atoms, min_length : the supercell has at least this many atoms and is at least this
        wide (Å) between opposite faces
    fmax, max_steps, relax_cell : the relaxation before the integration (see
        :class:`~matforge.adapters.ase_calc.ASECalculatorEvaluator`); an unconverged one
        returns ``converged=False`` and no free energy
    """

    name = "free-energy"
    implemented_properties: ClassVar[dict[str, str]] = {
        **ASECalculatorEvaluator.implemented_properties,
        "free_energy_per_atom": "eV/atom",
        "free_energy_error": "eV/atom",
        "harmonic_free_energy_per_atom": "eV/atom",
        "quantum_free_energy_per_atom": "eV/atom",
    }
    supported_elements: ClassVar[frozenset[str]] = frozenset().union(
        *(elements for _, elements in POTENTIALS.values()))
    resources = Resources(cores=1, memory_gb=2.0, walltime=3600.0)
    conformance_unconverged: ClassVar[dict] = {"max_steps": 1}

    def __init__(
        self,
        temperature: float = 300.0,
        calculator: str = "emt",
        n_lambda: int = 6,
        equilibration_steps: int = 500,
        production_steps: int = 2000,
        timestep: float | None = None,
        friction: float = 0.01,
        seed: int = 0,
        min_atoms: int = 32,
        min_length: float = 0.0,
        fmax: float = 0.01,
        max_steps: int = 300,
        relax_cell: bool = True,
    ):
        super().__init__(fmax=fmax, max_steps=max_steps, relax_cell=relax_cell)
        make_potential(calculator)  # refuses an unknown name now, not at the first candidate
        self.calculator = calculator
        self.temperature = _number("temperature (K)", temperature, 0.0)
        self.n_lambda = _number("n_lambda", n_lambda, 1, integer=True, strict=False)
        self.equilibration_steps = _number("equilibration_steps", equilibration_steps, 0,
                                           integer=True, strict=False)
        self.production_steps = _number("production_steps", production_steps, 16,
                                        integer=True, strict=False)
        self.timestep = None if timestep is None else _number("timestep (fs)", timestep, 0.0)
        self.friction = _number("friction (1/fs)", friction, 0.0)
        self.seed = _number("seed", seed, 0, integer=True, strict=False)
        self.min_atoms = _number("min_atoms", min_atoms, 2, integer=True, strict=False)
        self.min_length = _number("min_length (Å)", min_length, 0.0, strict=False)

    def make_calculator(self) -> Calculator:
        return make_potential(self.calculator)

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        _, elements = POTENTIALS[self.calculator]
        missing = {el.symbol for el in structure.composition} - elements
        if missing:
            raise EvaluationError(f"calculator {self.calculator!r} has no parameters for "
                                  f"{', '.join(sorted(missing))}")
        start = time.perf_counter()
        relaxed = super().evaluate(structure, workdir)
        if not relaxed.converged:
            return relaxed  # a free energy about an unrelaxed structure would mislead
        try:
            properties, report = self._free_energy(relaxed.relaxed_structure())
        except (ThermodynamicIntegrationError, ValueError) as error:
            raise EvaluationError(f"free energy at {self.temperature:g} K: {error}") from None
        report["parameters"] = self.parameters()
        path = Path(workdir) / REPORT_FILE
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(report, indent=1))
        os.replace(partial, path)
        return relaxed.model_copy(update={
            "properties": {**relaxed.properties, **properties},
            "wall_time": time.perf_counter() - start,
        })

    def _free_energy(self, structure: Structure) -> tuple[dict[str, float], dict]:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        repeats = supercell_repeats(atoms, self.min_atoms, self.min_length)
        supercell = atoms.repeat(repeats)
        n = len(supercell)
        hessian = force_constants(supercell, self.make_calculator())
        omega2 = harmonic_frequencies(hessian, supercell.get_masses())
        if omega2.min() <= 0:
            raise EvaluationError(
                f"the relaxed structure is dynamically unstable in its {n}-atom supercell: "
                f"a mode of {_thz(omega2.min()):.2f} THz at Γ (imaginary shown negative), "
                "so it has no crystal to integrate from")
        timestep = self.timestep or 2 * math.pi / math.sqrt(omega2.max()) / 20 / units.fs
        result = frenkel_ladd(
            supercell, self.make_calculator(), self.temperature, n_lambda=self.n_lambda,
            timestep=timestep, friction=self.friction,
            equilibration_steps=self.equilibration_steps,
            production_steps=self.production_steps, seed=self.seed,
            spring_constants=harmonic_spring_constants(hessian, supercell),
        )
        classical = harmonic_free_energy(omega2, self.temperature)
        quantum = harmonic_free_energy(omega2, self.temperature, quantum=True)
        properties = {
            "free_energy_per_atom": result.free_energy_per_atom,
            "free_energy_error": result.free_energy_error_per_atom,
            "harmonic_free_energy_per_atom": (result.reference_energy + classical) / n,
            "quantum_free_energy_per_atom": (result.free_energy + quantum - classical) / n,
        }
        report = {
            "supercell": list(repeats),
            "frenkel_ladd": result.to_dict(),
            "harmonic": {"classical": classical, "quantum": quantum,
                         "frequencies_thz": [_thz(w) for w in (omega2.min(), omega2.max())]},
            "properties": properties,
        }
        return properties, report


def _thz(omega2: float) -> float:
    """A squared angular frequency in eV/(Å² amu) as an ordinary frequency in THz (negative
    for an imaginary one)."""
    return float(np.sign(omega2) * math.sqrt(abs(omega2)) / (2 * math.pi) * units.fs * 1e3)
