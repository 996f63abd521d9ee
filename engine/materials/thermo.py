"""Helmholtz free energy of a crystal by thermodynamic integration from an Einstein crystal.

Frenkel–Ladd: the crystal's potential ``U`` is switched on from an Einstein crystal
(every atom on a harmonic spring to its lattice site) along
``U_λ = (1 - λ) U_E + λ U``, and

    F = F_E + ∫_0^1 <U - U_E>_λ dλ,

with ``F_E`` analytic and each ``<·>_λ`` a Langevin MD average (:class:`ase.md.langevin.Langevin`)
at the nodes of a Gauss–Legendre rule. ``U_E`` carries the potential's energy at the lattice
sites, ``E0``, so the integrand is small and ``F`` includes ``E0``.

Statistics are classical. Both the MD and ``F_E`` treat the nuclei as classical particles,
so ``F`` is the classical free energy: right well above the Debye temperature, too low
below it (for EMT copper, in the harmonic approximation, by 2.6 meV/atom at 300 K and by
17 meV/atom, mostly zero-point energy, at 30 K).
:func:`harmonic_free_energy` gives the quantum and classical harmonic free energies;
their difference is the usual quantum correction.

Centre of mass. A periodic crystal's potential does not change when every atom moves
together, so the three translations are free, not vibrations. The MD holds the
mass-weighted centre of mass at the lattice's (:class:`ase.constraints.FixCom`, which ASE
recommends over Langevin's own ``fixcm`` because it samples the constrained ensemble
correctly) and every free energy here is that of the 3N - 3 internal degrees of freedom:
``F_E`` is the Einstein crystal's with its centre of mass fixed (:func:`einstein_free_energy`),
and the harmonic reference drops the three translational modes (:func:`harmonic_frequencies`).
No ``kT ln(V/Λ³)``-type term for the translation of the whole crystal is added; it is not
a property of the bulk solid and vanishes per atom as N grows. Per-atom values therefore
carry an O(kT ln N / N) finite-size difference from the infinite crystal.

Units are ASE's: eV, Å, amu, K; spring constants in eV/Å², ω² in eV/(Å² amu).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixCom
from ase.md.langevin import Langevin

HBAR = units._hbar * units.J * units.s
"""ħ in eV × ASE time units, so ħω is in eV for ω = sqrt(k/m) in ASE units."""

LINDEMANN_LIMIT = 0.5
"""Largest displacement from a lattice site, in nearest-neighbour distances, before an
atom counts as having left its site (melting or diffusion invalidate the Einstein path)."""

MIN_SAMPLES = 16
MIN_BLOCKS = 8


class ThermodynamicIntegrationError(RuntimeError):
    """An integration that ran but cannot give a free energy; the message says why."""


class EinsteinCrystal(Calculator):
    """Independent harmonic springs tying each atom to a site.

    ``U = energy + Σ_i k_i / 2 |r_i - r0_i|²``. Positions are compared without minimum
    image: MD keeps positions unwrapped, and a periodic image of the spring would no longer
    be the harmonic well whose free energy is analytic.

    Parameters
    ----------
    sites : array of shape (n_atoms, 3), Å
    spring_constants : one per atom (shape (n_atoms,)) or one for all, eV/Å²
    energy : energy at the sites, eV
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, sites, spring_constants, energy: float = 0.0):
        super().__init__()
        self.sites = np.array(sites, dtype=float)
        if self.sites.ndim != 2 or self.sites.shape[1] != 3:
            raise ValueError(f"sites must have shape (n_atoms, 3), got {self.sites.shape}")
        k = np.broadcast_to(np.asarray(spring_constants, dtype=float), (len(self.sites),))
        if not (np.isfinite(k).all() and (k > 0).all()):
            raise ValueError(f"spring constants must be finite and > 0, got {k}")
        self.spring_constants = k.copy()
        self.energy = float(energy)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if len(self.atoms) != len(self.sites):
            raise ValueError(f"EinsteinCrystal has {len(self.sites)} sites, the atoms "
                             f"{len(self.atoms)}")
        u = self.atoms.positions - self.sites
        energy = self.energy + 0.5 * float(self.spring_constants @ (u * u).sum(axis=1))
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": -self.spring_constants[:, None] * u}


class SwitchedPotential(Calculator):
    """``U_λ = (1 - λ) U_E + λ U`` for an Einstein crystal ``U_E`` and a potential ``U``.

    :class:`ase.calculators.mixing.LinearCombinationCalculator` with the integrand kept:
    ``results["energy_difference"]`` is ``U - U_E`` at the same positions.

    Parameters
    ----------
    einstein : the λ = 0 end
    potential : the λ = 1 end, any ASE calculator giving energy and forces
    lam : the switching parameter λ in [0, 1]
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, einstein: EinsteinCrystal, potential: Calculator, lam: float):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"λ must lie in [0, 1], got {lam}")
        self.einstein, self.potential, self.lam = einstein, potential, float(lam)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.einstein.calculate(self.atoms, ["energy", "forces"], all_changes)
        u_e, f_e = self.einstein.results["energy"], self.einstein.results["forces"]
        # through the potential's cache: it knows what changed (EMT rebuilds its
        # neighbour list on any change but of the positions)
        f_p = self.potential.get_forces(self.atoms)
        u_p = float(self.potential.get_potential_energy(self.atoms))
        energy = (1 - self.lam) * u_e + self.lam * u_p
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": (1 - self.lam) * f_e + self.lam * f_p,
                        "energy_difference": u_p - u_e}


@dataclasses.dataclass
class FrenkelLaddResult:
    """A Frenkel–Ladd free energy, its pieces and its statistics; JSON-able via :meth:`to_dict`.

    Energies are totals over the ``n_atoms`` of the cell, in eV.

    Attributes
    ----------
    free_energy : classical Helmholtz free energy, ``reference_energy + einstein_free_energy
        + Σ weights × integrand``, centre of mass fixed
    free_energy_error : one standard error of ``free_energy`` (block averages per node,
        added in quadrature with the quadrature weights)
    reference_energy : the potential's energy at the lattice sites
    einstein_free_energy : the Einstein crystal's classical free energy above ``reference_energy``
    lambdas, weights : Gauss–Legendre nodes and weights on [0, 1], ``n_lambda`` each
    integrand, integrand_error : ``<U - U_E>_λ`` and its standard error at each node
    spring_constants : per element, eV/Å²
    """

    temperature: float
    n_atoms: int
    free_energy: float
    free_energy_error: float
    reference_energy: float
    einstein_free_energy: float
    lambdas: list[float]
    weights: list[float]
    integrand: list[float]
    integrand_error: list[float]
    spring_constants: dict[str, float]
    timestep: float
    friction: float
    equilibration_steps: int
    production_steps: int
    seed: int

    @property
    def free_energy_per_atom(self) -> float:
        return self.free_energy / self.n_atoms

    @property
    def free_energy_error_per_atom(self) -> float:
        return self.free_energy_error / self.n_atoms

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``n``-point Gauss–Legendre rule on [0, 1] (arrays of shape (n,))."""
    if int(n) != n or n < 1:
        raise ValueError(f"the number of λ points must be an integer >= 1, got {n!r}")
    x, w = np.polynomial.legendre.leggauss(int(n))
    return (x + 1) / 2, w / 2


def block_error(series: Sequence[float]) -> float:
    """Standard error of the mean of a correlated time series (Flyvbjerg–Petersen blocking).

    The series is halved into block means repeatedly; the estimate of each level is
    ``std(block means) / sqrt(n_blocks - 1)``; the largest over levels with at least
    ``MIN_BLOCKS`` blocks is returned, which is the plateau once blocks outlast the
    correlation time, and errs high, not low, when the series is short.
    """
    x = np.asarray(series, dtype=float)
    if x.ndim != 1 or len(x) < MIN_SAMPLES:
        raise ValueError(f"block averaging needs a 1-d series of at least {MIN_SAMPLES} "
                         f"samples, got shape {x.shape}")
    best = 0.0
    while len(x) >= MIN_BLOCKS:
        best = max(best, float(np.std(x) / math.sqrt(len(x) - 1)))
        x = 0.5 * (x[: len(x) // 2 * 2 : 2] + x[1 : len(x) // 2 * 2 : 2])
    return best


def einstein_free_energy(masses, spring_constants, temperature: float,
                         fix_com: bool = True) -> float:
    """Classical Helmholtz free energy of an Einstein crystal, eV, above its energy at the sites.

    Without the constraint it is ``3 kT Σ_i ln(ħω_i / kT)``, ``ω_i = sqrt(k_i / m_i)``.
    With the mass-weighted centre of mass fixed, in each Cartesian direction the
    mass-weighted dynamical matrix ``diag(k_i / m_i)`` is restricted to the plane
    orthogonal to ``s_i = sqrt(m_i)``; the determinant of that restriction is
    ``Π_i (k_i / m_i) × Σ_i (m_i² / k_i) / Σ_i m_i``, which gives the N - 1 internal
    frequencies' product without diagonalising. Equal masses and springs give back
    ``3 (N - 1) kT ln(ħω / kT)``.

    Parameters
    ----------
    masses : array of shape (n_atoms,), amu
    spring_constants : array of shape (n_atoms,) or a scalar, eV/Å²
    temperature : K
    fix_com : remove the three centre-of-mass degrees of freedom
    """
    m = np.asarray(masses, dtype=float)
    k = np.broadcast_to(np.asarray(spring_constants, dtype=float), m.shape)
    if not (np.isfinite(m).all() and (m > 0).all() and np.isfinite(k).all() and (k > 0).all()):
        raise ValueError("masses and spring constants must be finite and > 0")
    kt = _kt(temperature)
    log_omega2 = float(np.log(k / m).sum())  # Σ ln ω_i² over the N atoms, per direction
    n_modes = len(m)
    if fix_com:
        if len(m) < 2:
            raise ValueError("fixing the centre of mass of one atom leaves no vibration")
        log_omega2 += math.log(float((m * m / k).sum() / m.sum()))
        n_modes -= 1
    # 3 directions × Σ ln(ħω/kT) = 3 × (½ Σ ln ω² + n_modes ln(ħ/kT))
    return 3 * kt * (0.5 * log_omega2 + n_modes * math.log(HBAR / kt))


def force_constants(atoms: Atoms, calculator: Calculator, delta: float = 0.01) -> np.ndarray:
    """Second derivatives of the energy, array of shape (3 n_atoms, 3 n_atoms), eV/Å².

    Central finite differences of the forces (6 n_atoms force calls), symmetrised; the
    supercell's Γ-point force constants when ``atoms`` is a supercell.
    """
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    work = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    work.set_masses(atoms.get_masses())
    work.calc = calculator
    n = len(work)
    hessian = np.empty((3 * n, 3 * n))
    base = work.positions.copy()
    for i in range(n):
        for a in range(3):
            forces = []
            for sign in (1.0, -1.0):
                shifted = base.copy()
                shifted[i, a] += sign * delta
                work.positions = shifted
                forces.append(work.get_forces().ravel())
            hessian[3 * i + a] = -(forces[0] - forces[1]) / (2 * delta)
    return 0.5 * (hessian + hessian.T)


def _translation_complement(masses: np.ndarray) -> np.ndarray:
    """Orthonormal basis, array of shape (3N, 3N - 3), of the mass-weighted coordinates
    orthogonal to the three rigid translations."""
    n = len(masses)
    translations = np.zeros((3 * n, 3))
    for a in range(3):
        translations[a::3, a] = np.sqrt(masses)
    q, _ = np.linalg.qr(translations, mode="complete")
    return q[:, 3:]


def harmonic_frequencies(hessian, masses) -> np.ndarray:
    """Squared angular frequencies ω² of the 3N - 3 internal modes, ascending, eV/(Å² amu).

    The mass-weighted dynamical matrix ``M^-1/2 H M^-1/2`` is restricted to the plane
    orthogonal to the rigid translations, the same three degrees of freedom the
    integration removes by fixing the centre of mass; a negative value is an unstable mode.

    Parameters
    ----------
    hessian : array of shape (3N, 3N), eV/Å² (:func:`force_constants`)
    masses : array of shape (N,), amu
    """
    m = np.asarray(masses, dtype=float)
    h = np.asarray(hessian, dtype=float)
    if h.shape != (3 * len(m), 3 * len(m)):
        raise ValueError(f"hessian must have shape (3N, 3N) = {(3 * len(m),) * 2} for "
                         f"{len(m)} masses, got {h.shape}")
    scale = np.repeat(1 / np.sqrt(m), 3)
    dynamical = h * scale[:, None] * scale[None, :]
    basis = _translation_complement(m)
    return np.linalg.eigvalsh(basis.T @ dynamical @ basis)


def harmonic_free_energy(omega2, temperature: float, quantum: bool = False) -> float:
    """Vibrational free energy of harmonic modes, eV, above the energy at the minimum.

    Classical: ``kT Σ ln(ħω / kT)``; quantum: ``Σ ħω/2 + kT ln(1 - exp(-ħω / kT))``.

    Parameters
    ----------
    omega2 : array of shape (n_modes,), ω² in eV/(Å² amu) (:func:`harmonic_frequencies`)
    temperature : K
    quantum : quantum rather than classical statistics
    """
    w2 = np.asarray(omega2, dtype=float)
    if not (np.isfinite(w2).all() and (w2 > 0).all()):
        raise ValueError(f"harmonic free energy needs real, non-zero frequencies; the "
                         f"smallest ω² is {w2.min():.3g} eV/(Å² amu)")
    kt = _kt(temperature)
    x = HBAR * np.sqrt(w2) / kt
    if quantum:
        return float(kt * (x / 2 + np.log(-np.expm1(-x))).sum())
    return float(kt * np.log(x).sum())


def harmonic_spring_constants(hessian, atoms: Atoms) -> dict[str, float]:
    """Einstein spring constants per element, eV/Å², matched to the harmonic crystal:
    ``k = 3 kT / <|u|²>`` with the harmonic mean-square displacement (which is ∝ T, so k is
    not), averaged over the atoms of each element; the 3 translations are left out."""
    m = atoms.get_masses()
    scale = np.repeat(1 / np.sqrt(m), 3)
    dynamical = np.asarray(hessian) * scale[:, None] * scale[None, :]
    basis = _translation_complement(m)
    w2, vectors = np.linalg.eigh(basis.T @ dynamical @ basis)
    if w2.min() <= 0:
        raise ThermodynamicIntegrationError(
            f"the crystal is dynamically unstable: smallest ω² = {w2.min():.3g} eV/(Å² amu)")
    modes = basis @ vectors  # mass-weighted displacements, shape (3N, 3N - 3)
    # <|u_i|²> / kT = Σ_modes |e_i|² / (m_i ω²)
    msd_over_kt = ((modes**2 / w2).reshape(len(m), 3, -1).sum(axis=(1, 2))) / m
    return _per_element(atoms, 3 / msd_over_kt)


def supercell_repeats(atoms: Atoms, min_atoms: int = 1, min_length: float = 0.0
                      ) -> tuple[int, int, int]:
    """Repeats of the cell along its three vectors so that the supercell has at least
    ``min_atoms`` atoms and each of its three widths (distances between opposite faces) is at
    least ``min_length`` Å; the shortest width grows first."""
    cell = np.asarray(atoms.cell)
    volume = abs(np.linalg.det(cell))
    if len(atoms) == 0 or not volume > 1e-9 or not all(atoms.pbc):
        raise ValueError("a supercell needs atoms in a 3-d periodic cell")
    widths = np.array([volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
                       for i in range(3)])
    repeats = np.maximum(1, np.ceil(min_length / widths - 1e-9)).astype(int)
    while len(atoms) * repeats.prod() < min_atoms:
        repeats[int(np.argmin(repeats * widths))] += 1
    return tuple(int(r) for r in repeats)


def frenkel_ladd(atoms: Atoms, calculator: Calculator, temperature: float, *,
                 n_lambda: int = 6, timestep: float = 2.0, friction: float = 0.01,
                 equilibration_steps: int = 500, production_steps: int = 2000, seed: int = 0,
                 spring_constants: float | dict[str, float] | None = None
                 ) -> FrenkelLaddResult:
    """Classical Helmholtz free energy of the crystal ``atoms`` at ``temperature``, at fixed cell.

    The lattice sites are ``atoms``' positions (relax them first: the result is exact for
    any sites the atoms stay near, but springs centred on the minimum fit best). One
    independent Langevin run per Gauss–Legendre node, started on the sites with
    Maxwell–Boltzmann momenta, the centre of mass fixed (see the module notes); the
    integrand ``U - U_E`` is recorded at every production step and its error taken by
    block averaging. Runs are reproducible: node j draws from child j of
    ``numpy.random.SeedSequence(seed)``.

    Parameters
    ----------
    atoms : the crystal (periodic cell, at least 2 atoms); not modified
    calculator : the potential ``U``, an ASE calculator
    temperature : K
    n_lambda : Gauss–Legendre nodes
    timestep : fs
    friction : Langevin friction, 1/fs
    equilibration_steps, production_steps : MD steps per node, discarded and averaged
    seed : seeds every random number used
    spring_constants : eV/Å²: one for all atoms, ``{element: k}``, or None to take them
        from the mean-square displacement of an MD run of the potential alone
        (``equilibration_steps`` + ``production_steps``), ``k = 3 kT / <|u|²>`` per element

    Raises
    ------
    ValueError
        for bad settings.
    ThermodynamicIntegrationError
        when an atom leaves its site (by more than ``LINDEMANN_LIMIT`` nearest-neighbour
        distances) or an energy is not finite.
    """
    kt = _kt(temperature)
    if len(atoms) < 2:
        raise ValueError("thermodynamic integration needs at least 2 atoms in the cell")
    for label, value in (("timestep", timestep), ("friction", friction)):
        _positive(label, value)
    if int(equilibration_steps) != equilibration_steps or equilibration_steps < 0:
        raise ValueError(f"equilibration_steps must be an integer >= 0, got "
                         f"{equilibration_steps!r}")
    if int(production_steps) != production_steps or production_steps < MIN_SAMPLES:
        raise ValueError(f"production_steps must be an integer >= {MIN_SAMPLES} (block "
                         f"averaging), got {production_steps!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    lambdas, weights = gauss_legendre(n_lambda)
    settings = dict(kt=kt, timestep=timestep * units.fs, friction=friction / units.fs,
                    equilibration_steps=int(equilibration_steps),
                    production_steps=int(production_steps),
                    max_displacement=LINDEMANN_LIMIT * _nearest_neighbour_distance(atoms))
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(
        len(lambdas) + 1)]

    sites = atoms.positions.copy()
    reference = atoms.copy()
    reference.calc = calculator
    energy0 = float(reference.get_potential_energy())
    if not math.isfinite(energy0):
        raise ThermodynamicIntegrationError(f"the potential's energy at the sites is {energy0}")

    if spring_constants is None:
        msd = _sample(atoms, calculator, sites, rngs[-1], record="msd", **settings)
        k_element = _per_element(atoms, 3 * kt / msd)
    elif isinstance(spring_constants, dict):
        k_element = {str(s): float(v) for s, v in spring_constants.items()}
    else:
        k_element = {s: float(spring_constants) for s in set(atoms.get_chemical_symbols())}
    missing = set(atoms.get_chemical_symbols()) - set(k_element)
    if missing:
        raise ValueError(f"spring_constants has no value for {', '.join(sorted(missing))}")
    k = np.array([k_element[s] for s in atoms.get_chemical_symbols()])
    einstein = EinsteinCrystal(sites, k, energy=energy0)  # raises for k <= 0

    integrand, errors = [], []
    for lam, rng in zip(lambdas, rngs):
        switched = SwitchedPotential(einstein, calculator, lam)
        series = _sample(atoms, switched, sites, rng, record="difference", **settings)
        integrand.append(float(series.mean()))
        errors.append(block_error(series))
    integrand_a, errors_a = np.array(integrand), np.array(errors)
    f_einstein = einstein_free_energy(atoms.get_masses(), k, temperature)
    return FrenkelLaddResult(
        temperature=float(temperature), n_atoms=len(atoms),
        free_energy=energy0 + f_einstein + float(weights @ integrand_a),
        free_energy_error=float(np.sqrt((weights**2 * errors_a**2).sum())),
        reference_energy=energy0, einstein_free_energy=f_einstein,
        lambdas=lambdas.tolist(), weights=weights.tolist(),
        integrand=integrand, integrand_error=errors,
        spring_constants=dict(sorted(k_element.items())),
        timestep=float(timestep), friction=float(friction),
        equilibration_steps=int(equilibration_steps), production_steps=int(production_steps),
        seed=int(seed),
    )


def _sample(atoms: Atoms, calculator: Calculator, sites: np.ndarray, rng, *, record: str,
            kt: float, timestep: float, friction: float, equilibration_steps: int,
            production_steps: int, max_displacement: float) -> np.ndarray:
    """One Langevin run from the sites with the centre of mass fixed. ``record="difference"``
    returns ``U - U_E`` per production step (``calculator`` a :class:`SwitchedPotential`),
    shape (production_steps,); ``record="msd"`` the time-averaged squared
    displacement per atom, shape (n_atoms,)."""
    work = Atoms(atoms.numbers, positions=sites, cell=atoms.cell, pbc=atoms.pbc)
    work.set_masses(atoms.get_masses())
    work.set_constraint(FixCom())
    work.calc = calculator
    masses = work.get_masses()[:, None]
    work.set_momenta(np.sqrt(masses * kt) * rng.standard_normal((len(work), 3)))
    dynamics = Langevin(work, timestep, temperature_K=kt / units.kB, friction=friction,
                        fixcm=False, rng=rng)
    dynamics.run(equilibration_steps)
    samples: list = []

    def observe() -> None:
        u2 = ((work.positions - sites) ** 2).sum(axis=1)
        if u2.max() > max_displacement**2:
            raise ThermodynamicIntegrationError(
                f"an atom moved {math.sqrt(u2.max()):.2f} Å from its site at "
                f"T = {kt / units.kB:g} K: the crystal melted or atoms diffuse, so it has no "
                "Einstein-crystal path")
        if record == "msd":
            samples.append(u2)
            return
        difference = calculator.results["energy_difference"]  # current: MD refreshed it
        if not math.isfinite(difference):
            raise ThermodynamicIntegrationError(f"the energy became {difference} during MD")
        samples.append(difference)

    dynamics.attach(observe, interval=1)
    dynamics.run(production_steps)
    data = np.array(samples)
    return data.mean(axis=0) if record == "msd" else data


def _per_element(atoms: Atoms, values: np.ndarray) -> dict[str, float]:
    symbols = np.array(atoms.get_chemical_symbols())
    return {str(s): float(values[symbols == s].mean()) for s in sorted(set(symbols))}


def _nearest_neighbour_distance(atoms: Atoms) -> float:
    from ase.neighborlist import neighbor_list

    cutoff = 2.0 * (abs(atoms.cell.volume) / len(atoms)) ** (1 / 3)
    distances = neighbor_list("d", atoms, cutoff)
    if len(distances) == 0:
        raise ValueError("no neighbours found: the cell is too dilute for a crystal")
    return float(distances.min())


def _positive(label: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{label} must be a finite number > 0, got {value!r}")
    return number


def _kt(temperature: float) -> float:
    return units.kB * _positive("temperature (K)", temperature)
