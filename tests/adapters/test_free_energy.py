"""The free-energy adapter: keeps the evaluator contract, gives EMT copper the free energy of
its harmonic crystal at low temperature, and refuses what it cannot integrate with a reason."""

from __future__ import annotations

import json

import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters import EvaluationError, load_evaluator
from matforge.adapters.conformance import check_adapter
from matforge.adapters.thermo import REPORT_FILE

SMALL = {"temperature": 100.0, "n_lambda": 2, "equilibration_steps": 10,
         "production_steps": 16, "min_atoms": 4, "fmax": 0.05}


def test_the_free_energy_adapter_conforms():
    assert check_adapter("free-energy", SMALL) == []


def test_copper_at_30_k_has_the_free_energy_of_its_harmonic_crystal(tmp_path):
    """An 8-atom supercell of primitive fcc Cu: anharmonicity at 30 K is far below the
    statistical error, so the integrated free energy must match the classical harmonic one;
    the quantum correction at 30 K (far below θ_D) is mostly zero-point energy, +17 meV/atom
    for EMT copper in its 32-atom cell."""
    structure = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.6))
    evaluator = load_evaluator("free-energy", {
        "temperature": 30.0, "n_lambda": 3, "equilibration_steps": 50,
        "production_steps": 300, "min_atoms": 8, "seed": 5})
    result = evaluator.evaluate(structure, tmp_path / "cu")
    f, error = result.get("free_energy_per_atom"), result.get("free_energy_error")
    assert result.converged
    assert 0 < error < 2e-4
    assert f == pytest.approx(result.get("harmonic_free_energy_per_atom"), abs=4 * error)
    # the classical vibrational free energy at 30 K is positive: ħω > kT for every mode
    assert 0.005 < f - result.energy_per_atom < 0.03
    assert 0.010 < result.get("quantum_free_energy_per_atom") - f < 0.025
    report = json.loads((tmp_path / "cu" / REPORT_FILE).read_text())
    assert report["supercell"] == [2, 2, 2]
    assert len(report["frenkel_ladd"]["integrand"]) == 3
    assert report["parameters"]["temperature"] == 30.0


def test_an_unstable_crystal_is_refused(tmp_path):
    simple_cubic = Structure(Lattice.cubic(2.4), ["Cu"], [[0, 0, 0]])
    evaluator = load_evaluator("free-energy", {**SMALL, "min_atoms": 8})
    with pytest.raises(EvaluationError, match="dynamically unstable .* THz"):
        evaluator.evaluate(simple_cubic, tmp_path)


def test_elements_the_potential_lacks_are_refused(tmp_path):
    iron = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(EvaluationError, match="'emt' has no parameters for Fe"):
        load_evaluator("free-energy", SMALL).evaluate(iron, tmp_path)


def test_an_unconverged_relaxation_gives_no_free_energy(tmp_path):
    strained = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.9, cubic=True))
    result = load_evaluator("free-energy", {**SMALL, "max_steps": 1}).evaluate(
        strained, tmp_path)
    assert not result.converged and "free_energy_per_atom" not in result.properties
    assert not (tmp_path / REPORT_FILE).exists()


@pytest.mark.parametrize("parameters, message", [
    ({"calculator": "lennard-jones"}, "calculator 'lennard-jones' is not supported .*'emt'"),
    ({"temperature": -5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"production_steps": 4}, "production_steps"),
    ({"n_lambda": 2.5}, "n_lambda"),
    ({"timestep": 0}, "timestep"),
    ({"min_atoms": 1}, "min_atoms"),
])
def test_bad_parameters_are_refused_with_the_reason(parameters, message):
    with pytest.raises(ValueError, match=message):
        load_evaluator("free-energy", parameters)
