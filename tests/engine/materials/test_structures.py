"""Elemental volumes behind Vegard's-law cells: measured ones, also for elements whose
ground state is not a simple lattice."""

from __future__ import annotations

import pytest

from matforge.engine.materials.structures import atomic_volume


def test_element_volumes_come_from_ase_lattices_or_pymatgen_molar_volumes():
    assert atomic_volume("Cu") == pytest.approx(3.61**3 / 4)  # ASE: fcc, a = 3.61 Å
    assert atomic_volume("Fe") == pytest.approx(2.87**3 / 2)  # ASE: bcc, a = 2.87 Å
    with pytest.raises(ValueError, match="no atomic volume for Fm"):
        atomic_volume("Fm")
    with pytest.raises(ValueError, match="'Xx' is not a chemical element"):
        atomic_volume("Xx")


@pytest.mark.parametrize(("symbol", "measured"), [
    # room-temperature crystals, Å^3 per atom: alpha-Mn (58 atoms, a = 8.911 Å), Ga (Cmce,
    # 8 atoms), In (I4/mmm, a = 3.252, c = 4.946 Å), beta-Sn (I4_1/amd, a = 5.832,
    # c = 3.182 Å), Sb and Bi (R-3m, 6 atoms per hexagonal cell)
    ("Mn", 8.911**3 / 58), ("Ga", 19.58), ("In", 3.252**2 * 4.946 / 2),
    ("Sn", 5.832**2 * 3.182 / 4), ("Sb", 30.2), ("Bi", 35.4),
])
def test_elements_with_complex_ground_states_get_their_measured_volume(symbol, measured):
    # a close-packed solid of the atomic radius gave Sb 17.2 Å^3 and Mn 15.5 Å^3
    assert atomic_volume(symbol) == pytest.approx(measured, rel=0.05)
