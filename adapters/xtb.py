"""tblite: GFN1-xTB (or GFN2-xTB) tight binding through tblite's ASE calculator.

tblite samples the Brillouin zone at the Gamma point only, so a crystal is computed as
a supercell of itself whose perpendicular widths are all at least ``min_length``
(:func:`supercell_matrix` picks a near-cubic one with few atoms); its Gamma point
stands for the k-points that fold onto it. The cell given is what relaxes: the
supercell is rebuilt from it at every step (:class:`SupercellCalculator`), so it stays
a supercell of one cell, and ``energy``, ``forces`` and the relaxed ``structure``
belong to the cell given (the supercell's energy divided by the number of copies, the
force on each atom averaged over its copies). ``energy_per_atom`` is the supercell's.

Formation energies are taken against the elements' ground states computed once with
the same settings and kept in ``tblite-references.json`` beside the evaluations'
directories: H, N, O, F, Cl, Br, I as diatomic molecules, He and Rn as atoms, the rest
as ASE's reference crystals (each as its own supercell; B, P, S, Mn, Ga, Se, Te, Pm and
At, which ASE cannot build, as fcc at their atomic volume like the other ASE adapters).
Cells and references are neutral and closed-shell (charge 0, multiplicity 1).

tblite runs on ``MATFORGE_THREADS`` OpenMP threads (else cores // workers), set for
each evaluation; it is imported only when an evaluation runs, so matforge imports
without it (``pip install tblite``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.build import bulk, make_supercell
from ase.calculators.calculator import (
    Calculator,
    CalculatorError,
    all_changes,
)
from ase.data import chemical_symbols
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.ase_calc import ASECalculatorEvaluator, relaxed_result
from matforge.adapters.base import EvaluationError, EvaluationResult, Resources, shared_references
from matforge.engine.materials.structures import atomic_volume

METHODS = ("GFN1-xTB", "GFN2-xTB")
CALCULATIONS = ("scf", "relax", "vc-relax")

DIATOMIC = {"H": 0.741, "N": 1.098, "O": 1.208, "F": 1.412, "Cl": 1.988, "Br": 2.281,
            "I": 2.666}
"""Elements whose ground state is a diatomic molecule, with its bond length in Å."""

ATOMIC = frozenset({"He", "Rn"})
"""Elements whose reference is the free atom (ASE has no crystal for them)."""

_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=np.int64).reshape(-1, 3, 3)


def perpendicular_widths(cells: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of cells.

    Parameters
    ----------
    cells : array of shape (..., 3, 3), lattice vectors as rows, Å

    Returns
    -------
    array of shape (..., 3): the width across the face spanned by the other two vectors
    """
    cells = np.asarray(cells, dtype=float)
    a, b, c = cells[..., 0, :], cells[..., 1, :], cells[..., 2, :]
    volume = np.abs(np.einsum("...i,...i", a, np.cross(b, c)))
    areas = np.stack([np.linalg.norm(np.cross(b, c), axis=-1),
                      np.linalg.norm(np.cross(c, a), axis=-1),
                      np.linalg.norm(np.cross(a, b), axis=-1)], axis=-1)
    return volume[..., None] / areas


def supercell_matrix(cell: np.ndarray, min_length: float) -> np.ndarray:
    """An integer matrix ``P`` whose supercell ``P @ cell`` has every perpendicular width
    at least ``min_length``, with few copies of the cell.

    The diagonal repetition is the fallback; near-cubic supercells (``P`` near
    ``side * inv(cell)``, each entry shifted by -1, 0 or 1, for sides from ``min_length``
    up) replace it where they need fewer copies. A cell that is already wide enough
    gets the identity.

    Parameters
    ----------
    cell : array of shape (3, 3), lattice vectors as rows, Å
    min_length : Å

    Returns
    -------
    array of shape (3, 3), integers, positive determinant
    """
    cell = np.asarray(cell, dtype=float)
    best = np.diag(np.ceil(min_length / perpendicular_widths(cell) - 1e-9).astype(np.int64))
    copies = round(np.linalg.det(best))
    volume = abs(np.linalg.det(cell))
    inverse = np.linalg.inv(cell)
    for side in np.linspace(min_length, 1.5 * min_length, 26):
        # a supercell with all widths >= side holds at least side**3 of volume
        if side**3 / volume >= copies:
            break
        matrices = np.rint(side * inverse).astype(np.int64) + _SHIFTS
        det = np.rint(np.linalg.det(matrices.astype(float))).astype(np.int64)
        ok = (det > 0) & (det < copies)
        if not ok.any():
            continue
        wide = (perpendicular_widths(matrices[ok] @ cell) >= min_length - 1e-9).all(axis=-1)
        if wide.any():
            index = np.flatnonzero(ok)[wide][np.argmin(det[ok][wide])]
            best, copies = matrices[index], int(det[index])
    return np.asarray(best, dtype=np.int64)


class SupercellCalculator(Calculator):
    """A periodic cell computed as its supercell ``matrix @ cell`` by ``calculator``.

    Reports the cell's own share: the supercell's energy divided by the number of
    copies, the force on each atom averaged over its copies (the gradient of that
    energy with every copy moved together) and the supercell's stress (intensive).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, calculator: Calculator, matrix: np.ndarray):
        super().__init__()
        self.calculator = calculator
        self.matrix = np.asarray(matrix, dtype=np.int64)
        self.copies = round(abs(np.linalg.det(self.matrix)))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        # cell-major order: copy k holds atoms [k*n, (k+1)*n) in the order of the cell
        supercell = make_supercell(self.atoms, self.matrix, wrap=False, order="cell-major")
        supercell.calc = self.calculator
        energy = supercell.get_potential_energy() / self.copies
        forces = supercell.get_forces().reshape(self.copies, len(self.atoms), 3).mean(axis=0)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces,
                        "stress": supercell.get_stress(voigt=True)}


@contextlib.contextmanager
def openmp_threads(n: int):
    """Run the OpenMP pools loaded so far (tblite's) on ``n`` threads in this thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="openmp"):
        yield


def _import_tblite():
    # libgomp reads OMP_STACKSIZE once, when tblite loads it; xTB keeps large arrays on
    # the threads' stacks, which overflow the default of a few MiB on big supercells
    os.environ.setdefault("OMP_STACKSIZE", "1G")
    try:
        from tblite.ase import TBLite
    except ImportError:
        raise EvaluationError("the tblite adapter needs the tblite package "
                              "(pip install tblite)") from None
    return TBLite


class TBLiteEvaluator(ASECalculatorEvaluator):
    """Extended tight binding (GFN1-xTB by default) with tblite, crystals as supercells.

    Parameters
    ----------
    method : ``GFN1-xTB`` or ``GFN2-xTB``
    calculation : ``scf`` (the structure as given), ``relax`` (positions) or ``vc-relax``
        (positions and cell, the supercell matrix fixed at the start)
    min_length : smallest perpendicular width of the supercell, Å; 10 Å keeps energies
        per atom within a few tens of meV/atom of larger cells for Si, NaCl, MgO
    fmax, max_steps : force criterion (eV/Å) and most BFGS steps of a relaxation
    electronic_temperature : Fermi smearing of the occupations, K
    accuracy : tblite's numerical accuracy (smaller is tighter; 1.0 is its default)
    max_iterations : most SCF cycles; an SCF that does not converge raises EvaluationError
    """

    name = "tblite"
    implemented_properties: ClassVar[dict[str, str]] = {
        "energy": "eV",
        "energy_per_atom": "eV/atom",
        "formation_energy_per_atom": "eV/atom",
        "volume_per_atom": "Å^3/atom",
        "density": "g/cm^3",
        "pressure": "GPa",
    }
    supported_elements: ClassVar[frozenset[str]] = frozenset(chemical_symbols[1:87])  # H-Rn
    resources = Resources(cores=1, memory_gb=2.0, walltime=3600.0)
    conformance_unconverged: ClassVar[dict] = {"max_iterations": 1}

    def __init__(
        self,
        method: str = "GFN1-xTB",
        calculation: str = "scf",
        min_length: float = 10.0,
        fmax: float = 0.05,
        max_steps: int = 100,
        electronic_temperature: float = 300.0,
        accuracy: float = 1.0,
        max_iterations: int = 250,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if calculation not in CALCULATIONS:
            raise ValueError(f"calculation must be one of {CALCULATIONS}, got {calculation!r}")
        for label, value in (("min_length", min_length), ("accuracy", accuracy)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a number > 0, got {value!r}")
        if not 50.0 >= min_length:
            raise ValueError(f"min_length must be <= 50 Å (a supercell of thousands of "
                             f"atoms), got {min_length!r}")
        if not (isinstance(electronic_temperature, (int, float))
                and 0 <= electronic_temperature <= 50_000):
            raise ValueError("electronic_temperature must be between 0 and 50000 K, "
                             f"got {electronic_temperature!r}")
        if isinstance(max_iterations, bool) or not (isinstance(max_iterations, int)
                                                    and max_iterations >= 1):
            raise ValueError(f"max_iterations must be a whole number >= 1, got {max_iterations!r}")
        super().__init__(fmax=fmax, max_steps=max_steps, relax_cell=calculation == "vc-relax")
        self.method, self.calculation = method, calculation
        self.min_length = float(min_length)
        self.electronic_temperature = float(electronic_temperature)
        self.accuracy = float(accuracy)
        self.max_iterations = int(max_iterations)

    def make_calculator(self) -> Calculator:
        TBLite = _import_tblite()
        # spin-restricted GFN1 puts the O2 singlet below the triplet, so the references are
        # closed-shell like the cells
        return TBLite(method=self.method, accuracy=self.accuracy,
                      electronic_temperature=self.electronic_temperature,
                      max_iterations=self.max_iterations, charge=0, multiplicity=1,
                      verbosity=0)

    def relax(self, atoms: Atoms, logfile: str | None = None,
              matrix: np.ndarray | None = None) -> tuple[Atoms, bool, int]:
        """Compute (and relax, as ``calculation`` says) ``atoms`` in place; a periodic cell
        as its supercell ``matrix @ cell`` (by default :func:`supercell_matrix`'s).
        Returns the atoms, whether the relaxation converged, and its steps."""
        if atoms.pbc.all():
            if matrix is None:
                matrix = supercell_matrix(atoms.cell.array, self.min_length)
            atoms.calc = SupercellCalculator(self.make_calculator(), matrix)
        else:
            atoms.calc = self.make_calculator()
        try:
            if self.calculation == "scf":
                atoms.get_forces()
                return atoms, True, 0
            cell = self.calculation == "vc-relax" and atoms.pbc.all()
            opt = BFGS(FrechetCellFilter(atoms) if cell else atoms, logfile=logfile)
            converged = bool(opt.run(fmax=self.fmax, steps=self.max_steps))
            return atoms, converged, int(opt.nsteps)
        except CalculatorError as error:
            formula = atoms.get_chemical_formula()
            raise EvaluationError(f"tblite {self.method} failed for {formula}: {error} "
                                  f"(max_iterations={self.max_iterations}, electronic_"
                                  f"temperature={self.electronic_temperature:g} K)") from None

    def reference_atoms(self, symbol: str) -> Atoms:
        """The element's ground state: a molecule, a free atom, or the ASE crystal (the
        primitive or the cubic cell, whichever needs the smaller supercell)."""
        if symbol in DIATOMIC:
            return Atoms(2 * symbol, positions=[[0, 0, 0], [0, 0, DIATOMIC[symbol]]])
        if symbol in ATOMIC:
            return Atoms(symbol)
        cells = []
        for cubic in (False, True):
            with contextlib.suppress(ValueError, KeyError, RuntimeError, TypeError):
                cells.append(bulk(symbol, cubic=cubic))
        if not cells:  # ASE builds no crystal for B, P, S, Mn, Ga, Se, Te, Pm, At
            # the base class's stand-in: fcc at the element's atomic volume
            cells.append(bulk(symbol, "fcc", a=(4 * atomic_volume(symbol)) ** (1 / 3)))

        def size(atoms: Atoms) -> int:
            matrix = supercell_matrix(atoms.cell.array, self.min_length)
            return len(atoms) * round(np.linalg.det(matrix))

        return min(cells, key=size)

    def reference_energy(self, symbol: str) -> float:
        """Energy per atom of the element's ground state (:meth:`reference_atoms`), relaxed
        as ``calculation`` says."""
        atoms, _, _ = self.relax(self.reference_atoms(symbol))
        return float(atoms.get_potential_energy()) / len(atoms)

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        missing = {el.symbol for el in structure.composition} - self.supported_elements
        if missing:
            raise EvaluationError(f"{self.method} has no parameters for "
                                  f"{', '.join(sorted(missing))} (it covers H to Rn)")
        start = time.perf_counter()
        atoms = AseAtomsAdaptor.get_atoms(structure)
        # a neutral, closed-shell cell whatever site properties the structure carried
        atoms.set_initial_charges(None)
        atoms.set_initial_magnetic_moments(None)
        matrix = supercell_matrix(atoms.cell.array, self.min_length)
        copies = round(np.linalg.det(matrix))
        (workdir / "supercell.json").write_text(json.dumps({
            "matrix": matrix.tolist(), "copies": copies, "atoms": copies * len(atoms),
            "widths": perpendicular_widths(matrix @ atoms.cell.array).round(4).tolist(),
        }))
        from matforge.engine.settings import get_settings

        threads = get_settings().threads_per_process()
        _import_tblite()  # loaded first, so that the thread limit reaches its OpenMP
        with openmp_threads(threads):
            atoms, converged, steps = self.relax(atoms, str(workdir / "relax.log"), matrix)
            return relaxed_result(
                atoms,
                lambda symbols: shared_references(workdir.parent, self.name, self.parameters(),
                                                  symbols, self.reference_energy),
                converged, steps, start, "tblite", self.implemented_properties)

    @classmethod
    def conformance_structure(cls) -> Structure:
        """Rock-salt NaCl (two atoms): an ionic crystal with a molecular reference (Cl2)."""
        fcc = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        return Structure(Lattice(5.64 * fcc), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
