"""Trajectory analysis on synthetic trajectories whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from matforge.engine.materials import md


def brute_force_msd(x: np.ndarray) -> np.ndarray:
    n = len(x)
    return np.array([np.mean(np.sum((x[m:] - x[: n - m]) ** 2, axis=2)) for m in range(n)])


def random_walk(n_frames, n_atoms, sigma, seed=0, start=None):
    """Gaussian steps of ``sigma`` Å per Cartesian direction per frame."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, sigma, size=(n_frames - 1, n_atoms, 3))
    origin = np.zeros((n_atoms, 3)) if start is None else start
    return np.concatenate([origin[None], origin[None] + np.cumsum(steps, axis=0)])


def vibrating_crystal(atoms, n_frames, amplitude, period, seed=0):
    """Each atom swings harmonically about its site, along a random direction with a
    random phase: positions of shape (n_frames, n_atoms, 3)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(atoms), 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    phases = rng.uniform(0, 2 * np.pi, len(atoms))
    t = np.arange(n_frames)[:, None, None]
    swing = np.sin(2 * np.pi * t / period + phases[None, :, None])
    return atoms.positions[None] + amplitude * directions[None] * swing


def test_fft_msd_equals_the_average_over_all_time_origins():
    x = np.random.default_rng(1).normal(size=(57, 5, 3)).cumsum(axis=0)
    assert md.msd(x) == pytest.approx(brute_force_msd(x), rel=1e-10, abs=1e-10)
    per_atom = md.msd(x, per_atom=True)
    assert per_atom.shape == (57, 5)
    assert per_atom[:, 2] == pytest.approx(brute_force_msd(x[:, 2:3]), rel=1e-10, abs=1e-10)


def test_ballistic_motion_has_msd_v_squared_t_squared():
    velocity = np.array([0.3, -0.1, 0.2])
    x = (np.arange(40)[:, None, None] * velocity)[:, [0, 0], :]  # two atoms, same velocity
    lags = np.arange(40)
    assert md.msd(x) == pytest.approx((velocity @ velocity) * lags**2, rel=1e-10, abs=1e-10)


def test_random_walk_gives_its_diffusion_coefficient():
    # steps of sigma per direction per frame: D = sigma^2 / (2 dt) exactly
    sigma, dt = 0.1, 0.01  # Å, ps
    x = random_walk(400, 2000, sigma, seed=3)
    curve = md.msd(x)
    times = np.arange(len(curve)) * dt
    expected = sigma**2 / (2 * dt)  # 0.5 Å^2/ps
    assert md.diffusivity(times, curve) == pytest.approx(expected, rel=0.03)
    assert curve[200] == pytest.approx(6 * expected * times[200], rel=0.03)


def test_diffusivity_of_an_exact_line_and_of_a_plateau():
    times = np.linspace(0, 10, 101)
    assert md.diffusivity(times, 6 * 0.25 * times + 0.7) == pytest.approx(0.25, rel=1e-12)
    assert md.diffusivity(times, 2 * 0.5 * times, dimensions=1) == pytest.approx(0.5)
    assert md.diffusivity(times, np.full_like(times, 0.04)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lag"):
        md.diffusivity(times[:3], times[:3])
    with pytest.raises(ValueError, match="start < stop"):
        md.diffusivity(times, times, start=0.5, stop=0.2)


def test_unwrap_follows_atoms_across_the_boundary_in_a_changing_cell():
    frames = 300
    base = np.array([[5.0, 0.0, 0.0], [1.0, 4.0, 0.0], [0.5, 0.3, 6.0]])
    breathing = 1 + 0.02 * np.sin(np.arange(frames) / 20.0)
    cells = base[None] * breathing[:, None, None]
    scaled = random_walk(frames, 20, 0.03, seed=4) + 0.5  # fractional, leaves the cell
    assert np.abs(scaled).max() > 1.5
    wrapped = np.einsum("tnj,tjk->tnk", scaled % 1.0, cells)
    # the first frame stays where it was wrapped to; every later one follows on from it
    expected = np.einsum("tnj,tjk->tnk", scaled - np.floor(scaled[0]), cells)
    np.testing.assert_allclose(md.unwrap(wrapped, cells), expected, atol=1e-9)
    np.testing.assert_allclose(md.unwrap_fractional(scaled % 1.0),
                               scaled - np.floor(scaled[0]), atol=1e-12)


def test_remove_drift_takes_out_a_common_translation_only():
    x = random_walk(50, 6, 0.1, seed=5)
    shifted = x + np.linspace(0, 3, 50)[:, None, None] * np.array([1.0, 2.0, -1.0])
    masses = np.array([1.0, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(md.remove_drift(shifted, masses), md.remove_drift(x, masses),
                               atol=1e-12)
    centre = np.einsum("tnk,n->tk", md.remove_drift(shifted, masses), masses / masses.sum())
    np.testing.assert_allclose(centre, centre[[0]].repeat(50, axis=0), atol=1e-12)


@pytest.mark.parametrize("name, kwargs, first_shell, count", [
    ("Cu", {"crystalstructure": "fcc", "a": 3.6}, 3.6 / np.sqrt(2), 12),
    ("Cu", {"crystalstructure": "fcc", "a": 3.6, "cubic": True}, 3.6 / np.sqrt(2), 12),
    # bcc's second shell, at 1.155 d1, lies inside 1.2 d1: 8 + 6 neighbours
    ("Fe", {"crystalstructure": "bcc", "a": 2.87, "cubic": True}, 2.87 * np.sqrt(3) / 2, 14),
    ("Si", {"crystalstructure": "diamond", "a": 5.43}, 5.43 * np.sqrt(3) / 4, 4),
])
def test_first_shells_and_coordination_of_known_lattices(name, kwargs, first_shell, count):
    atoms = bulk(name, **kwargs)
    d1 = md.first_shell_distances(atoms.positions, atoms.cell.array)
    np.testing.assert_allclose(d1, first_shell, rtol=1e-9)
    counts = md.coordination_numbers(atoms.positions, atoms.cell.array, 1.2 * d1)
    assert (counts == count).all()


def test_an_atom_moved_to_an_octahedral_site_changes_coordination():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    vibrating = vibrating_crystal(atoms, 60, 0.1, 11)
    assert md.coordination_preserved(atoms.positions, vibrating, atoms.cell.array) == 1.0
    moved = atoms.positions.copy()
    moved[0] += [1.8, 0.0, 0.0]  # half a lattice constant: the octahedral hole
    cutoffs = 1.2 * md.first_shell_distances(atoms.positions, atoms.cell.array)
    # six sites around the hole, one of them the site it left: 5 neighbours, not 12
    assert md.coordination_numbers(moved, atoms.cell.array, cutoffs)[0] == 5
    fraction = md.coordination_preserved(atoms.positions, moved, atoms.cell.array)
    assert 0.5 < fraction < 1.0


def test_lindemann_index_of_a_bond_swinging_harmonically():
    # one atom swings along the bond: r(t) = d + A sin(wt) over whole periods, so
    # std(r) / mean(r) = A / (sqrt(2) d) exactly
    d, amplitude = 2.5, 0.2
    t = np.arange(200)
    x = np.zeros((200, 2, 3))
    x[:, 1, 0] = d + amplitude * np.sin(2 * np.pi * t / 20)
    expected = amplitude / (np.sqrt(2) * d)
    assert md.lindemann_index(x) == pytest.approx(expected, rel=1e-12)
    assert md.lindemann_index(x, cutoff=3.0) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(md.lindemann_index(x, per_atom=True), [expected, expected])
    # the same bond across a periodic boundary, through its image
    cell = np.diag([10.0, 10.0, 10.0])
    across = x.copy()
    across[:, 1, 0] = 10.0 - across[:, 1, 0]  # the partner sits at -r(t), seen through x = 10
    assert md.lindemann_index(across, cell, cutoff=3.0) == pytest.approx(expected, rel=1e-12)


def test_msd_of_a_harmonic_oscillator_at_half_period_lags_is_twice_the_amplitude_squared():
    # with n_frames - m origins spanning whole periods, <|x(t+m) - x(t)|^2> = A^2 (1 - cos wm)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    amplitude, period = 0.15, 20
    x = vibrating_crystal(atoms, 210, amplitude, period)
    curve = md.msd(x)
    np.testing.assert_allclose(curve[10::20], 2 * amplitude**2, rtol=1e-9)
    assert curve.max() <= 4 * amplitude**2 + 1e-12


def test_a_vibrating_crystal_is_intact():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    x = vibrating_crystal(atoms, 200, 0.15, 17)
    verdict = md.assess_integrity(atoms.positions, x, atoms.cell.array)
    assert verdict.intact
    assert verdict.coordination_preserved == 1.0
    assert 0.01 < verdict.lindemann_index < 0.05
    assert verdict.max_displacement == pytest.approx(0.15 / (3.6 / np.sqrt(2)), rel=0.05)
    assert md.diffusivity(np.arange(200) * 0.01, md.msd(x)) == pytest.approx(0.0, abs=0.01)


def test_a_melted_trajectory_is_not_intact():
    # atoms leave their sites by random walk: ~2.4 Å rms per direction over the run
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    x = random_walk(300, len(atoms), 0.14, seed=6, start=atoms.positions)
    verdict = md.assess_integrity(atoms.positions, x, atoms.cell.array)
    assert not verdict.intact
    assert verdict.lindemann_index > md.LINDEMANN_LIMIT
    assert verdict.coordination_preserved < md.COORDINATION_FRACTION
    assert verdict.max_displacement > md.DISPLACEMENT_LIMIT


def test_one_atom_leaving_its_site_is_caught_by_the_displacement_criterion():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    x = vibrating_crystal(atoms, 100, 0.1, 13)
    x[60:, 0] += [2.2, 2.2, 0.0]  # 3.1 Å, 1.2 first-shell distances
    verdict = md.assess_integrity(atoms.positions, x, atoms.cell.array)
    assert verdict.lindemann_index < md.LINDEMANN_LIMIT  # one atom of 32 hardly moves it
    assert verdict.max_displacement > md.DISPLACEMENT_LIMIT
    assert not verdict.intact


def test_bad_shapes_are_refused_with_their_name():
    with pytest.raises(ValueError, match=r"positions must have shape \(n_frames, n_atoms, 3\)"):
        md.msd(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        md.msd(np.full((3, 2, 3), np.nan))
    with pytest.raises(ValueError, match="cell must have shape"):
        md.unwrap(np.zeros((4, 2, 3)), np.eye(2))
    with pytest.raises(ValueError, match="at least 2 frames"):
        md.lindemann_index(np.zeros((1, 2, 3)))
