"""Universal machine-learned interatomic potentials: relaxation and molecular dynamics.

``MLPotentialEvaluator(model="chgnet", task="relax")`` relaxes positions and cell
with the potential (as :class:`~matforge.adapters.ase_calc.ASECalculatorEvaluator`
does with EMT) and reports energies, forces, stress and the formation energy
against elemental references relaxed with the same potential. The model is any
name :func:`~matforge.adapters.calculators.make_calculator` knows: ``chgnet``
(the default), ``7net-0``, ``7net-l3i5``, ``7net-mf-0``, or ``emt``.

``task="md"`` then runs molecular dynamics through ASE on a supercell of the
relaxed structure (or of the structure as given, ``relax_first=False``):

- ``ensemble="nvt"``: Langevin dynamics (:class:`ase.md.langevin.Langevin`), seeded;
- ``ensemble="npt"``: Berendsen NPT (:class:`ase.md.nptberendsen.NPTBerendsen`),
  isotropic: it needs only the pressure from the calculator's stress and cannot
  go unstable the way an extended-system barostat can on a noisy ML stress. It
  gives the right mean volume but damps volume fluctuations, so it suits thermal
  expansion, not compressibility from fluctuations. The compressibility it needs
  is measured first from the stress at ±1 % volume;
- ``ensemble="nve"``: velocity Verlet, for checking energy conservation.

NVE and NPT hold the centre of mass still (:class:`ase.constraints.FixCom`), so their
temperature counts 3N - 3 degrees of freedom; Langevin thermalises all 3N.

Initial velocities are Maxwell–Boltzmann at the target temperature from
``numpy.random.default_rng([seed, i])`` (run ``i`` of the temperatures), which also
drives the Langevin noise, so a run repeats exactly on the same hardware (CUDA
kernels are not bitwise reproducible). The first ``equilibration`` fraction of the
steps is discarded; the rest, sampled every ``sample_interval`` steps, is the
production part the properties come from (:mod:`matforge.engine.materials.md`):

- ``msd`` (Å^2): mean-square displacement at a lag of half the production time,
  averaged over time origins and atoms, from unwrapped positions with the centre of
  mass drift removed; ``diffusivity`` (cm^2/s): the Einstein relation
  ``D = slope / 6`` of MSD(t) fitted from 10 % to 50 % of the production time.
  ``mobile_species`` adds ``msd_<El>`` and ``diffusivity_<El>`` per species.
- ``intact`` (1.0 or 0.0): :func:`~matforge.engine.materials.md.assess_integrity` —
  Lindemann index of the neighbour pairs below 0.1, AND ≥ 90 % of atoms keep their
  neighbour count (within 1.2 × their relaxed first-shell distance), AND no atom
  moves farther than its first-shell distance from its site. ``mobile_species`` are
  left out of this judgement: the host framework must hold while they diffuse.
  ``lindemann_index``, ``coordination_preserved`` and ``max_displacement`` are
  reported too.
- ``thermal_expansion`` (1/K): volumetric, ``(V(T2) - V(T1)) / (V(T1) (T2 - T1))``
  from the mean NPT volumes (a least-squares slope for more than two temperatures);
  only with ``ensemble="npt"`` and a list of temperatures.
- diagnostics: ``temperature_mean`` and ``temperature_std`` (K), ``energy_drift``
  (eV/atom/ps, slope of the total energy; integration error in NVE, a run still
  equilibrating or transforming in NVT/NPT), ``md_volume_per_atom`` (Å^3/atom).

With several temperatures the trajectory properties are those of the hottest run,
``intact`` holds only if every run stayed intact, and the integrity measures are
the worst over the runs. Each run leaves ``md_<T>K.traj`` and ``md_<T>K.log`` in
the working directory.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.data import chemical_symbols
from ase.io import Trajectory
from ase.md.langevin import Langevin
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters import calculators
from matforge.adapters.ase_calc import ASECalculatorEvaluator
from matforge.adapters.base import EvaluationError, EvaluationResult, Resources
from matforge.engine.materials import md

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ASE < 3.29
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms, temperature_K, *, rng=None):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

TASKS = ("relax", "md")
ENSEMBLES = ("nvt", "npt", "nve")
MIN_PRODUCTION_FRAMES = 10
MAX_SUPERCELL_ATOMS = 5000
"""Largest MD cell: the integrity analysis compares all atom pairs."""

RELAX_PROPERTIES: dict[str, str] = dict(ASECalculatorEvaluator.implemented_properties)
MD_PROPERTIES: dict[str, str] = {
    "msd": "Å^2",
    "diffusivity": "cm^2/s",
    "md_volume_per_atom": "Å^3/atom",
    "temperature_mean": "K",
    "temperature_std": "K",
    "energy_drift": "eV/atom/ps",
    "lindemann_index": "dimensionless",
    "coordination_preserved": "fraction of atoms",
    "max_displacement": "first-shell distances",
    "intact": "1 if intact, else 0",
}
EXPANSION_PROPERTIES: dict[str, str] = {"thermal_expansion": "1/K"}


def supercell_repeats(cell, n_atoms: int, min_atoms: int = 0,
                      min_length: float = 0.0) -> tuple[int, int, int]:
    """Repeats of ``cell`` (array of shape (3, 3)) along its three vectors for a supercell
    whose every width (distance between opposite faces) is at least ``min_length`` Å and
    which holds at least ``min_atoms`` atoms; further repeats go to the narrowest width."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    widths = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    repeats = [max(1, math.ceil(min_length / w - 1e-9)) for w in widths]
    while n_atoms * math.prod(repeats) < min_atoms:
        narrowest = int(np.argmin([r * w for r, w in zip(repeats, widths)]))
        repeats[narrowest] += 1
    return tuple(repeats)


def _number(label: str, value, low: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or (value <= low if strict else value < low):
        relation = ">" if strict else ">="
        raise ValueError(f"{label} must be a finite number {relation} {low:g}, got {value!r}")
    return float(value)


def _integer(label: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{label} must be a whole number >= {low}, got {value!r}")
    return int(value)


class MLPotentialEvaluator(ASECalculatorEvaluator):
    """Relaxation and molecular dynamics with a universal ML potential (module docstring).

    Parameters
    ----------
    model : a :func:`~matforge.adapters.calculators.make_calculator` name (``chgnet``)
    task : ``relax``, or ``md`` (relax, then molecular dynamics)
    fmax, max_steps, relax_cell : the relaxation (eV/Å, optimizer steps, cell too)
    device : ``cpu``, ``cuda`` or ``cuda:N``; None: CUDA when torch sees it, else the CPU
    ensemble : ``nvt`` (Langevin), ``npt`` (Berendsen) or ``nve`` (velocity Verlet)
    temperature : K; a list of temperatures (``npt`` only) adds ``thermal_expansion``
    steps : MD steps per temperature, the equilibration included
    timestep : fs
    equilibration : fraction of ``steps`` discarded before the production part
    sample_interval : steps between recorded frames
    friction : Langevin friction, 1/fs
    taut, taup : Berendsen temperature and pressure coupling times, fs
    pressure : NPT target pressure, GPa
    supercell_atoms, supercell_length : the MD cell repeats the structure until it holds
        this many atoms and is this many Å wide in every direction
    relax_first : start the MD from the relaxed structure (else from the one given; the
        relaxation's energies are reported either way)
    mobile_species : elements whose ``msd_<El>`` and ``diffusivity_<El>`` are reported
        and which the ``intact`` verdict leaves out
    seed : seeds the initial velocities and the Langevin noise
    """

    name = "mlip"
    implemented_properties: ClassVar[dict[str, str]] = {
        **RELAX_PROPERTIES, **MD_PROPERTIES, **EXPANSION_PROPERTIES}
    supported_elements: ClassVar[frozenset[str] | None] = None  # the model's; see __init__
    resources = Resources(cores=1, memory_gb=4.0, walltime=4 * 3600.0)
    conformance_unconverged: ClassVar[dict] = {"max_steps": 1}

    def __init__(
        self,
        model: str = "chgnet",
        task: str = "relax",
        fmax: float = 0.05,
        max_steps: int = 300,
        relax_cell: bool = True,
        device: str | None = None,
        ensemble: str = "nvt",
        temperature: float | list[float] = 300.0,
        steps: int = 2000,
        timestep: float = 2.0,
        equilibration: float = 0.2,
        sample_interval: int = 5,
        friction: float = 0.01,
        taut: float = 100.0,
        taup: float = 500.0,
        pressure: float = 0.0,
        supercell_atoms: int = 64,
        supercell_length: float = 0.0,
        relax_first: bool = True,
        mobile_species: list[str] | None = None,
        seed: int = 0,
    ):
        super().__init__(fmax=fmax, max_steps=max_steps, relax_cell=relax_cell)
        if model not in calculators.CALCULATORS:
            raise ValueError(f"model must be one of {', '.join(calculators.calculator_names())}"
                             f", got {model!r}")
        spec = calculators.CALCULATORS[model]
        if not calculators.is_installed(model):
            raise ValueError(f"model {model!r} needs the {spec.package!r} package, which is "
                             f"not installed: pip install 'matforge[{spec.extra}]'")
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}")
        if device is not None and not isinstance(device, str):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {device!r}")
        self.model, self.task, self.device, self.ensemble = model, task, device, ensemble
        self.supported_elements = spec.elements

        temperatures = temperature if isinstance(temperature, (list, tuple)) else [temperature]
        temperatures = tuple(_number("temperature", t) for t in temperatures)
        if not temperatures:
            raise ValueError("temperature must be a number of K or a non-empty list of them")
        if len(set(temperatures)) != len(temperatures):
            raise ValueError(f"temperature lists a value twice: {list(temperatures)}")
        if len(temperatures) > 1 and ensemble != "npt":
            raise ValueError(f"a list of temperatures measures the volume change, which needs "
                             f"ensemble 'npt', got ensemble {ensemble!r}")
        self.temperature = temperatures if isinstance(temperature, (list, tuple)) \
            else temperatures[0]
        self.steps = _integer("steps", steps, 1)
        self.timestep = _number("timestep", timestep)
        self.equilibration = _number("equilibration", equilibration, 0.0, strict=False)
        if self.equilibration >= 1:
            raise ValueError(f"equilibration must be a fraction of steps below 1, "
                             f"got {equilibration!r}")
        self.sample_interval = _integer("sample_interval", sample_interval, 1)
        frames = self._production_frames()
        if task == "md" and frames < MIN_PRODUCTION_FRAMES:
            raise ValueError(f"steps={steps}, equilibration={equilibration} and sample_interval="
                             f"{sample_interval} leave {frames} production frames; at least "
                             f"{MIN_PRODUCTION_FRAMES} are needed")
        self.friction = _number("friction", friction)
        self.taut = _number("taut", taut)
        self.taup = _number("taup", taup)
        self.pressure = _number("pressure", pressure, -math.inf)
        self.supercell_atoms = _integer("supercell_atoms", supercell_atoms, 0)
        if self.supercell_atoms > MAX_SUPERCELL_ATOMS:
            raise ValueError(f"supercell_atoms must be <= {MAX_SUPERCELL_ATOMS}, "
                             f"got {supercell_atoms}")
        self.supercell_length = _number("supercell_length", supercell_length, 0.0, strict=False)
        if not isinstance(relax_first, bool):
            raise ValueError(f"relax_first must be true or false, got {relax_first!r}")
        self.relax_first = relax_first
        species = [] if mobile_species is None else mobile_species
        if isinstance(species, str) or not isinstance(species, (list, tuple)) or any(
                s not in chemical_symbols[1:] for s in species):
            raise ValueError(f"mobile_species must be a list of element symbols, "
                             f"got {mobile_species!r}")
        self.mobile_species = tuple(sorted(set(species)))
        self.seed = _integer("seed", seed, 0)

        declared = dict(RELAX_PROPERTIES)
        if task == "md":
            declared.update(MD_PROPERTIES)
            if len(temperatures) > 1:
                declared.update(EXPANSION_PROPERTIES)
            for symbol in self.mobile_species:
                declared[f"msd_{symbol}"] = MD_PROPERTIES["msd"]
                declared[f"diffusivity_{symbol}"] = MD_PROPERTIES["diffusivity"]
        self.implemented_properties = declared  # this instance's, over the class's union

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The MD temperatures in K, as a tuple."""
        t = self.temperature
        return tuple(t) if isinstance(t, tuple) else (t,)

    def _production_frames(self) -> int:
        first = math.ceil(round(self.equilibration * self.steps) / self.sample_interval)
        return self.steps // self.sample_interval - first + 1

    def make_calculator(self) -> Calculator:
        return calculators.make_calculator(self.model, self.device)

    # the evaluation ---------------------------------------------------------------------

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        start = time.perf_counter()
        workdir = Path(workdir)
        elements = {el.symbol for el in structure.composition}
        if self.supported_elements is not None:
            missing = elements - self.supported_elements
            if missing:
                raise EvaluationError(f"model {self.model!r} has no parameters for "
                                      f"{', '.join(sorted(missing))}")
        absent = set(self.mobile_species) - elements
        if self.task == "md" and absent:
            raise EvaluationError(f"mobile_species {', '.join(sorted(absent))} not in "
                                  f"{structure.composition.reduced_formula}")
        try:
            result = super().evaluate(structure, workdir)
        except EvaluationError:
            raise
        except Exception as error:  # a model's own failure, e.g. an element it lacks
            raise EvaluationError(f"model {self.model!r} failed: {type(error).__name__}: "
                                  f"{error}") from error
        if self.task == "relax":
            return result

        initial = result.relaxed_structure() if self.relax_first else structure
        atoms = AseAtomsAdaptor.get_atoms(initial)
        repeats = supercell_repeats(atoms.cell.array, len(atoms), self.supercell_atoms,
                                    self.supercell_length)
        if len(atoms) * math.prod(repeats) > MAX_SUPERCELL_ATOMS:
            raise EvaluationError(f"the MD supercell {repeats} would hold "
                                  f"{len(atoms) * math.prod(repeats)} atoms, more than "
                                  f"{MAX_SUPERCELL_ATOMS}")
        supercell = atoms.repeat(repeats)
        compressibility = (self._compressibility(atoms) if self.ensemble == "npt" else None)
        try:
            runs = [self.run_md(supercell, t, i, workdir, compressibility)
                    for i, t in enumerate(self.temperatures)]
        except EvaluationError:
            raise
        except Exception as error:
            raise EvaluationError(f"MD with model {self.model!r} failed: "
                                  f"{type(error).__name__}: {error}") from error
        properties = {**result.properties, **self._md_properties(runs)}
        return result.model_copy(update={
            "properties": properties,
            "n_steps": result.n_steps + self.steps * len(runs),
            "wall_time": time.perf_counter() - start,
        })

    def _compressibility(self, atoms: Atoms) -> float:
        """Compressibility, Å^3/eV, for the Berendsen barostat: from the pressure at ±1 %
        volume, bounded to bulk moduli of 1–1000 GPa (a rate, not a result)."""
        pressures = []
        for strain in (0.01, -0.01):
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array * (1 + strain) ** (1 / 3), scale_atoms=True)
            strained.calc = self.make_calculator()
            pressures.append(-np.trace(strained.get_stress(voigt=False)) / 3)
        bulk_modulus = -(pressures[0] - pressures[1]) / 0.02
        if not math.isfinite(bulk_modulus):
            bulk_modulus = 100 * units.GPa
        bulk_modulus = min(max(bulk_modulus, 1 * units.GPa), 1000 * units.GPa)
        return 1.0 / bulk_modulus

    def run_md(self, supercell: Atoms, temperature: float, index: int, workdir: Path,
               compressibility: float | None = None) -> dict[str, np.ndarray]:
        """Run one MD at ``temperature`` (K) from ``supercell``; return its recorded frames.

        Returns
        -------
        dict of arrays: ``step`` (n_frames,), ``scaled`` fractional positions unwrapped
        (n_frames, n_atoms, 3), ``cell`` (n_frames, 3, 3), ``energy`` and ``kinetic``
        (n_frames,) in eV, ``temperature`` (n_frames,) in K, ``masses`` and ``symbols``
        (n_atoms,), and ``target``, the temperature asked for; frame 0 is the starting
        structure.
        """
        atoms = supercell.copy()
        atoms.calc = self.make_calculator()
        rng = np.random.default_rng([self.seed, index])
        thermalize_momenta(atoms, temperature, rng=rng)
        Stationary(atoms)
        if self.ensemble != "nvt":
            # the centre of mass stands still, so the temperature counts 3N - 3 degrees of
            # freedom (the Berendsen thermostat's included); Langevin thermalises all 3N and
            # lets the centre wander, a drift the analysis takes out
            atoms.set_constraint(FixCom())
        stem = workdir / f"md_{temperature:g}K"
        options = {"logfile": str(stem.with_suffix(".log")), "loginterval": self.sample_interval}
        dt = self.timestep * units.fs
        if self.ensemble == "nvt":
            dynamics = Langevin(atoms, dt, temperature_K=temperature, fixcm=False,
                                friction=self.friction / units.fs, rng=rng, **options)
        elif self.ensemble == "npt":
            dynamics = NPTBerendsen(atoms, dt, temperature_K=temperature, fixcm=True,
                                    pressure_au=self.pressure * units.GPa,
                                    taut=self.taut * units.fs, taup=self.taup * units.fs,
                                    compressibility_au=compressibility, **options)
        else:
            dynamics = VelocityVerlet(atoms, dt, **options)

        frames: dict[str, list] = {k: [] for k in ("step", "scaled", "cell", "energy",
                                                   "kinetic", "temperature")}

        def record() -> None:
            energy = atoms.get_potential_energy()
            momenta = atoms.get_momenta()
            if not (math.isfinite(energy) and np.isfinite(momenta).all()):
                raise EvaluationError(f"MD at {temperature:g} K became non-finite at step "
                                      f"{dynamics.nsteps}")
            frames["step"].append(dynamics.nsteps)
            frames["scaled"].append(atoms.get_scaled_positions(wrap=False))
            frames["cell"].append(atoms.cell.array.copy())
            frames["energy"].append(energy)
            frames["kinetic"].append(atoms.get_kinetic_energy())
            frames["temperature"].append(atoms.get_temperature())

        dynamics.attach(record, interval=self.sample_interval)
        try:
            with Trajectory(str(stem.with_suffix(".traj")), "w", atoms) as trajectory:
                dynamics.attach(trajectory.write, interval=self.sample_interval)
                with warnings.catch_warnings():
                    # CHGNet passes the atoms through pymatgen, which drops FixCom with a
                    # warning; the integrator, not the calculator, applies the constraint
                    warnings.filterwarnings("ignore", message="Only FixAtoms and FixCartesian")
                    dynamics.run(self.steps)
        finally:
            dynamics.close()
        run = {k: np.asarray(v) for k, v in frames.items()}
        run["scaled"] = md.unwrap_fractional(run["scaled"])
        run["masses"] = atoms.get_masses()
        run["symbols"] = np.asarray(atoms.get_chemical_symbols())
        run["target"] = np.asarray(temperature)
        return run

    # the analysis -----------------------------------------------------------------------

    def _analyse(self, run: dict[str, np.ndarray]) -> tuple[dict[str, float], md.Integrity]:
        production = run["step"] >= round(self.equilibration * self.steps)
        n_atoms = len(run["masses"])
        cells = run["cell"]
        # MSD in one fixed (mean) cell: a barostat's affine rescaling is not diffusion
        fixed = md.remove_drift(run["scaled"] @ cells[production].mean(axis=0), run["masses"])
        fixed = fixed[production]
        frame_time = self.sample_interval * self.timestep / 1000.0  # ps
        properties: dict[str, float] = {}
        groups = {"": np.ones(n_atoms, dtype=bool)}
        groups.update({f"_{s}": run["symbols"] == s for s in self.mobile_species})
        for suffix, mask in groups.items():
            curve = md.msd(fixed[:, mask])
            times = np.arange(len(curve)) * frame_time
            properties[f"msd{suffix}"] = float(curve[len(curve) // 2])
            # Å^2/ps to cm^2/s
            properties[f"diffusivity{suffix}"] = md.diffusivity(times, curve) * 1e-4

        framework = ~np.isin(run["symbols"], self.mobile_species)
        if not framework.any():
            framework[:] = True
        cartesian = md.remove_drift(np.einsum("tnj,tjk->tnk", run["scaled"], cells),
                                    run["masses"])
        integrity = md.assess_integrity(cartesian[0, framework],
                                        cartesian[production][:, framework],
                                        cells[production], reference_cell=cells[0])

        times = run["step"][production] * self.timestep / 1000.0
        total = (run["energy"] + run["kinetic"])[production] / n_atoms
        volumes = np.abs(np.linalg.det(cells[production])) / n_atoms
        properties.update({
            "md_volume_per_atom": float(volumes.mean()),
            "temperature_mean": float(run["temperature"][production].mean()),
            "temperature_std": float(run["temperature"][production].std()),
            "energy_drift": float(np.polyfit(times, total, 1)[0]),
        })
        return properties, integrity

    def _md_properties(self, runs: list[dict[str, np.ndarray]]) -> dict[str, float]:
        analysed = [self._analyse(run) for run in runs]
        hottest = int(np.argmax([float(run["target"]) for run in runs]))
        properties = dict(analysed[hottest][0])
        verdicts = [integrity for _, integrity in analysed]
        properties.update({
            "lindemann_index": max(v.lindemann_index for v in verdicts),
            "coordination_preserved": min(v.coordination_preserved for v in verdicts),
            "max_displacement": max(v.max_displacement for v in verdicts),
            "intact": float(all(v.intact for v in verdicts)),
        })
        if len(runs) > 1:
            temperatures = np.array([float(run["target"]) for run in runs])
            volumes = np.array([p["md_volume_per_atom"] for p, _ in analysed])
            slope = np.polyfit(temperatures, volumes, 1)[0]
            properties["thermal_expansion"] = float(slope / volumes[np.argmin(temperatures)])
        return properties
