"""The ML-potential adapter and the calculator factory, with real CHGNet, SevenNet and EMT."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import read
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters import EvaluationError, EvaluationResult, calculators, load_evaluator
from matforge.adapters.calculators import CalculatorSpec, make_calculator
from matforge.adapters.mlip import MLPotentialEvaluator, supercell_repeats

torch.set_num_threads(1)

needs_chgnet = pytest.mark.skipif(importlib.util.find_spec("chgnet") is None,
                                  reason="chgnet is not installed (pip install 'matforge[chgnet]')")
needs_sevennet = pytest.mark.skipif(importlib.util.find_spec("sevenn") is None,
                                    reason="sevenn is not installed "
                                           "(pip install 'matforge[sevennet]')")


def structure(name, *args, **kwargs) -> Structure:
    return AseAtomsAdaptor.get_structure(bulk(name, *args, **kwargs))


# the factory ------------------------------------------------------------------------------

def test_factory_refuses_unknown_names_listing_the_known_ones():
    known = r"\(known: 7net-0, 7net-l3i5, 7net-mf-0, chgnet, emt\)"
    with pytest.raises(EvaluationError, match=rf"unknown calculator 'mace' {known}"):
        make_calculator("mace")


def test_factory_names_the_pip_extra_of_a_model_that_is_not_installed(monkeypatch):
    monkeypatch.setitem(calculators.CALCULATORS, "ghost", CalculatorSpec(
        build=lambda device: None, package="matforge_no_such_package", extra="ghost",
        elements=None, torch=True))
    with pytest.raises(EvaluationError, match=r"pip install 'matforge\[ghost\]'"):
        make_calculator("ghost")
    with pytest.raises(ValueError, match=r"pip install 'matforge\[ghost\]'"):
        MLPotentialEvaluator(model="ghost")


def test_factory_refuses_a_device_torch_does_not_have():
    with pytest.raises(EvaluationError, match="device must be"):
        make_calculator("chgnet", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(EvaluationError, match="torch sees 0 CUDA device"):
            make_calculator("chgnet", device="cuda")


def test_a_torch_model_gets_the_process_share_of_threads_not_torch_default():
    # a fresh process whose torch pool is wider than MATFORGE_THREADS allows
    script = textwrap.dedent("""
        import torch
        from ase.calculators.emt import EMT
        from matforge.adapters import calculators
        calculators.CALCULATORS["torch-emt"] = calculators.CalculatorSpec(
            build=lambda device: EMT(), package="torch", extra=None, elements=None, torch=True)
        torch.set_num_threads(3)
        calculators.make_calculator("torch-emt", "cpu")
        print(torch.get_num_threads())
    """)
    env = {**os.environ, "MATFORGE_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1"


def test_emt_from_the_factory_is_ases_emt():
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.calc = make_calculator("emt")
    from ase.calculators.emt import EMT

    reference = bulk("Cu", "fcc", a=3.6)
    reference.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy())


@needs_chgnet
def test_chgnet_calculators_are_fresh_share_the_model_and_run_on_the_threads_given():
    first, second = make_calculator("chgnet"), make_calculator("chgnet")
    assert first is not second and first.model is second.model
    assert first.device == ("cuda" if torch.cuda.is_available() else "cpu")
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.calc = first
    energy = atoms.get_potential_energy() / len(atoms)
    assert -5.6 < energy < -5.2  # CHGNet's Si, close to MP's PBE -5.42 eV/atom
    # forces are the gradient of the energy: compare with a central difference
    atoms.positions[0] += [0.05, -0.03, 0.02]
    force = atoms.get_forces()[0, 0]
    h = 1e-3
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[0, 0] += sign * h
        moved.calc = second
        energies.append(moved.get_potential_energy())
    assert force == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=5e-3)


# constructor checks ------------------------------------------------------------------------

@pytest.mark.parametrize("parameters, message", [
    ({"model": "mace"}, "model must be one of"),
    ({"task": "anneal"}, "task must be one of relax, md"),
    ({"ensemble": "nph"}, "ensemble must be one of"),
    ({"temperature": -5}, "temperature must be a finite number > 0"),
    ({"temperature": [300, 300], "ensemble": "npt"}, "lists a value twice"),
    ({"temperature": [300, 600]}, "needs ensemble 'npt'"),
    ({"steps": 0}, "steps must be a whole number >= 1"),
    ({"timestep": float("nan")}, "timestep must be a finite number"),
    ({"equilibration": 1.0}, "equilibration must be a fraction"),
    ({"task": "md", "steps": 20, "sample_interval": 5}, "production frames"),
    ({"mobile_species": "Li"}, "mobile_species must be a list of element symbols"),
    ({"mobile_species": ["Xx"]}, "mobile_species must be a list of element symbols"),
    ({"relax_first": "yes"}, "relax_first must be true or false"),
    ({"supercell_atoms": 10**6}, "supercell_atoms must be <="),
    ({"device": 0}, "device must be"),
])
def test_bad_parameters_are_refused_naming_them(parameters, message):
    with pytest.raises(ValueError, match=message):
        MLPotentialEvaluator(**{"model": "emt", **parameters})


def test_declared_properties_follow_the_task():
    relax = MLPotentialEvaluator(model="emt")
    assert "msd" not in relax.implemented_properties
    nvt = MLPotentialEvaluator(model="emt", task="md", mobile_species=["Au"])
    assert nvt.implemented_properties["diffusivity"] == "cm^2/s"
    assert nvt.implemented_properties["diffusivity_Au"] == "cm^2/s"
    assert "thermal_expansion" not in nvt.implemented_properties
    npt = MLPotentialEvaluator(model="emt", task="md", ensemble="npt", temperature=[300, 600])
    assert npt.implemented_properties["thermal_expansion"] == "1/K"
    # the class declares the union, for `matforge adapters list` and the conformance kit
    assert set(npt.implemented_properties) == set(MLPotentialEvaluator.implemented_properties)
    assert isinstance(load_evaluator("mlip", {"model": "emt"}), MLPotentialEvaluator)


def test_supercell_repeats_meet_both_minimums():
    cell = np.diag([3.0, 4.0, 10.0])
    assert supercell_repeats(cell, 2, min_length=9.0) == (3, 3, 1)
    # repeats go to the narrowest width: 3x4 -> 6x4 -> 6x8 -> 9x8 -> 9x12 Å
    assert supercell_repeats(cell, 2, min_atoms=16) == (3, 3, 1)
    assert supercell_repeats(cell, 2) == (1, 1, 1)
    fcc = bulk("Cu", "fcc", a=3.6).cell.array  # widths a / sqrt(3) = 2.08 Å
    repeats = supercell_repeats(fcc, 1, min_atoms=30, min_length=4.0)
    assert np.prod(repeats) >= 30 and min(repeats) >= 2


def test_elements_the_model_lacks_are_refused(tmp_path):
    evaluator = MLPotentialEvaluator(model="emt")
    with pytest.raises(EvaluationError, match="model 'emt' has no parameters for Si"):
        evaluator.evaluate(structure("Si", "diamond", a=5.43), tmp_path)
    if importlib.util.find_spec("chgnet") is not None:
        americium = Structure(Lattice.cubic(3.5), ["Am"], [[0, 0, 0]])
        with pytest.raises(EvaluationError, match="'chgnet' has no parameters for Am"):
            MLPotentialEvaluator().evaluate(americium, tmp_path)


# relaxation -------------------------------------------------------------------------------

@needs_chgnet
def test_chgnet_relaxes_strained_silicon(tmp_path):
    start = structure("Si", "diamond", a=5.60)
    start.perturb(0.05, min_distance=0.02, seed=0)  # off the ideal sites too
    result = MLPotentialEvaluator(fmax=0.02).evaluate(start, tmp_path)
    assert result.converged
    assert np.isfinite(result.energy) and -5.6 < result.energy_per_atom < -5.2
    assert np.abs(result.forces).max() < 0.02
    assert np.abs(result.stress).max() < 0.005  # eV/Å^3, 0.8 GPa
    relaxed = result.relaxed_structure()
    a = (4 * relaxed.volume) ** (1 / 3)  # conventional lattice constant of the 2-atom cell
    assert 5.40 < a < 5.52  # CHGNet (PBE-trained) Si: about 5.47 Å, experiment 5.43 Å
    # the elemental reference is this same crystal, relaxed the same way
    assert result.formation_energy_per_atom == pytest.approx(0.0, abs=2e-3)
    assert (tmp_path / "relax.log").exists()
    assert EvaluationResult.model_validate_json(result.model_dump_json()) == result


# molecular dynamics -----------------------------------------------------------------------

def test_emt_nve_conserves_energy_and_shares_it_equally(tmp_path):
    # velocity Verlet from the relaxed crystal: the total energy stays put, and the
    # kinetic energy drawn at 2T settles near T (equipartition of a harmonic solid)
    evaluator = MLPotentialEvaluator(model="emt", task="md", ensemble="nve", temperature=600,
                                     steps=400, timestep=2.0, sample_interval=4,
                                     supercell_atoms=8, equilibration=0.25)
    result = evaluator.evaluate(structure("Cu", "fcc", a=3.6, cubic=True), tmp_path)
    assert abs(result.get("energy_drift")) < 2e-4  # eV/atom/ps
    assert 200 < result.get("temperature_mean") < 400
    assert result.get("intact") == 1.0
    frames = read(tmp_path / "md_600K.traj", index=":")
    assert len(frames) == 101 and len(frames[0]) == 8
    total = [f.get_potential_energy() + f.get_kinetic_energy() for f in frames]
    assert np.ptp(total) / 8 < 2e-3  # eV/atom over 0.8 ps


def test_md_repeats_exactly_with_its_seed_and_differs_with_another(tmp_path):
    parameters = dict(model="emt", task="md", temperature=500, steps=120, timestep=4.0,
                      sample_interval=4, supercell_atoms=4)
    cu = structure("Cu", "fcc", a=3.6, cubic=True)
    first = MLPotentialEvaluator(**parameters).evaluate(cu, tmp_path / "a")
    again = MLPotentialEvaluator(**parameters).evaluate(cu, tmp_path / "a")
    other = MLPotentialEvaluator(**parameters, seed=1).evaluate(cu, tmp_path / "b")
    assert first.properties == again.properties
    assert first.get("msd") != other.get("msd")


def test_mobile_species_are_reported_and_left_out_of_the_verdict(tmp_path):
    cu3au = Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"],
                      [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    evaluator = MLPotentialEvaluator(model="emt", task="md", temperature=300, steps=100,
                                     timestep=4.0, sample_interval=4, supercell_atoms=4,
                                     mobile_species=["Au"])
    result = evaluator.evaluate(cu3au, tmp_path)
    assert set(evaluator.implemented_properties) == set(result.properties) | {
        "energy", "energy_per_atom", "formation_energy_per_atom"}
    assert 0 < result.get("msd_Au") < 0.2
    assert result.get("intact") == 1.0
    with pytest.raises(EvaluationError, match="mobile_species Au not in Cu"):
        evaluator.evaluate(structure("Cu", "fcc", a=3.6, cubic=True), tmp_path / "cu")


@pytest.mark.slow
def test_emt_copper_expands_on_heating(tmp_path):
    # Berendsen NPT at 300 K and 900 K for 2.5 ps each; copper's volumetric expansion is
    # 5.0e-5 /K (experiment), EMT's comes out at 6e-5 /K
    evaluator = MLPotentialEvaluator(model="emt", task="md", ensemble="npt",
                                     temperature=[300, 900], steps=500, timestep=5.0,
                                     sample_interval=5, supercell_atoms=32, equilibration=0.3)
    result = evaluator.evaluate(structure("Cu", "fcc", a=3.6, cubic=True), tmp_path)
    assert 3e-5 < result.get("thermal_expansion") < 1.2e-4
    assert result.get("md_volume_per_atom") > result.get("volume_per_atom")
    assert result.get("temperature_mean") == pytest.approx(900, rel=0.1)
    assert result.get("intact") == 1.0


@needs_chgnet
@pytest.mark.slow
def test_chgnet_silicon_at_room_temperature_stays_a_crystal(tmp_path):
    evaluator = MLPotentialEvaluator(task="md", temperature=300, steps=250, timestep=2.0,
                                     sample_interval=5, supercell_atoms=16)
    result = evaluator.evaluate(structure("Si", "diamond", a=5.43), tmp_path)
    assert result.converged
    assert result.get("temperature_mean") == pytest.approx(300, abs=60)
    assert result.get("intact") == 1.0
    assert result.get("lindemann_index") < 0.05
    assert result.get("coordination_preserved") == 1.0
    assert 0 < result.get("msd") < 0.1  # Å^2: vibration, no diffusion
    assert abs(result.get("diffusivity")) < 1e-6  # cm^2/s
    assert np.isfinite(result.get("energy_drift"))
    assert len(read(tmp_path / "md_300K.traj", index=":")) == 51


@needs_chgnet
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_chgnet_silicon_at_3000_k_melts(tmp_path, seed):
    # far above silicon's melting point (1687 K) a 16-atom cell melts within 0.5 ps
    evaluator = MLPotentialEvaluator(task="md", temperature=3000, steps=250, timestep=2.0,
                                     sample_interval=5, supercell_atoms=16, seed=seed)
    result = evaluator.evaluate(structure("Si", "diamond", a=5.43), tmp_path)
    assert result.get("intact") == 0.0
    assert result.get("lindemann_index") > 0.1
    assert result.get("coordination_preserved") < 0.9
    assert result.get("msd") > 0.5  # Å^2
    assert result.get("diffusivity") > 5e-5  # cm^2/s; liquid Si: about 2e-4 near 1700 K


@needs_chgnet
@pytest.mark.slow
def test_chgnet_npt_lets_compressed_silicon_expand(tmp_path):
    # the barostat reads CHGNet's stress with ASE's sign: a cell squeezed to 18.1 Å^3/atom
    # grows toward the relaxed 20.4 within 0.4 ps
    evaluator = MLPotentialEvaluator(task="md", ensemble="npt", temperature=300, steps=200,
                                     timestep=2.0, sample_interval=5, supercell_atoms=16,
                                     relax_first=False, taup=200.0)
    result = evaluator.evaluate(structure("Si", "diamond", a=5.25), tmp_path)
    assert 20.0 < result.get("volume_per_atom") < 20.8
    assert 19.0 < result.get("md_volume_per_atom") < 21.0
    assert result.get("intact") == 1.0


@needs_chgnet
@pytest.mark.slow
def test_chgnet_md_keeps_the_adapter_contract():
    from matforge.adapters.conformance import check_adapter

    parameters = {"model": "chgnet", "task": "md", "ensemble": "npt", "temperature": [300, 600],
                  "steps": 40, "timestep": 2.0, "sample_interval": 2, "supercell_atoms": 0,
                  "max_steps": 50}
    assert check_adapter("mlip", parameters) == []


@needs_sevennet
@pytest.mark.slow
@pytest.mark.parametrize("model", ["7net-0", "7net-mf-0"])
def test_sevennet_relaxes_silicon(tmp_path, model):
    result = MLPotentialEvaluator(model=model, fmax=0.02).evaluate(
        structure("Si", "diamond", a=5.50), tmp_path)
    assert result.converged
    assert -5.6 < result.energy_per_atom < -5.2
    assert np.abs(result.forces).max() < 0.02
    assert 5.40 < (4 * result.relaxed_structure().volume) ** (1 / 3) < 5.52
    assert json.loads(result.model_dump_json())["formation_energy_per_atom"] == pytest.approx(
        0.0, abs=2e-3)
