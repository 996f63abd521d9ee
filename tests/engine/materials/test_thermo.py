"""Frenkel–Ladd free energies: analytic pieces against independent formulas, the integration
against exact Einstein-crystal answers, and (slow) EMT copper against its harmonic crystal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from scipy import constants as si

from matforge.engine.materials.thermo import (
    EinsteinCrystal,
    SwitchedPotential,
    ThermodynamicIntegrationError,
    block_error,
    einstein_free_energy,
    force_constants,
    frenkel_ladd,
    gauss_legendre,
    harmonic_free_energy,
    harmonic_frequencies,
    harmonic_spring_constants,
    supercell_repeats,
)

KB = si.k / si.e  # eV/K


def relaxed_copper(repeat: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = EMT()
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-4, steps=200)
    supercell = atoms.repeat(repeat)
    supercell.calc = None
    return supercell


def cu_au_b2() -> Atoms:
    return Atoms("CuAu", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[3.0] * 3,
                 pbc=True)


def test_einstein_free_energy_of_one_oscillator_matches_si_constants():
    # ω = sqrt(k/m) for Cu on a 1 eV/Å² spring, worked in SI: 8.11 meV
    omega = math.sqrt(1.0 * si.e / 1e-20 / (63.546 * si.atomic_mass))
    T = 300.0
    kt = KB * T
    expected = 3 * kt * math.log(si.hbar * omega / si.e / kt)
    assert si.hbar * omega / si.e == pytest.approx(8.11e-3, rel=1e-3)
    got = einstein_free_energy([63.546], [1.0], T, fix_com=False)
    assert got == pytest.approx(expected, rel=1e-5)  # ASE's CODATA 2014 against scipy's


def test_fixing_the_centre_of_mass_removes_exactly_the_translations():
    rng = np.random.default_rng(0)
    masses, springs, T = rng.uniform(1, 200, 5), rng.uniform(0.5, 8, 5), 250.0
    # the closed-form determinant against diagonalising the projected dynamical matrix
    hessian = np.diag(np.repeat(springs, 3))
    by_modes = harmonic_free_energy(harmonic_frequencies(hessian, masses), T)
    assert einstein_free_energy(masses, springs, T) == pytest.approx(by_modes, rel=1e-9)
    assert len(harmonic_frequencies(hessian, masses)) == 3 * 5 - 3
    # equal masses and springs: 3(N-1) identical oscillators
    kt = KB * T
    hbar_omega = si.hbar * math.sqrt(2.0 * si.e / 1e-20 / (27.0 * si.atomic_mass)) / si.e
    assert einstein_free_energy([27.0] * 4, 2.0, T) == pytest.approx(
        9 * kt * math.log(hbar_omega / kt), rel=1e-5)


def test_harmonic_free_energy_has_its_quantum_limits():
    omega2 = np.array([0.05, 0.1, 0.27])  # eV/(Å² amu), EMT Cu's range
    hbar_omega = si.hbar * np.sqrt(omega2 * si.e / 1e-20 / si.atomic_mass) / si.e
    # T -> 0: the zero-point energy
    assert harmonic_free_energy(omega2, 1.0, quantum=True) == pytest.approx(
        hbar_omega.sum() / 2, rel=1e-6)
    # high T: quantum - classical -> Σ (ħω)² / (24 kT)
    T = 3000.0
    gap = harmonic_free_energy(omega2, T, quantum=True) - harmonic_free_energy(omega2, T)
    assert gap == pytest.approx((hbar_omega**2).sum() / (24 * KB * T), rel=1e-3)
    with pytest.raises(ValueError, match="smallest ω²"):
        harmonic_free_energy([-0.01, 0.1], 300.0)


def test_force_constants_predict_the_forces_of_a_small_displacement():
    atoms = relaxed_copper(1)
    hessian = force_constants(atoms, EMT())
    assert hessian.shape == (12, 12)
    # acoustic sum rule: a rigid translation costs nothing
    translation = np.tile([1.0, 0.0, 0.0], 4)
    assert np.abs(hessian @ translation).max() < 1e-3 * np.abs(hessian).max()
    u = np.random.default_rng(1).normal(scale=0.003, size=(4, 3))
    displaced = atoms.copy()
    displaced.positions += u
    displaced.calc = EMT()
    forces = displaced.get_forces().ravel()
    assert np.abs(forces - (-hessian @ u.ravel())).max() < 0.02 * np.abs(forces).max()
    # the 3N - 3 internal modes are the full matrix's non-zero ones
    masses = atoms.get_masses()
    scale = np.repeat(masses**-0.5, 3)
    full = np.sort(np.linalg.eigvalsh(hessian * np.outer(scale, scale)))
    internal = harmonic_frequencies(hessian, masses)
    assert np.abs(full[:3]).max() < 1e-4 and internal.min() > 0.01
    np.testing.assert_allclose(internal, full[3:], rtol=1e-6)


def test_switched_potential_mixes_energies_and_its_forces_are_the_energy_gradient():
    atoms = relaxed_copper(1)
    atoms.positions += np.random.default_rng(2).normal(scale=0.05, size=(4, 3))
    sites = relaxed_copper(1).positions
    einstein = EinsteinCrystal(sites, 5.0, energy=-1.0)
    switched = SwitchedPotential(einstein, EMT(), 0.3)
    atoms.calc = switched
    energy = atoms.get_potential_energy()
    u_e = -1.0 + 2.5 * ((atoms.positions - sites) ** 2).sum()
    probe = atoms.copy()
    probe.calc = EMT()
    u_p = probe.get_potential_energy()
    assert energy == pytest.approx(0.7 * u_e + 0.3 * u_p, abs=1e-10)
    assert switched.results["energy_difference"] == pytest.approx(u_p - u_e, abs=1e-10)
    forces, h = atoms.get_forces(), 1e-5
    for i, a in [(0, 0), (2, 1), (3, 2)]:
        shifted = [atoms.copy() for _ in range(2)]
        for sign, s in zip((1, -1), shifted):
            s.positions[i, a] += sign * h
            s.calc = SwitchedPotential(einstein, EMT(), 0.3)
        numeric = -(shifted[0].get_potential_energy() - shifted[1].get_potential_energy()) / (2 * h)
        assert forces[i, a] == pytest.approx(numeric, abs=1e-6)


def test_block_error_finds_the_error_of_a_correlated_series():
    # AR(1) with φ = 0.9: the error of the mean is sqrt(19) times the naive one
    rng = np.random.default_rng(3)
    phi, n = 0.9, 2**15
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0] / math.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    exact = math.sqrt((1 + phi) / (1 - phi) / n / (1 - phi**2))
    assert block_error(x) == pytest.approx(exact, rel=0.25)
    assert block_error(x) > 3 * x.std() / math.sqrt(n)
    with pytest.raises(ValueError, match="at least 16"):
        block_error(x[:10])


def test_gauss_legendre_integrates_polynomials_on_the_unit_interval():
    nodes, weights = gauss_legendre(4)
    assert ((nodes > 0) & (nodes < 1)).all() and weights.sum() == pytest.approx(1.0)
    assert weights @ nodes**7 == pytest.approx(1 / 8, rel=1e-12)


def test_supercells_reach_the_atom_count_and_width_asked_for():
    conventional = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert supercell_repeats(conventional, min_atoms=32) == (2, 2, 2)
    assert supercell_repeats(conventional, min_length=10.0) == (3, 3, 3)
    primitive = bulk("Cu", "fcc", a=3.6)
    repeats = supercell_repeats(primitive, min_atoms=20, min_length=5.0)
    big = primitive.repeat(repeats)
    widths = big.cell.volume / np.linalg.norm(np.cross(big.cell[[1, 2, 0]], big.cell[[2, 0, 1]]),
                                              axis=1)
    assert len(big) >= 20 and widths.min() >= 5.0 and len(big) <= 36
    with pytest.raises(ValueError, match="3-d periodic"):
        supercell_repeats(Atoms("Cu", cell=[3, 3, 3], pbc=[True, True, False]))


def test_integration_between_einstein_crystals_gives_the_analytic_difference():
    """λ switches springs (4, 4) -> (Cu 8, Au 2) eV/Å² of a two-atom cell: with the centre of
    mass fixed only the relative motion is left, and the exact answer (0.93 kT) differs
    from the one that ignores the constraint (0) by about 12 standard errors."""
    atoms, T = cu_au_b2(), 300.0
    masses = atoms.get_masses()
    start, end = np.array([4.0, 4.0]), np.array([8.0, 2.0])
    result = frenkel_ladd(atoms, EinsteinCrystal(atoms.positions, end, energy=-1.0), T,
                          n_lambda=3, timestep=5.0, friction=0.02, equilibration_steps=50,
                          production_steps=400, seed=7,
                          spring_constants={"Cu": 4.0, "Au": 4.0})
    exact = einstein_free_energy(masses, end, T) - einstein_free_energy(masses, start, T)
    ignoring_com = (einstein_free_energy(masses, end, T, fix_com=False)
                    - einstein_free_energy(masses, start, T, fix_com=False))
    integral = result.free_energy - result.reference_energy - result.einstein_free_energy
    error = result.free_energy_error
    assert result.reference_energy == -1.0
    assert result.einstein_free_energy == pytest.approx(einstein_free_energy(masses, start, T))
    assert abs(integral - exact) < 4 * error, (integral, exact, error)
    assert abs(ignoring_com - exact) > 8 * error
    # each node: <U - U_E>_λ = dF/dλ of the Einstein crystal with springs (1-λ) start + λ end
    for lam, value, sigma in zip(result.lambdas, result.integrand, result.integrand_error):
        h = 1e-5
        slope = (einstein_free_energy(masses, start + (lam + h) * (end - start), T)
                 - einstein_free_energy(masses, start + (lam - h) * (end - start), T)) / (2 * h)
        assert abs(value - slope) < 5 * sigma, (lam, value, slope, sigma)


def test_runs_are_reproducible_by_seed():
    atoms = cu_au_b2()
    springs = EinsteinCrystal(atoms.positions, [8.0, 2.0])
    run = dict(n_lambda=2, timestep=5.0, equilibration_steps=5, production_steps=16,
               spring_constants=4.0)
    first = frenkel_ladd(atoms, springs, 300.0, seed=11, **run)
    assert frenkel_ladd(atoms, springs, 300.0, seed=11, **run).to_dict() == first.to_dict()
    assert frenkel_ladd(atoms, springs, 300.0, seed=12, **run).integrand != first.integrand
    assert first.spring_constants == {"Au": 4.0, "Cu": 4.0}


def test_an_atom_that_leaves_its_site_stops_the_integration():
    atoms = cu_au_b2()
    elsewhere = atoms.positions.copy()
    elsewhere[0] += [1.5, 0.0, 0.0]  # the potential's minimum for Cu is 1.5 Å off its site
    with pytest.raises(ThermodynamicIntegrationError, match="moved .* from its site"):
        frenkel_ladd(atoms, EinsteinCrystal(elsewhere, 5.0), 300.0, n_lambda=2,
                     equilibration_steps=200, production_steps=16)


@pytest.mark.parametrize("change, message", [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"n_lambda": 0}, "λ points"),
    ({"production_steps": 8}, "production_steps"),
    ({"timestep": -1.0}, "timestep"),
    ({"seed": -1}, "seed"),
    ({"spring_constants": {"Cu": 4.0}}, "no value for Au"),
    ({"spring_constants": -1.0}, "spring constants must be"),
])
def test_bad_settings_are_refused_with_the_reason(change, message):
    atoms = cu_au_b2()
    settings = {"temperature": 300.0, "n_lambda": 2, "production_steps": 16,
                "equilibration_steps": 0, "spring_constants": 4.0, **change}
    temperature = settings.pop("temperature")
    with pytest.raises(ValueError, match=message):
        frenkel_ladd(atoms, EinsteinCrystal(atoms.positions, 4.0), temperature, **settings)


def test_one_atom_has_no_internal_vibration():
    with pytest.raises(ValueError, match="at least 2 atoms"):
        frenkel_ladd(bulk("Cu"), EMT(), 300.0)


@pytest.mark.slow
def test_emt_copper_at_30_k_has_the_free_energy_of_its_harmonic_crystal():
    """32-atom fcc Cu (EMT) at 30 K: the Frenkel–Ladd free energy against the classical
    harmonic crystal of the same supercell at Γ (3N - 3 modes). Anharmonicity scales as T²;
    long runs (6 λ × 1000 steps) measured F - F_harm = +0.24 ± 0.20 meV/atom at 300 K and
    -0.003 ± 0.020 meV/atom at 30 K, so here it is below 0.01 meV/atom and the tolerance is
    the statistics: 4 standard errors (about 0.2 meV/atom). Leaving out the centre-of-mass
    treatment would be off by 0.5 meV/atom, a wrong ħ or mass unit by far more."""
    atoms, T = relaxed_copper(2), 30.0
    n = len(atoms)
    hessian = force_constants(atoms, EMT())
    reference = atoms.copy()
    reference.calc = EMT()
    e0 = reference.get_potential_energy()
    harmonic = (e0 + harmonic_free_energy(harmonic_frequencies(hessian, atoms.get_masses()),
                                          T)) / n
    springs = harmonic_spring_constants(hessian, atoms)
    result = frenkel_ladd(atoms, EMT(), T, n_lambda=3, timestep=5.0, friction=0.01,
                          equilibration_steps=100, production_steps=400, seed=3)
    # springs from the MD's mean-square displacement agree with the harmonic crystal's
    assert result.spring_constants["Cu"] == pytest.approx(springs["Cu"], rel=0.1)
    error = result.free_energy_error_per_atom
    assert 0 < error < 1e-4
    assert result.free_energy_per_atom == pytest.approx(harmonic, abs=4 * error)
    # the integrand is small and smooth: the Einstein crystal is near the harmonic one
    assert max(abs(v) for v in result.integrand) < 0.1 * abs(result.einstein_free_energy)
