"""GPAW plane-wave PAW DFT through its ASE calculator, in the evaluation's own process.

Each evaluation builds a ``GPAW(mode=PW(ecut), ...)`` calculator that writes its log
to ``gpaw.txt`` in the evaluation's directory, and relaxes with ASE's BFGS (positions,
or positions and cell through :class:`~ase.filters.FrechetCellFilter`), as the other
ASE-calculator adapters do. k-points are a Gamma-centred Monkhorst-Pack mesh no
coarser than ``kspacing`` (the Quantum ESPRESSO adapter's rule), so the two codes
sample alike.

PAW datasets: the ``gpaw`` profile's ``data_dir`` (``MATFORGE_PROFILES``) when it names
one, else GPAW's own search path: ``GPAW_SETUP_PATH``, then the ``gpaw-data`` package
that ``pip install gpaw`` installs (GPAW's standard datasets, nothing downloaded at run
time). Only ``data_dir`` of the profile is used: GPAW runs in the evaluation's process,
on one MPI rank, its BLAS on ``MATFORGE_THREADS`` threads (else cores // workers).
Calculations are spin-paired.

Formation energies are taken against the elements' ground states (ASE's reference
crystals), computed once with the same settings (an SCF, or a vc-relax when the
campaign relaxes) and kept in ``gpaw-references.json`` beside the evaluations'
directories. Elements whose ground state is not a crystal in ASE (H, N, O, F, Cl, ...)
have no reference here: their formation energies raise :class:`EvaluationError`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import chemical_symbols
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.ase_calc import ASECalculatorEvaluator, relaxed_result
from matforge.adapters.base import EvaluationError, EvaluationResult, Resources, shared_references
from matforge.adapters.espresso import kpoints
from matforge.adapters.fileio import Profile, load_profile

XCS = ("LDA", "PBE")
CALCULATIONS = ("scf", "relax", "vc-relax")


def _import_gpaw():
    """GPAW with its C extension loaded (its names are imported lazily), so that a thread
    limit set afterwards reaches the BLAS the extension links."""
    try:
        import gpaw
        gpaw.GPAW, gpaw.PW, gpaw.FermiDirac
    except ImportError:
        raise EvaluationError("the gpaw adapter needs GPAW (pip install gpaw; it builds "
                              "against libxc-dev)") from None
    return gpaw


class GPAWEvaluator(ASECalculatorEvaluator):
    """GPAW plane-wave DFT.

    Parameters
    ----------
    xc : ``LDA`` or ``PBE``; picks the PAW datasets too
    calculation : ``scf``, ``relax`` (positions) or ``vc-relax`` (positions and cell)
    ecut : plane-wave cutoff, eV
    kspacing : largest k-point spacing, Å⁻¹ (2π included)
    width : Fermi-Dirac smearing of the occupations, eV
    energy_tolerance : SCF convergence of the energy, eV per valence electron
    density_tolerance : SCF convergence of the density, electrons per valence electron
    maxiter : most SCF iterations; an SCF that does not converge raises EvaluationError
    fmax, max_steps : force criterion (eV/Å) and most BFGS steps of a relaxation
    """

    name = "gpaw"
    implemented_properties: ClassVar[dict[str, str]] = {
        "energy": "eV",
        "energy_per_atom": "eV/atom",
        "formation_energy_per_atom": "eV/atom",
        "volume_per_atom": "Å^3/atom",
        "pressure": "GPa",
    }
    # the elements of GPAW's standard PAW datasets (gpaw-data 1.2.1): H to Rn but Tc, Po, At
    supported_elements: ClassVar[frozenset[str]] = (
        frozenset(chemical_symbols[1:87]) - {"Tc", "Po", "At"})
    resources = Resources(cores=1, memory_gb=4.0, walltime=3600.0)
    default_profile = Profile(command=["gpaw"])
    conformance_unconverged: ClassVar[dict] = {"maxiter": 1}

    def __init__(
        self,
        xc: str = "PBE",
        calculation: str = "scf",
        ecut: float = 400.0,
        kspacing: float = 0.3,
        width: float = 0.05,
        energy_tolerance: float = 5e-4,
        density_tolerance: float = 1e-4,
        maxiter: int = 333,
        fmax: float = 0.05,
        max_steps: int = 100,
    ):
        if xc not in XCS:
            raise ValueError(f"xc must be one of {XCS}, got {xc!r}")
        if calculation not in CALCULATIONS:
            raise ValueError(f"calculation must be one of {CALCULATIONS}, got {calculation!r}")
        for label, value in (("ecut", ecut), ("kspacing", kspacing), ("width", width),
                             ("energy_tolerance", energy_tolerance),
                             ("density_tolerance", density_tolerance)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a number > 0, got {value!r}")
        if isinstance(maxiter, bool) or not (isinstance(maxiter, int) and maxiter >= 1):
            raise ValueError(f"maxiter must be a whole number >= 1, got {maxiter!r}")
        super().__init__(fmax=fmax, max_steps=max_steps, relax_cell=calculation == "vc-relax")
        self.xc, self.calculation = xc, calculation
        self.ecut, self.kspacing, self.width = float(ecut), float(kspacing), float(width)
        self.energy_tolerance = float(energy_tolerance)
        self.density_tolerance = float(density_tolerance)
        self.maxiter = maxiter

    def profile(self) -> Profile:
        return load_profile(self.name, self.default_profile)

    def make_calculator(self, cell: np.ndarray | None = None, txt: str | None = None):
        """A GPAW calculator with these settings; its k-point mesh for ``cell``."""
        gpaw = _import_gpaw()
        data_dir = self.profile().data_dir
        if data_dir and data_dir not in gpaw.setup_paths:
            gpaw.setup_paths.insert(0, data_dir)
        mesh = kpoints(np.eye(3) if cell is None else cell, self.kspacing)
        return gpaw.GPAW(
            mode=gpaw.PW(self.ecut), xc=self.xc,
            kpts={"size": mesh, "gamma": True},
            occupations=gpaw.FermiDirac(self.width),
            convergence={"energy": self.energy_tolerance, "density": self.density_tolerance},
            maxiter=self.maxiter, txt=txt,
        )

    def relax(self, atoms: Atoms, logfile: str | None = None, txt: str | None = None,
              calculation: str | None = None) -> tuple[Atoms, bool, int]:
        """Compute (and relax, as ``calculation`` says, by default the evaluator's)
        ``atoms`` in place, GPAW's log in ``txt``; returns the atoms, whether the
        relaxation converged, and its steps."""
        gpaw = _import_gpaw()
        calculation = calculation or self.calculation
        atoms.calc = self.make_calculator(atoms.cell.array, txt)
        try:
            if calculation == "scf":
                atoms.get_forces()
                return atoms, True, 0
            target = FrechetCellFilter(atoms) if calculation == "vc-relax" else atoms
            opt = BFGS(target, logfile=logfile)
            converged = bool(opt.run(fmax=self.fmax, steps=self.max_steps))
            return atoms, converged, int(opt.nsteps)
        except gpaw.KohnShamConvergenceError:
            raise EvaluationError(f"GPAW: the SCF of {atoms.get_chemical_formula()} did not "
                                  f"converge in maxiter={self.maxiter} iterations") from None
        except FileNotFoundError as error:
            first = str(error).strip().splitlines()[0]
            raise EvaluationError(f"GPAW: {first} (PAW datasets searched in "
                                  f"{[str(p) for p in gpaw.setup_paths]})") from None

    def reference_energy(self, symbol: str, workdir: Path | None = None) -> float:
        """Energy per atom of the element's ASE reference crystal, an SCF (a vc-relax when
        the campaign relaxes); GPAW's log in ``workdir``."""
        try:
            atoms = bulk(symbol)
        except (ValueError, KeyError, RuntimeError):
            raise EvaluationError(f"no reference crystal for {symbol} in ASE, so no "
                                  "formation energy") from None
        txt = None
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            txt = str(workdir / "gpaw.txt")
        calculation = "scf" if self.calculation == "scf" else "vc-relax"
        atoms, converged, _ = self.relax(atoms, None, txt, calculation)
        if not converged:
            raise EvaluationError(f"the {symbol} reference did not converge ({workdir})")
        return float(atoms.get_potential_energy()) / len(atoms)

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        missing = {el.symbol for el in structure.composition} - self.supported_elements
        if missing:
            raise EvaluationError(f"GPAW's standard PAW datasets have no "
                                  f"{', '.join(sorted(missing))}")
        start = time.perf_counter()
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.set_initial_charges(None)
        atoms.set_initial_magnetic_moments(None)  # spin-paired
        from threadpoolctl import threadpool_limits

        from matforge.engine.settings import get_settings

        _import_gpaw()
        with threadpool_limits(limits=get_settings().threads_per_process(), user_api="blas"):
            atoms, converged, steps = self.relax(atoms, str(workdir / "relax.log"),
                                                 str(workdir / "gpaw.txt"))
            directory = workdir.parent
            return relaxed_result(
                atoms,
                lambda symbols: shared_references(
                    directory, self.name, self.parameters(), symbols,
                    lambda s: self.reference_energy(s, directory / "gpaw-references" / s)),
                converged, steps, start, "GPAW", self.implemented_properties)

    @classmethod
    def conformance_structure(cls) -> Structure:
        """Zinc-blende SiC (two atoms): a semiconductor whose elements have crystals (diamond
        Si and C) for references."""
        fcc = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        return Structure(Lattice(4.36 * fcc), ["Si", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])
