"""VASP: SCF, relax and vc-relax through ASE's input writer and pymatgen's ``vasprun.xml`` reader.

The template writes INCAR, KPOINTS, POSCAR and POTCAR with ASE's
:class:`~ase.calculators.vasp.create_input.GenerateVaspInput` (the input half of
ASE's ``Vasp`` calculator) and reads ``vasprun.xml`` with
:class:`pymatgen.io.vasp.Vasprun`, whose ``converged_electronic`` and
``converged_ionic`` say whether the last SCF reached EDIFF within NELM steps and
whether a relaxation stopped before NSW. The profile (``MATFORGE_PROFILES``,
entry ``vasp``) gives the executable (``vasp_std`` by default), the MPI launcher
and ranks, and the POTCAR root in ``data_dir`` (what ASE calls ``VASP_PP_PATH``,
holding ``potpaw_PBE/Si/POTCAR``; the ``VASP_PP_PATH`` variable where the profile
names none).

ASE writes the atoms grouped by species, in the order each species first occurs
(``ase-sort.dat`` keeps the permutation); forces and the relaxed structure come
back in the order of the structure that was given.

Formation energies are taken against the elements' ground states (ASE's reference
lattices) computed once with the same settings (a vc-relax, or an SCF when the
campaign only runs SCF) and kept in ``vasp-references.json`` beside the
evaluations' directories, so every evaluation of a campaign shares them.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.units import GPa
from pymatgen.core import Element, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.base import EvaluationError, EvaluationResult, Resources
from matforge.adapters.espresso import kpoints
from matforge.adapters.fileio import FileIOEvaluator, Profile

# ase.calculators.vasp and pymatgen.io.vasp take seconds to import, so they are imported
# where they are used: listing the adapters stays quick.

CALCULATIONS: dict[str, tuple[int, int]] = {"scf": (-1, 2), "relax": (2, 2), "vc-relax": (2, 3)}
"""IBRION and ISIF of each calculation (conjugate gradients for both relaxations)."""

XC_POTCARS: dict[str, str] = {"lda": "lda", "pbe": "pbe", "pbesol": "pbe", "rpbe": "pbe",
                              "scan": "pbe", "r2scan": "pbe"}
"""The POTCAR family each functional is run with (VASP ships PBE POTCARs for meta-GGAs)."""

SMEARING: dict[str, int] = {"gaussian": 0, "mp": 1, "fermi": -1, "tetrahedron": -5}
"""ISMEAR of each smearing."""

SETUP_SETS = ("minimal", "recommended", "materialsproject", "gw")
"""ASE's named POTCAR choices (``ase.calculators.vasp.setups``)."""

ASE_KEYWORDS = frozenset({"CHARGE", "CUSTOM", "GAMMA", "IGNORE_CONSTRAINTS", "KPTS",
                          "KPTS_NINTERSECTIONS", "NET_CHARGE", "PP", "PP_VERSION", "RECIPROCAL",
                          "SETUPS", "TXT", "XC"})
"""Keywords of ASE's writer that are not INCAR tags."""

MANAGED = frozenset({"ENCUT", "EDIFF", "EDIFFG", "NELM", "NSW", "IBRION", "ISIF", "ISMEAR",
                     "SIGMA", "ISPIN", "GGA", "METAGGA", "KSPACING", "KGAMMA", "IMAGES",
                     "LDAU_LUJ", "MAGMOM"})
"""INCAR tags set from the adapter's parameters (or by the structure), never through ``incar``."""

BASE_INCAR: dict[str, Any] = {"prec": "Accurate", "lreal": False, "lwave": False,
                              "lcharg": False}
"""Defaults ``incar`` may override: exact projectors, and no wavefunction or charge files."""

OUTPUTS = ("vasprun.xml", "OUTCAR", "OSZICAR", "CONTCAR")
VASPRUN = "vasprun.xml"
SORT_FILE = "ase-sort.dat"


def _formula(symbols) -> str:
    return "".join(f"{e}{n}" for e, n in Counter(symbols).items())


def potcar_folder(xc: str, pp_version: str | None = None) -> str:
    """The POTCAR set for functional ``xc`` under the POTCAR root, named as ASE names it:
    ``potpaw_PBE`` (``potpaw_PBE.<version>``) or, for LDA, ``potpaw`` (``potpaw_LDA.<version>``)."""
    if XC_POTCARS[xc] == "pbe":
        return f"potpaw_PBE.{pp_version}" if pp_version else "potpaw_PBE"
    return f"potpaw_LDA.{pp_version}" if pp_version else "potpaw"


def potcar_names(symbols: list[str], setups: str | dict[str, str]) -> dict[str, str]:
    """The POTCAR of each element, as its folder name (``Li_sv``), from ``setups``: one of
    ASE's sets (``minimal``, ``recommended``, ``materialsproject``, ``gw``) or
    ``{element: suffix}`` with an optional ``base`` set under it."""
    from ase.calculators.vasp.create_input import get_pp_setup

    table, _ = get_pp_setup(setups)
    return {s: s + table.get(s, "") for s in symbols}


def find_potcars(root: str | Path, symbols: list[str], xc: str, setups: str | dict[str, str],
                 pp_version: str | None = None) -> dict[str, Path]:
    """The POTCAR file of each element under ``root``; raises EvaluationError naming the
    element, the POTCAR it needs and the directory it was looked for in."""
    directory = Path(root) / potcar_folder(xc, pp_version)
    found = {}
    for symbol, name in potcar_names(symbols, setups).items():
        candidates = [directory / name / "POTCAR", directory / name / "POTCAR.Z"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise EvaluationError(f"no POTCAR for {symbol} ({name}) in {directory}: "
                                  f"{candidates[0]} does not exist")
        found[symbol] = path
    return found


def _check_setups(setups: Any) -> str | dict[str, str]:
    if isinstance(setups, str):
        if setups.lower() not in SETUP_SETS:
            raise ValueError(f"setups must be one of {list(SETUP_SETS)} or a mapping "
                             f"{{element: suffix}}, got {setups!r}")
        return setups.lower()
    if not isinstance(setups, dict):
        raise ValueError(f"setups must be a string or a mapping, got {type(setups).__name__}")
    checked = {}
    for key, suffix in setups.items():
        if key == "base":
            checked[key] = _check_setups(suffix)
            if not isinstance(checked[key], str):
                raise ValueError(f"setups: 'base' must name a set, got {suffix!r}")
            continue
        if not (isinstance(key, str) and Element.is_valid_symbol(key)):
            raise ValueError(f"setups: {key!r} is not an element symbol (or 'base')")
        if not (isinstance(suffix, str) and re.fullmatch(r"[A-Za-z0-9_.]*", suffix)):
            raise ValueError(f"setups: the suffix of {key} must be like '_sv' or '', "
                             f"got {suffix!r}")
        checked[key] = suffix
    return checked


def _check_incar(incar: Any) -> dict[str, Any]:
    if not isinstance(incar, dict):
        raise ValueError(f"incar must be a mapping of INCAR tags, got {type(incar).__name__}")
    checked = {}
    for key, value in incar.items():
        tag = key.upper() if isinstance(key, str) else key
        if not (isinstance(tag, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*", tag)):
            raise ValueError(f"incar: {key!r} is not an INCAR tag")
        if tag in MANAGED or tag in ASE_KEYWORDS:
            raise ValueError(f"incar: {tag} is set from the adapter's parameters "
                             "(or is not an INCAR tag); use those")
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, (str, bool, int, float)) for v in items):
            raise ValueError(f"incar: {tag} must be a string, number, bool or a list of "
                             f"numbers, got {value!r}")
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise ValueError(f"incar: {tag} must be finite, got {value!r}")
        if isinstance(value, list) and len({type(v) for v in items}) > 1:
            raise ValueError(f"incar: {tag} mixes types, got {value!r}")
        checked[tag] = value
    return checked


class VaspEvaluator(FileIOEvaluator):
    """VASP plane-wave PAW DFT.

    Parameters
    ----------
    xc : ``pbe`` (default), ``pbesol``, ``rpbe``, ``lda``, ``scan`` or ``r2scan``; LDA runs
        with the LDA POTCARs, the others with the PBE ones
    calculation : ``scf`` (IBRION=-1, NSW=0), ``relax`` (positions: IBRION=2, ISIF=2) or
        ``vc-relax`` (positions and cell: IBRION=2, ISIF=3)
    encut : plane-wave cutoff, eV (raise it by about 30 % over the POTCARs' ENMAX for
        vc-relax, against Pulay stress)
    kspacing : largest k-point spacing, Å⁻¹ (2π included, like VASP's KSPACING); a
        Γ-centred mesh is written to KPOINTS
    smearing, sigma : ``gaussian`` (ISMEAR=0), ``mp`` (1), ``fermi`` (-1) or
        ``tetrahedron`` (-5, Blöchl), and the width in eV
    ediff : SCF convergence, eV
    ediffg : relaxation stop: below 0 the largest force in eV/Å, above 0 the energy
        change in eV
    nelm, nsw : most SCF steps, most ionic steps
    setups : POTCAR choice per element: ``recommended`` (VASP's recommendation, the
        default), ``minimal``, ``materialsproject``, ``gw``, or ``{element: suffix}``
        (``{"base": "recommended", "Li": "_sv"}``)
    pp_version : POTCAR release, e.g. ``"54"`` or ``"64"`` (``potpaw_PBE.64``); None
        for the unversioned ``potpaw_PBE``
    spin_polarized : ISPIN=2, starting from the structure's ``magmom`` site property
        where it has one (VASP's 1 μB per atom otherwise)
    incar : further INCAR tags (``{"ALGO": "Fast", "LASPH": True}``); they override
        PREC=Accurate, LREAL=.FALSE., LWAVE=.FALSE. and LCHARG=.FALSE.
    """

    name = "vasp"
    implemented_properties: ClassVar[dict[str, str]] = {
        "energy": "eV",
        "energy_per_atom": "eV/atom",
        "formation_energy_per_atom": "eV/atom",
        "volume_per_atom": "Å^3/atom",
        "pressure": "GPa",
    }
    resources = Resources(cores=1, memory_gb=4.0, walltime=7200.0)
    default_profile = Profile(command=["vasp_std"])
    conformance_unconverged: ClassVar[dict] = {"nelm": 8}
    output_file = "vasp.out"

    def __init__(
        self,
        xc: str = "pbe",
        calculation: str = "scf",
        encut: float = 520.0,
        kspacing: float = 0.25,
        smearing: str = "gaussian",
        sigma: float = 0.05,
        ediff: float = 1e-6,
        ediffg: float = -0.02,
        nelm: int = 100,
        nsw: int = 99,
        setups: str | dict[str, str] = "recommended",
        pp_version: str | None = None,
        spin_polarized: bool = False,
        incar: dict[str, Any] | None = None,
    ):
        if xc not in XC_POTCARS:
            raise ValueError(f"xc must be one of {sorted(XC_POTCARS)}, got {xc!r}")
        if calculation not in CALCULATIONS:
            raise ValueError(f"calculation must be one of {tuple(CALCULATIONS)}, "
                             f"got {calculation!r}")
        if smearing not in SMEARING:
            raise ValueError(f"smearing must be one of {sorted(SMEARING)}, got {smearing!r}")
        for label, value in (("encut", encut), ("kspacing", kspacing), ("sigma", sigma),
                             ("ediff", ediff)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a finite number > 0, got {value!r}")
        if not (isinstance(ediffg, (int, float)) and math.isfinite(ediffg) and ediffg != 0):
            raise ValueError(f"ediffg must be non-zero (below 0: force in eV/Å, above 0: "
                             f"energy in eV), got {ediffg!r}")
        for label, value in (("nelm", nelm), ("nsw", nsw)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be an integer >= 1, got {value!r}")
        if pp_version is not None and not (isinstance(pp_version, str)
                                           and re.fullmatch(r"[A-Za-z0-9_]+", pp_version)):
            raise ValueError(f"pp_version must be like '54' or '64', got {pp_version!r}")
        self.xc, self.calculation = xc, calculation
        self.encut, self.kspacing = float(encut), float(kspacing)
        self.smearing, self.sigma = smearing, float(sigma)
        self.ediff, self.ediffg = float(ediff), float(ediffg)
        self.nelm, self.nsw = nelm, nsw
        self.setups = _check_setups(setups)
        self.pp_version = pp_version
        self.spin_polarized = bool(spin_polarized)
        self.incar = _check_incar(incar or {})

    # the template ------------------------------------------------------------------

    def settings(self, calculation: str) -> dict[str, Any]:
        """Keywords of ASE's ``GenerateVaspInput`` for ``calculation`` (no k-points or POTCARs)."""
        ibrion, isif = CALCULATIONS[calculation]
        settings: dict[str, Any] = {
            **BASE_INCAR,
            **{tag.lower(): value for tag, value in self.incar.items()},
            "xc": self.xc, "encut": self.encut, "ediff": self.ediff, "nelm": self.nelm,
            "ismear": SMEARING[self.smearing], "sigma": self.sigma,
            "ibrion": ibrion, "isif": isif, "ispin": 2 if self.spin_polarized else 1,
        }
        if calculation == "scf":
            settings["nsw"] = 0
        else:
            settings.update(nsw=self.nsw, ediffg=self.ediffg)
        return settings

    def potcar_root(self, profile: Profile) -> Path:
        """The POTCAR root: the profile's ``data_dir``, else ``$VASP_PP_PATH``."""
        root = profile.data_dir or os.environ.get("VASP_PP_PATH")
        if not root:
            raise EvaluationError("no POTCAR directory: set data_dir in the 'vasp' profile "
                                  "(MATFORGE_PROFILES) or the VASP_PP_PATH variable")
        if not Path(root).is_dir():
            raise EvaluationError(f"the POTCAR directory {root} does not exist")
        return Path(root)

    def _write(self, atoms: Atoms, workdir: Path, calculation: str, profile: Profile) -> None:
        from ase.calculators.vasp.create_input import GenerateVaspInput

        symbols = list(dict.fromkeys(atoms.get_chemical_symbols()))
        root = self.potcar_root(profile)
        find_potcars(root, symbols, self.xc, self.setups, self.pp_version)
        # a stale vasprun.xml must not pass for this run's if VASP dies before writing one
        for name in (*OUTPUTS, self.output_file):
            (workdir / name).unlink(missing_ok=True)
        writer = GenerateVaspInput()
        writer.set(**self.settings(calculation),
                   pp=str(root / potcar_folder(self.xc, self.pp_version)),
                   setups=self.setups, kpts=kpoints(atoms.cell.array, self.kspacing),
                   gamma=True)
        try:
            with warnings.catch_warnings():
                # ASE expects the set by its alias ("LDA"); this path names it exactly
                warnings.filterwarnings("ignore", message="XC is set to LDA, but PP is set to")
                writer.initialize(atoms)
                writer.write_input(atoms, str(workdir))
        except (RuntimeError, ValueError, OSError) as error:
            raise EvaluationError(f"cannot write the VASP inputs in {workdir}: {error}") from None

    def write_inputs(self, structure: Structure, workdir: Path, profile: Profile) -> None:
        if not structure.is_ordered:
            raise EvaluationError("VASP needs an ordered structure (one element per site), "
                                  f"got {structure.composition.formula}")
        self._write(AseAtomsAdaptor.get_atoms(structure), workdir, self.calculation, profile)

    def arguments(self) -> list[str]:
        return []

    def finished(self, workdir: Path) -> bool:
        # an MPI launcher may exit non-zero after VASP has written a complete vasprun.xml
        path = workdir / VASPRUN
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - 256))
                return b"</modeling>" in handle.read()
        except OSError:
            return False

    def _read(self, symbols: list[str], workdir: Path):
        """The parsed run, the sort permutation (input index of each VASP atom) and the
        inverse (VASP index of each input atom)."""
        from pymatgen.io.vasp import Vasprun

        path = workdir / VASPRUN
        if not path.is_file():
            raise EvaluationError(f"VASP wrote no {VASPRUN} in {workdir}: it stopped before "
                                  f"its first step (see {self.output_file})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence is reported in the result
                run = Vasprun(str(path), parse_dos=False, parse_eigen=False,
                              parse_projected_eigen=False, parse_potcar_file=False)
                steps = run.ionic_steps
        except Exception as error:
            raise EvaluationError(f"{path} is incomplete or unreadable, VASP did not finish: "
                                  f"{type(error).__name__}: {str(error)[:200]}") from None
        if not steps:
            raise EvaluationError(f"{path} holds no finished ionic step")
        try:
            table = np.loadtxt(workdir / SORT_FILE, dtype=int, ndmin=2)
        except (OSError, ValueError) as error:
            raise EvaluationError(f"cannot read {workdir / SORT_FILE}, written with the "
                                  f"inputs: {error}") from None
        sort, resort = table[:, 0], table[:, 1]
        expected = [symbols[i] for i in sort] if len(sort) == len(symbols) else None
        if list(run.atomic_symbols) != expected:
            raise EvaluationError(f"{path} is a run of {_formula(run.atomic_symbols)}, not of "
                                  f"the {_formula(symbols)} written to {workdir}")
        return run, sort, resort

    def read_outputs(self, structure: Structure, workdir: Path) -> EvaluationResult:
        """The result from ``vasprun.xml`` in ``workdir``, in the order of ``structure``,
        without the formation energy (which needs the elemental references)."""
        run, _, resort = self._read([site.specie.symbol for site in structure], workdir)
        steps = len(run.ionic_steps)
        if not run.converged_electronic:
            return EvaluationResult(converged=False, n_steps=steps)
        last = run.ionic_steps[-1]
        if last.get("stress") is None or last.get("forces") is None:
            raise EvaluationError(f"{workdir / VASPRUN} reports no forces or stress")
        energy = float(run.final_energy)
        forces = np.asarray(last["forces"], dtype=float)[resort]
        # VASP writes the stress in kbar with pressure positive; ASE's convention is the
        # opposite sign, in eV/Å^3, as a Voigt vector xx yy zz yz xz xy
        kbar = np.asarray(last["stress"], dtype=float)
        stress = (-0.1 * GPa * kbar).reshape(9)[[0, 4, 8, 5, 2, 1]]
        final = run.final_structure
        relaxed = Structure.from_sites([final[int(i)] for i in resort])
        n = len(structure)
        return EvaluationResult(
            energy=energy, energy_per_atom=energy / n, forces=forces.tolist(),
            stress=stress.tolist(), structure=json.loads(relaxed.to_json()),
            converged=bool(run.converged_ionic), n_steps=steps,
            properties={"volume_per_atom": float(relaxed.volume / n),
                        "pressure": float(np.trace(kbar) / 30.0)},  # kbar → GPa
        )

    def read_results(self, structure: Structure, workdir: Path) -> EvaluationResult:
        result = self.read_outputs(structure, workdir)
        if not result.converged:
            return result  # never accepted, so not worth a reference calculation
        symbols = [site.specie.symbol for site in structure]
        references = self.references(sorted(set(symbols)), workdir.parent)
        result.formation_energy_per_atom = (
            result.energy - sum(references[s] for s in symbols)) / len(symbols)
        return result

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
        structure = AseAtomsAdaptor.get_structure(atoms)
        result = self.read_outputs(structure, workdir)
        if not result.converged:
            raise EvaluationError(f"the {symbol} reference did not converge ({workdir})")
        return result.energy / len(structure)

    @classmethod
    def conformance_structure(cls) -> Structure:
        """Si2 with both atoms pushed off the diamond sites, so neither the forces nor the
        formation energy vanish by symmetry."""
        a = 2.734364
        return Structure(Lattice([[0, a, a], [a, 0, a], [a, a, 0]]), ["Si", "Si"],
                         [[0.78, 0.77, 0.73], [0.6, 0.3, 0.4]])
