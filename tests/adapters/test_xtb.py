"""The tblite adapter: GFN1-xTB energies as tblite gives them, crystals as supercells wide
enough for its Gamma point, forces that are the gradient of the reported energy."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from ase.build import bulk, make_supercell
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters import EvaluationError, load_evaluator
from matforge.adapters.conformance import check_adapter
from matforge.adapters.xtb import perpendicular_widths, supercell_matrix

needs_tblite = pytest.mark.skipif(importlib.util.find_spec("tblite") is None,
                                  reason="tblite is not installed (pip install tblite)")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("MATFORGE_THREADS", "1")


def direct_energy(atoms, **parameters) -> float:
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.calc = TBLite(method="GFN1-xTB", verbosity=0, **parameters)
    return atoms.get_potential_energy()


@needs_tblite
def test_si8_energy_is_tblites_own(tmp_path):
    # the conventional cell is 5.43 Å wide each way: with min_length 5 Å it is its own
    # supercell, so the adapter must give exactly what tblite gives for it
    si8 = bulk("Si", "diamond", a=5.43, cubic=True)
    assert perpendicular_widths(si8.cell.array).min() == pytest.approx(5.43)
    evaluator = load_evaluator("tblite", {"min_length": 5.0})
    result = evaluator.evaluate(AseAtomsAdaptor.get_structure(si8), tmp_path / "si8")

    assert json.loads((tmp_path / "si8" / "supercell.json").read_text())["copies"] == 1
    expected = direct_energy(si8)
    assert result.energy == pytest.approx(expected, abs=1e-6)
    assert result.energy_per_atom == pytest.approx(expected / 8, abs=1e-7)
    assert np.abs(result.forces).max() < 1e-4  # every atom sits at an inversion centre
    assert result.converged and result.n_steps == 0


@needs_tblite
def test_a_narrow_cell_is_computed_as_a_supercell_at_least_min_length_wide(tmp_path):
    si2 = bulk("Si", "diamond", a=5.43)  # primitive: 3.13 Å between opposite faces
    evaluator = load_evaluator("tblite", {"min_length": 6.0})
    result = evaluator.evaluate(AseAtomsAdaptor.get_structure(si2), tmp_path / "si2")

    record = json.loads((tmp_path / "si2" / "supercell.json").read_text())
    matrix = np.array(record["matrix"])
    supercell = make_supercell(si2, matrix)
    assert perpendicular_widths(supercell.cell.array).min() >= 6.0
    assert record["atoms"] == len(supercell) < 2 * 2**3  # fewer than a 2x2x2 repetition
    # energies per atom are the supercell's, the energy is the given cell's share of it
    expected = direct_energy(supercell) / len(supercell)
    assert result.energy_per_atom == pytest.approx(expected, abs=1e-7)
    assert result.energy == pytest.approx(2 * expected, abs=1e-6)
    # Gamma point alone in the primitive cell is a different (and poor) answer
    assert abs(direct_energy(si2) / 2 - expected) > 0.1
    # the Si reference is the same crystal in the same supercell
    assert result.formation_energy_per_atom == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("cell", [
    bulk("Cu", "fcc", a=3.6).cell.array,
    bulk("Mg", "hcp", a=3.21, c=5.21).cell.array,
    np.array([[4.0, 0, 0], [3.5, 2.0, 0], [1.0, 1.0, 7.0]]),  # skewed
])
def test_supercell_matrix_is_wide_enough_and_no_bigger_than_a_repetition(cell):
    matrix = supercell_matrix(cell, 10.0)
    assert perpendicular_widths(matrix @ cell).min() >= 10.0
    repetition = np.ceil(10.0 / perpendicular_widths(cell)).prod()
    assert 10.0**3 / abs(np.linalg.det(cell)) <= np.linalg.det(matrix) <= repetition
    assert (supercell_matrix(matrix @ cell, 10.0) == np.eye(3)).all()


@needs_tblite
def test_forces_are_the_gradient_of_the_reported_energy(tmp_path):
    # a rattled primitive cell computed as a 7-copy supercell: the force on an atom is the
    # mean over its copies, minus the derivative of the cell's energy
    si2 = bulk("Si", "diamond", a=5.43)
    si2.positions[1] += [0.15, -0.1, 0.05]
    evaluator = load_evaluator("tblite", {"min_length": 6.0})
    structure = AseAtomsAdaptor.get_structure(si2)
    forces = np.array(evaluator.evaluate(structure, tmp_path / "0").forces)
    assert np.abs(forces).max() > 0.5
    h = 1e-3
    for atom, axis in ((0, 0), (1, 2)):
        energies = []
        for sign in (1, -1):
            moved = si2.copy()
            moved.positions[atom, axis] += sign * h
            result = evaluator.evaluate(AseAtomsAdaptor.get_structure(moved),
                                        tmp_path / f"{atom}{axis}{sign}")
            energies.append(result.energy)
        assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[atom, axis],
                                                                        abs=1e-4)


@needs_tblite
def test_a_relaxation_moves_the_atoms_downhill_in_the_cell_given(tmp_path):
    si2 = bulk("Si", "diamond", a=5.43)
    si2.positions[1] += [0.1, 0.0, -0.05]  # off its site
    structure = AseAtomsAdaptor.get_structure(si2)
    scf, relaxed = (load_evaluator("tblite", {
        "min_length": 5.0, "calculation": calculation, "fmax": 0.02,
    }).evaluate(structure, tmp_path / calculation) for calculation in ("scf", "relax"))
    assert np.abs(scf.forces).max() > 0.5
    assert relaxed.converged and relaxed.n_steps > 0
    assert np.abs(relaxed.forces).max() < 0.02
    assert relaxed.energy < scf.energy - 0.02
    assert relaxed.get("volume_per_atom") == pytest.approx(si2.get_volume() / 2)
    assert "BFGS" in (tmp_path / "relax" / "relax.log").read_text()


@needs_tblite
@pytest.mark.slow
def test_a_vc_relax_removes_the_pressure(tmp_path):
    fcc = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    nacl = Structure(Lattice(5.9 * fcc), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    scf, relaxed = (load_evaluator("tblite", {
        "min_length": 6.0, "calculation": calculation, "fmax": 0.02,
    }).evaluate(nacl, tmp_path / calculation) for calculation in ("scf", "vc-relax"))
    assert scf.get("pressure") < -2  # GPa: stretched, it pulls inwards
    assert relaxed.converged and abs(relaxed.get("pressure")) < 0.5
    assert relaxed.get("volume_per_atom") < 0.9 * scf.get("volume_per_atom")
    assert relaxed.energy < scf.energy - 0.1


@needs_tblite
def test_an_scf_that_does_not_converge_raises_and_says_why(tmp_path):
    structure = AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.43, cubic=True))
    evaluator = load_evaluator("tblite", {"min_length": 5.0, "max_iterations": 1})
    with pytest.raises(EvaluationError, match=r"SCF not converged.*max_iterations=1"):
        evaluator.evaluate(structure, tmp_path)


def test_unsupported_elements_and_bad_parameters_are_refused(tmp_path):
    uranium = Structure(Lattice.cubic(3.0), ["U"], [[0, 0, 0]])
    with pytest.raises(EvaluationError, match="no parameters for U"):
        load_evaluator("tblite").evaluate(uranium, tmp_path)
    for bad, message in (({"method": "GFN3-xTB"}, "method"),
                         ({"calculation": "md"}, "calculation"),
                         ({"min_length": -1.0}, "min_length"),
                         ({"min_length": 500.0}, "min_length"),
                         ({"max_iterations": 0}, "max_iterations"),
                         ({"electronic_temperature": -5.0}, "electronic_temperature")):
        with pytest.raises(ValueError, match=message):
            load_evaluator("tblite", bad)


@pytest.mark.slow
@needs_tblite
def test_the_tblite_adapter_conforms():
    assert check_adapter("tblite", {"min_length": 6.0}) == []
