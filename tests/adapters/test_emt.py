from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters import AdapterError, EvaluationResult, Evaluator, load_evaluator


def relaxed_energy_per_atom(atoms) -> float:
    atoms.calc = EMT()
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01, steps=500)
    return atoms.get_potential_energy() / len(atoms)


def test_emt_energies_match_ase(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms[0].symbol = "Au"  # Cu3Au, L1_2
    evaluator = load_evaluator("emt", {"fmax": 0.01, "max_steps": 500})
    result = evaluator.evaluate(AseAtomsAdaptor.get_structure(atoms), tmp_path / "cu3au")

    expected = relaxed_energy_per_atom(atoms.copy())
    e_cu = relaxed_energy_per_atom(bulk("Cu"))
    e_au = relaxed_energy_per_atom(bulk("Au"))
    assert result.converged
    assert result.energy_per_atom == pytest.approx(expected, abs=1e-4)
    assert result.formation_energy_per_atom == pytest.approx(
        expected - (3 * e_cu + e_au) / 4, abs=1e-4
    )
    assert result.formation_energy_per_atom < 0  # Cu3Au is a stable compound
    assert np.abs(np.array(result.forces)).max() < 0.01
    assert len(result.forces) == 4 and len(result.stress) == 6
    assert (tmp_path / "cu3au" / "relax.log").exists()


def test_pure_element_has_zero_formation_energy(tmp_path):
    structure = AseAtomsAdaptor.get_structure(bulk("Pt", "fcc", a=3.8, cubic=True))
    result = load_evaluator("emt").evaluate(structure, tmp_path)
    assert result.formation_energy_per_atom == pytest.approx(0.0, abs=1e-4)


def test_result_round_trips_through_json(tmp_path):
    structure = AseAtomsAdaptor.get_structure(bulk("Ni", "fcc", a=3.5))
    result = load_evaluator("emt").evaluate(structure, tmp_path)
    again = EvaluationResult.model_validate_json(result.model_dump_json())
    assert again == result
    assert again.relaxed_structure().composition.reduced_formula == "Ni"
    assert again.get("energy_per_atom") == result.energy_per_atom


def test_registry_checks_names_and_parameters():
    assert isinstance(load_evaluator("emt"), Evaluator)
    with pytest.raises(AdapterError, match="'vasp-magic' is not installed.*installed: .*emt"):
        load_evaluator("vasp-magic")
    with pytest.raises(AdapterError, match="bad parameters"):
        load_evaluator("emt", {"temperature": 300})


def test_gas_phase_elements_are_referenced_to_their_molecules():
    """Formation energies of oxides, nitrides and hydrides are against O2, N2, H2 (the
    standard states), not against a close-packed solid of the gas's atoms."""
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    from matforge.adapters.ase_calc import EMTEvaluator

    evaluator = EMTEvaluator()
    for symbol in ("O", "N", "H"):
        gas = molecule(f"{symbol}2", vacuum=6.0)
        gas.pbc = True
        gas.calc = EMT()
        BFGS(gas, logfile=None).run(fmax=evaluator.fmax, steps=evaluator.max_steps)
        assert evaluator.reference_energy(symbol) == pytest.approx(
            gas.get_potential_energy() / 2, abs=1e-6)
    assert evaluator.reference_energy("Cu") == pytest.approx(-0.0070, abs=1e-3)  # fcc Cu
