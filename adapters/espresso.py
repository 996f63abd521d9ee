"""Quantum ESPRESSO (``pw.x``): SCF, relax and vc-relax through ASE's input/output code.

The template writes ``espresso.pwi`` with :func:`ase.io.espresso.write_espresso_in`
and reads ``espresso.pwo`` with :func:`ase.io.espresso.read_espresso_out`; the
profile (``MATFORGE_PROFILES``, entry ``qe``) gives the executable, the MPI
launcher and ranks and the pseudopotential directory (by default ``pw.x`` and
Debian's ``/usr/share/espresso/pseudo``). Pseudopotentials are chosen per element
from that directory by functional (``pz`` files for LDA, ``pbe`` for PBE,
non-relativistic first); a campaign may name them explicitly.

Formation energies are taken against the elements' ground states (ASE's
reference lattices) computed once with the same settings (a vc-relax, or an
SCF when the campaign only runs SCF) and kept in ``qe-references.json`` beside
the evaluations' directories, so every evaluation of a campaign shares them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.io.espresso import read_espresso_out, write_espresso_in
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.base import EvaluationError, EvaluationResult, Resources
from matforge.adapters.fileio import FileIOEvaluator, Profile

CALCULATIONS = ("scf", "relax", "vc-relax")
TAGS = {"lda": "pz", "pbe": "pbe"}


def choose_pseudopotential(directory: str | Path, element: str, xc: str) -> str:
    """The pseudopotential file for ``element`` and functional ``xc`` in ``directory``:
    ``<El>.<tag>-*.UPF`` (``pz`` for LDA, ``pbe`` for PBE), a non-relativistic one first,
    then by name. Raises EvaluationError naming what the directory has for the element."""
    directory = Path(directory)
    names = sorted(p.name for p in directory.glob(f"{element}.*") if p.suffix.lower() == ".upf")
    tag = TAGS[xc]
    pattern = re.compile(rf"^{element}\.(rel-)?{tag}[-.]", re.IGNORECASE)
    matches = sorted((n for n in names if pattern.match(n)), key=lambda n: ("rel-" in n, n))
    if not matches:
        have = ", ".join(names) or "none"
        raise EvaluationError(f"no {xc.upper()} pseudopotential for {element} in {directory} "
                              f"(it has: {have})")
    return matches[0]


def kpoints(cell: np.ndarray, spacing: float) -> tuple[int, int, int]:
    """A Monkhorst-Pack mesh with at most ``spacing`` Å⁻¹ (2π included) between points."""
    reciprocal = 2 * np.pi * np.linalg.inv(cell).T
    return tuple(max(1, math.ceil(np.linalg.norm(b) / spacing)) for b in reciprocal)


class EspressoEvaluator(FileIOEvaluator):
    """Quantum ESPRESSO plane-wave DFT.

    Parameters
    ----------
    xc : ``lda`` or ``pbe``; picks the pseudopotentials
    calculation : ``scf``, ``relax`` (positions) or ``vc-relax`` (positions and cell)
    ecutwfc, ecutrho : plane-wave cutoffs in Ry (``ecutrho`` defaults to 4 × ``ecutwfc``,
        8 × for ultrasoft and PAW files)
    kspacing : largest k-point spacing, Å⁻¹ (2π included)
    smearing, degauss : occupations for metals (``degauss`` in Ry); ``smearing: none``
        for insulators
    conv_thr : SCF convergence in Ry
    electron_maxstep, nstep : most SCF iterations, most ionic steps
    pseudopotentials : ``{element: file}`` overriding the automatic choice
    """

    name = "qe"
    implemented_properties: ClassVar[dict[str, str]] = {
        "energy": "eV",
        "energy_per_atom": "eV/atom",
        "formation_energy_per_atom": "eV/atom",
        "volume_per_atom": "Å^3/atom",
        "pressure": "GPa",
    }
    resources = Resources(cores=1, memory_gb=2.0, walltime=3600.0)
    default_profile = Profile(command=["pw.x"], data_dir="/usr/share/espresso/pseudo")
    conformance_unconverged: ClassVar[dict] = {"electron_maxstep": 1}
    output_file = "espresso.pwo"
    INPUT: ClassVar[str] = "espresso.pwi"

    def __init__(
        self,
        xc: str = "lda",
        calculation: str = "scf",
        ecutwfc: float = 30.0,
        ecutrho: float | None = None,
        kspacing: float = 0.3,
        smearing: str = "mv",
        degauss: float = 0.02,
        conv_thr: float = 1e-8,
        electron_maxstep: int = 100,
        nstep: int = 50,
        pseudopotentials: dict[str, str] | None = None,
    ):
        if xc not in TAGS:
            raise ValueError(f"xc must be one of {sorted(TAGS)}, got {xc!r}")
        if calculation not in CALCULATIONS:
            raise ValueError(f"calculation must be one of {CALCULATIONS}, got {calculation!r}")
        for label, value in (("ecutwfc", ecutwfc), ("kspacing", kspacing),
                             ("conv_thr", conv_thr), ("degauss", degauss)):
            if not value > 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        self.xc, self.calculation = xc, calculation
        self.ecutwfc = float(ecutwfc)
        self.ecutrho = None if ecutrho is None else float(ecutrho)
        self.kspacing, self.smearing, self.degauss = float(kspacing), smearing, float(degauss)
        self.conv_thr = float(conv_thr)
        self.electron_maxstep, self.nstep = int(electron_maxstep), int(nstep)
        self.pseudopotentials = dict(pseudopotentials or {})

    # the template ------------------------------------------------------------------

    def _pseudopotentials(self, symbols, profile: Profile) -> dict[str, str]:
        return {s: self.pseudopotentials.get(s) or choose_pseudopotential(profile.data_dir, s,
                                                                           self.xc)
                for s in sorted(set(symbols))}

    def input_data(self, calculation: str, profile: Profile, pseudos: dict[str, str]) -> dict:
        ultrasoft = any(re.search(r"rrkjus|van|paw", p, re.IGNORECASE) for p in pseudos.values())
        system: dict[str, Any] = {
            "ecutwfc": self.ecutwfc,
            "ecutrho": self.ecutrho or self.ecutwfc * (8 if ultrasoft else 4),
        }
        if self.smearing != "none":
            system.update(occupations="smearing", smearing=self.smearing, degauss=self.degauss)
        return {
            "control": {"calculation": calculation, "prefix": "pwscf", "outdir": "out",
                        "pseudo_dir": str(profile.data_dir), "tprnfor": True, "tstress": True,
                        "nstep": self.nstep, "disk_io": "low"},
            "system": system,
            "electrons": {"conv_thr": self.conv_thr, "electron_maxstep": self.electron_maxstep,
                          "mixing_beta": 0.4},
        }

    def _write(self, atoms: Atoms, workdir: Path, calculation: str, profile: Profile) -> None:
        pseudos = self._pseudopotentials(atoms.get_chemical_symbols(), profile)
        with open(workdir / self.INPUT, "w") as handle:
            write_espresso_in(handle, atoms, input_data=self.input_data(calculation, profile,
                                                                        pseudos),
                              pseudopotentials=pseudos,
                              kpts=kpoints(atoms.cell.array, self.kspacing))

    def write_inputs(self, structure: Structure, workdir: Path, profile: Profile) -> None:
        self._write(AseAtomsAdaptor.get_atoms(structure), workdir, self.calculation, profile)

    def arguments(self) -> list[str]:
        return ["-in", self.INPUT]

    def finished(self, workdir: Path) -> bool:
        # pw.x exits with 2 after an SCF that did not converge; read_results reports it
        return "JOB DONE" in (workdir / self.output_file).read_text(errors="replace")

    def _read(self, workdir: Path) -> tuple[Atoms | None, bool, int]:
        text = (workdir / self.output_file).read_text(errors="replace")
        if "convergence NOT achieved" in text:
            return None, False, text.count("total energy") // 2
        try:
            with open(workdir / self.output_file) as handle:
                images = list(read_espresso_out(handle, index=slice(None)))
        except Exception as error:
            raise EvaluationError(f"cannot read {self.output_file}: {error}") from None
        if not images:
            raise EvaluationError(f"{self.output_file} holds no finished SCF")
        relaxing = self.calculation != "scf"
        converged = "JOB DONE" in text and not (
            relaxing and "The maximum number of steps has been reached" in text)
        return images[-1], converged, len(images)

    def read_results(self, structure: Structure, workdir: Path) -> EvaluationResult:
        atoms, converged, steps = self._read(workdir)
        if atoms is None:
            return EvaluationResult(converged=False, n_steps=steps)
        energy = float(atoms.get_potential_energy())
        n = len(atoms)
        relaxed = AseAtomsAdaptor.get_structure(atoms)
        references = self.references(sorted(set(atoms.get_chemical_symbols())), workdir.parent)
        formation = (energy - sum(references[s] for s in atoms.get_chemical_symbols())) / n
        stress = atoms.get_stress(voigt=True)
        return EvaluationResult(
            energy=energy, energy_per_atom=energy / n, formation_energy_per_atom=formation,
            forces=atoms.get_forces().tolist(), stress=stress.tolist(),
            structure=json.loads(relaxed.to_json()), converged=converged, n_steps=steps,
            properties={"volume_per_atom": float(atoms.get_volume() / n),
                        "pressure": float(-stress[:3].mean() * 160.21766208)},  # eV/Å^3 → GPa
        )

    # elemental references ------------------------------------------------------------

    def reference_energy(self, symbol: str, workdir: Path) -> float:
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            atoms = bulk(symbol)
        except (ValueError, KeyError):
            raise EvaluationError(f"no reference lattice for {symbol} in ASE") from None
        calculation = "scf" if self.calculation == "scf" else "vc-relax"
        profile = self.profile()
        self._write(atoms, workdir, calculation, profile)
        self.run(workdir, profile)
        relaxed, converged, _ = self._read(workdir)
        if relaxed is None or not converged:
            raise EvaluationError(f"the {symbol} reference did not converge ({workdir})")
        return float(relaxed.get_potential_energy()) / len(relaxed)

    @classmethod
    def conformance_structure(cls) -> Structure:
        return Structure(Lattice.cubic(4.05), ["Al"] * 4,
                         [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])

