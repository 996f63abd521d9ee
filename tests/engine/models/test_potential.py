"""The Behler–Parrinello potential: exact derivatives, invariances, energy conservation in
MD, and what fitting to EMT buys, all measured against ASE's EMT on small Cu/Au cells."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from scipy.spatial.transform import Rotation

from matforge.engine.models import descriptors
from matforge.engine.models.descriptors import SymmetryFunctions
from matforge.engine.models.potential import BPCalculator, BPEnsemble, BPPotential

LATTICE = {"Cu": 3.61, "Au": 4.08, "CuAu": 3.85}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # small cells; on a shared 2-core runner a second thread only adds contention
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def emt_images(n: int, seed: int, rattle: float = 0.1, strain: float = 0.03) -> list[Atoms]:
    """Rattled, strained fcc Cu, Au and random CuAu cells of 4 or 8 atoms, labelled by EMT."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        kind = ("Cu", "Au", "CuAu")[k % 3]
        a = LATTICE[kind] * (1 + rng.uniform(-strain, strain))
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        if rng.random() < 0.5:
            atoms = atoms.repeat((2, 1, 1))
        if kind == "Au":
            atoms.symbols[:] = "Au"
        elif kind == "CuAu":
            atoms.numbers[:] = rng.choice([29, 79], size=len(atoms))
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        images.append(labelled(atoms))
    return images


def labelled(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


@pytest.fixture(scope="module")
def train():
    return emt_images(48, seed=0)


@pytest.fixture(scope="module")
def held_out():
    return emt_images(24, seed=1)


@pytest.fixture(scope="module")
def potential(train):
    return BPPotential(random_state=0).fit(train)


@pytest.fixture(scope="module")
def ensemble(train):
    return BPEnsemble(n_models=4, epochs=200, random_state=0).fit(train)


def cuau_cell(seed: int = 7) -> Atoms:
    """A rattled CuAu cell with a sheared (non-orthogonal) cell."""
    atoms = bulk("Cu", "fcc", a=3.85, cubic=True).repeat((2, 1, 1))
    atoms.numbers[[1, 2, 6]] = 79
    atoms.set_cell(atoms.cell.array + [[0, 0, 0], [0.4, 0, 0], [0, 0.3, 0]], scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


# -- the descriptor ---------------------------------------------------------------------


def test_symmetry_functions_equal_their_defining_sums():
    """The moment form of G5 equals the triplet sum it replaces, term by term."""
    sf = SymmetryFunctions(["Cu", "Au"], cutoff=4.0, angular_cutoff=3.5, n_radial=4,
                           angular_etas=(0.02, 0.3), zetas=(1, 2, 5))
    atoms = cuau_cell()
    G = sf.compute(atoms)

    graph = sf.graph(atoms)
    d = sf.pair_vectors(torch.as_tensor(atoms.positions), torch.as_tensor(atoms.cell.array),
                        graph).numpy()
    centre, species = graph.centre.numpy(), graph.species.numpy()
    element = species[graph.neighbour.numpy()]
    r = np.linalg.norm(d, axis=1)

    def fc(x, rc):
        return 0.5 * (np.cos(np.pi * x / rc) + 1) * (x < rc)

    mu = np.linspace(1.0, 3.5, 4)
    eta_r = 1 / (2 * (mu[1] - mu[0]) ** 2)
    channel = {(0, 0): 0, (0, 1): 1, (1, 1): 2}
    expected = np.zeros_like(G)
    for i in range(len(atoms)):
        pairs = np.flatnonzero(centre == i)
        for p in pairs:
            expected[i, element[p] * 4 : element[p] * 4 + 4] += (
                np.exp(-eta_r * (r[p] - mu) ** 2) * fc(r[p], 4.0)
            )
        for p, q in itertools.combinations(pairs, 2):
            cos = d[p] @ d[q] / (r[p] * r[q])
            column = 8 + channel[tuple(sorted((element[p], element[q])))] * 12
            for eta, zeta, lam in itertools.product((0.02, 0.3), (1, 2, 5), (1, -1)):
                angle = 2 ** (1 - zeta) * (1 + lam * cos) ** zeta
                legs = np.exp(-eta * (r[p] ** 2 + r[q] ** 2)) * fc(r[p], 3.5) * fc(r[q], 3.5)
                expected[i, column] += angle * legs
                column += 1
    assert G.shape == (8, 8 + 3 * 12)
    assert np.abs(G[:, 8:]).max() > 0.1  # the angular terms are not all zero
    np.testing.assert_allclose(G, expected, rtol=1e-12, atol=1e-12)


def test_both_neighbour_lists_give_the_same_descriptors(monkeypatch):
    pytest.importorskip("matscipy")
    sf = SymmetryFunctions(["Cu", "Au"])
    cells = [cuau_cell(), bulk("Au", "fcc", a=4.08)]  # the primitive cell: many images
    with_matscipy = [sf.compute(atoms) for atoms in cells]
    monkeypatch.setattr(descriptors, "_matscipy_neighbour_list", None)
    for atoms, G in zip(cells, with_matscipy):
        np.testing.assert_allclose(sf.compute(atoms), G, rtol=0, atol=1e-12)


def test_descriptors_and_energy_are_invariant_and_forces_rotate(potential):
    atoms = cuau_cell()
    sf = potential.descriptor_
    G = sf.compute(atoms)
    energy, forces = potential.predict(atoms)

    rotation = Rotation.random(random_state=3).as_matrix()
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    moved.positions = atoms.positions @ rotation.T + [1.3, -2.1, 0.7]
    order = np.random.default_rng(4).permutation(len(atoms))
    moved = moved[order]

    np.testing.assert_allclose(sf.compute(moved), G[order], atol=1e-10)
    energy_moved, forces_moved = potential.predict(moved)
    assert energy_moved == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(forces_moved, forces[order] @ rotation.T, atol=1e-10)
    # and the descriptor does tell structures apart
    assert np.abs(sf.compute(cuau_cell(seed=8)) - G).max() > 1e-2


# -- derivatives ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["potential", "ensemble"])
def test_forces_are_minus_the_energy_gradient(model, request):
    """Central differences of the energy, h = 1e-4 Å, agree with the forces to 1e-5 eV/Å."""
    model = request.getfixturevalue(model)
    atoms = cuau_cell()
    _, forces = model.predict(atoms)
    h = 1e-4
    numeric = np.zeros_like(forces)
    for i, c in itertools.product(range(len(atoms)), range(3)):
        energies = []
        for sign in (1, -1):
            shifted = atoms.copy()
            shifted.positions[i, c] += sign * h
            energies.append(model.predict(shifted)[0])
        numeric[i, c] = -(energies[0] - energies[1]) / (2 * h)
    assert np.abs(forces).max() > 0.1
    np.testing.assert_allclose(forces, numeric, rtol=0, atol=1e-5)


def test_stress_is_the_strain_derivative(potential):
    """Central differences over +-1e-5 strains of cell and atoms, divided by the volume."""
    atoms = cuau_cell()
    atoms.calc = BPCalculator(potential)
    stress = atoms.get_stress(voigt=False)
    eps = 1e-5
    numeric = np.zeros((3, 3))
    for a, b in itertools.product(range(3), range(3)):
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * eps
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            energies.append(potential.predict(strained)[0])
        numeric[a, b] = (energies[0] - energies[1]) / (2 * eps * atoms.get_volume())
    assert np.abs(stress).max() > 1e-3
    np.testing.assert_allclose(stress, 0.5 * (numeric + numeric.T), rtol=0, atol=1e-8)


@pytest.mark.slow
def test_nve_md_conserves_energy(potential):
    """1 ps of velocity Verlet at 1 fs, 32 atoms from 300 K: the total energy drifts less than
    1e-4 eV/atom/ps (slope of a linear fit), with atoms crossing the cutoff all along."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.numbers[::4] = 79
    atoms.calc = BPCalculator(potential)
    rng = np.random.default_rng(0)
    masses = atoms.get_masses()[:, None]
    momenta = rng.normal(0.0, 1.0, (len(atoms), 3)) * np.sqrt(masses * units.kB * 300.0)
    atoms.set_momenta(momenta - momenta.mean(axis=0) * masses / masses.mean())

    sf = potential.descriptor_
    totals, pairs = [], set()
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)

    def record():
        totals.append(atoms.get_total_energy() / len(atoms))
        if len(totals) % 50 == 0:
            pairs.add(len(sf.graph(atoms).centre))

    dyn.attach(record, interval=1)
    dyn.run(1000)
    time_ps = np.arange(len(totals)) * 1e-3
    drift = abs(np.polyfit(time_ps, totals, 1)[0])
    assert atoms.get_temperature() > 50  # it moved
    assert len(pairs) > 1  # pairs entered and left the cutoff sphere
    assert drift < 1e-4, f"drift {drift:.2e} eV/atom/ps"
    assert np.ptp(totals) < 1e-4


# -- fitting ----------------------------------------------------------------------------


def test_fit_predicts_held_out_emt_energies(potential, train, held_out):
    truth = np.array([a.get_potential_energy() / len(a) for a in held_out])
    predicted = potential.predict_energy_per_atom(held_out)
    mae = np.abs(predicted - truth).mean()

    mean_predictor = np.mean([a.get_potential_energy() / len(a) for a in train])
    # the per-element reference energies alone, which the networks start from
    counts = np.array([[np.sum(a.numbers == z) for z in (29, 79)] for a in train])
    reference = np.linalg.lstsq(counts, [a.get_potential_energy() for a in train], rcond=None)[0]
    composition = np.array([[np.sum(a.numbers == z) for z in (29, 79)] for a in held_out])
    composition_mae = np.abs(composition @ reference / composition.sum(1) - truth).mean()

    assert mae < 0.008  # eV/atom; measured 3.5 meV/atom
    assert mae < 0.2 * np.abs(mean_predictor - truth).mean()  # measured 54 meV/atom
    assert mae < 0.3 * composition_mae
    forces_mae = np.mean([np.abs(potential.predict(a)[1] - a.get_forces()).mean()
                          for a in held_out])
    assert forces_mae < 0.08  # eV/Å; measured 0.043


@pytest.mark.parametrize("model", ["potential", "ensemble"])
def test_training_errors_are_those_of_the_predictions(model, train, request):
    """The forces the fit trains on (descriptor Jacobians) are the calculator's (autograd)."""
    model = request.getfixturevalue(model)
    energy, forces = [], []
    for atoms in train:
        e, f = model.predict(atoms)
        energy.append((e - atoms.get_potential_energy()) / len(atoms))
        forces.append(f - atoms.get_forces())
    assert model.train_rmse_["energy_per_atom"] == pytest.approx(
        np.sqrt(np.mean(np.square(energy))), rel=1e-9
    )
    assert model.train_rmse_["forces"] == pytest.approx(
        np.sqrt(np.mean(np.square(np.concatenate(forces)))), rel=1e-9
    )


def test_ensemble_is_unsure_far_from_the_training_data(ensemble, held_out):
    _, std_near = ensemble.predict_energy_per_atom(held_out, return_std=True)
    compressed = bulk("Cu", "fcc", a=0.85 * 3.61, cubic=True)
    compressed.rattle(0.05, seed=3)
    energy, _, std_far = ensemble.predict(compressed, return_std=True)
    assert std_far > 5 * np.median(std_near)
    assert std_far > np.max(std_near)
    _, std_one = ensemble.predict_energy_per_atom(compressed, return_std=True)
    assert std_one[0] == pytest.approx(std_far)


def test_the_same_seed_gives_the_same_potential(train):
    fits = [BPEnsemble(n_models=2, epochs=15, random_state=s).fit(train[:9]) for s in (5, 5, 6)]
    atoms = cuau_cell()
    energies = [fit.predict(atoms)[0] for fit in fits]
    assert energies[0] == energies[1]
    assert abs(energies[0] - energies[2]) > 1e-6


def test_energies_alone_are_enough_to_fit(train):
    energy_only = []
    for atoms in train[:12]:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy())
        energy_only.append(copy)
    model = BPPotential(epochs=10, random_state=0).fit(energy_only)
    assert math.isnan(model.train_rmse_["forces"])
    assert np.isfinite(model.predict(cuau_cell())[1]).all()


# -- the calculator and files -----------------------------------------------------------


def test_calculator_relaxes_and_reuses_its_neighbour_list_exactly(potential, ensemble):
    atoms = cuau_cell()
    atoms.calc = BPCalculator(ensemble, skin=0.5)
    assert atoms.get_potential_energy() == atoms.calc.results["free_energy"]
    assert atoms.calc.results["energy_std"] > 0
    optimizer = BFGS(atoms, logfile=None)
    optimizer.run(fmax=0.05, steps=100)
    fresh = atoms.copy()
    fresh.calc = BPCalculator(ensemble, skin=0.0)
    # most steps reused a list built steps before, with atoms since moved
    assert atoms.calc.neighbour_list_builds < optimizer.nsteps / 2
    assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-10)
    assert np.abs(atoms.get_forces()).max() < 0.05

    single = cuau_cell()
    single.calc = BPCalculator(potential)
    single.get_potential_energy()
    assert "energy_std" not in single.calc.results
    cluster = Atoms("Cu2Au", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.6, 0]])
    cluster.calc = BPCalculator(potential)
    assert np.isfinite(cluster.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        cluster.get_stress()


def test_save_and_load_give_the_same_predictions(potential, ensemble, tmp_path):
    atoms = cuau_cell()
    for model in (potential, ensemble):
        path = model.save(tmp_path / f"{type(model).__name__}.pt")
        loaded = BPPotential.load(path)
        assert type(loaded) is type(model)
        assert loaded.get_params() == {
            k: list(v) if isinstance(v, tuple) else v for k, v in model.get_params().items()
        }
        energy, forces = model.predict(atoms)
        energy_loaded, forces_loaded = loaded.predict(atoms)
        assert energy_loaded == energy
        np.testing.assert_array_equal(forces_loaded, forces)
    with pytest.raises(ValueError, match="not a BPEnsemble"):
        BPEnsemble.load(tmp_path / "BPPotential.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a potential")
    with pytest.raises(ValueError, match="junk.pt"):
        BPPotential.load(tmp_path / "junk.pt")


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hidden": ()}, "hidden"),
        ({"activation": "relu"}, "activation"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"force_weight": float("nan")}, "force_weight"),
        ({"cutoff": 0.2}, "cutoff"),
        ({"angular_cutoff": 7.0}, "angular_cutoff"),
        ({"zetas": (1.5,)}, "zetas"),
        ({"zetas": "12"}, "zetas"),
        ({"angular_etas": (0.1, None)}, "angular_etas"),
        ({"n_radial": 2.5}, "n_radial"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_bad_hyperparameters_are_named(train, params, message):
    with pytest.raises(ValueError, match=message):
        BPPotential(**params).fit(train[:3])


def test_bad_structures_are_named(potential, train):
    with pytest.raises(ValueError, match="n_models"):
        BPEnsemble(n_models=1).fit(train[:3])
    with pytest.raises(ValueError, match=r"images\[1\].*no energy"):
        BPPotential(epochs=1).fit([train[0], bulk("Cu", cubic=True)])
    with pytest.raises(ValueError, match="non-empty list"):
        BPPotential().fit([])
    with pytest.raises(ValueError, match="not fitted"):
        BPPotential().predict(cuau_cell())
    with pytest.raises(ValueError, match="Ni.*not among"):
        potential.predict(bulk("Ni", cubic=True))
    overlapping = cuau_cell()
    overlapping.positions[1] = overlapping.positions[0]
    with pytest.raises(ValueError, match="atoms 0 and 1 are at the same place"):
        potential.predict(overlapping)
    with pytest.raises(ValueError, match="not fitted"):
        BPCalculator(BPPotential())
    with pytest.raises(ValueError, match="model: need a BPPotential"):
        BPCalculator("potential.pt")
