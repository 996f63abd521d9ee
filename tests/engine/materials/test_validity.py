"""Validity filters name why they refuse a candidate, and count it."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from matforge.engine.materials.generate import Candidate
from matforge.engine.materials.validity import Filters, filter_candidates


def _rocksalt(a: float, cation: str = "Mg") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_each_filter_refuses_for_its_reason_and_counts_it():
    filters = Filters(frozenset({"Mg", "Ca", "O", "Cu"}), max_atoms=8, charge_balanced=True)
    cases = {
        None: _rocksalt(4.21),
        "unknown element": _rocksalt(4.21, "Ni"),
        "too many atoms": _rocksalt(4.21) * (2, 1, 1),
        "atoms too close": _rocksalt(2.4),
        "volume per atom": _rocksalt(12.0),
        "not charge-balanced": Structure(Lattice.cubic(4.0), ["Mg", "O", "O"],  # MgO2
                                         [[0, 0, 0], [0.25] * 3, [0.75] * 3]),
    }
    for reason, structure in cases.items():
        assert filters.reason(structure) == reason, reason
    assert Filters(frozenset({"Mg", "O"})).reason(cases["not charge-balanced"]) is None
    kept, refused = filter_candidates([Candidate(s, "test") for s in cases.values()], filters)
    assert [c.structure for c in kept] == [cases[None]]
    assert refused == {r: 1 for r in cases if r is not None}
