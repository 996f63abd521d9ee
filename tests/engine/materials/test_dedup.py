"""Deduplication agrees with pymatgen's StructureMatcher on equivalent and distinct structures."""

from __future__ import annotations

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from matforge.engine.materials import dedup
from matforge.engine.materials.dedup import MatchMemo, StructureIndex, space_group, structure_key
from matforge.engine.materials.structures import fingerprint


def _cases() -> list[Structure]:
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]])
    rng = np.random.default_rng(0)
    permuted = Structure.from_sites([rocksalt[i] for i in rng.permutation(len(rocksalt))])
    rotated = rocksalt.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    strained = rocksalt.copy()
    strained.apply_strain([0.01, -0.01, 0.005])
    scaled = rocksalt.copy()
    scaled.scale_lattice(rocksalt.volume * 1.15)
    small_rattle = rocksalt.copy()
    # seeded: perturb draws from its own default_rng, and 1 of 300 unseeded rattles of up to
    # 0.1 A loses Fm-3m at SYMPREC (see dedup.SYMPREC), which made this test fail by chance
    small_rattle.perturb(0.1, seed=3)
    l12 = Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"],
                    [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    d022 = Structure(Lattice.tetragonal(3.75, 7.5),
                     ["Au", "Cu", "Cu", "Cu", "Cu", "Au", "Cu", "Cu"],
                     [[0, 0, 0], [0, 0.5, 0.25], [0.5, 0, 0.25], [0.5, 0.5, 0],
                      [0, 0, 0.5], [0.5, 0.5, 0.5], [0, 0.5, 0.75], [0.5, 0, 0.75]])
    return [
        rocksalt,
        rocksalt * (2, 1, 1),  # supercell
        rocksalt.get_primitive_structure(),
        permuted, rotated, strained, scaled, small_rattle,
        Structure.from_spacegroup("F-43m", Lattice.cubic(4.5), ["Mg", "O"],
                                  [[0, 0, 0], [0.25, 0.25, 0.25]]),  # zinc blende: distinct
        Structure(Lattice.cubic(2.6), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),  # CsCl type
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5]]),  # another compound
        l12, l12 * (1, 1, 2), d022,
        Structure(Lattice.cubic(3.75), ["Cu", "Au", "Cu", "Cu"],  # L1_2, Au moved: same
                  [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    ]


def test_the_index_keeps_exactly_one_structure_per_group_of_the_matcher():
    structures = _cases()
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True)
    groups = matcher.group_structures(structures)
    group_of = {id(s): g for g, members in enumerate(groups) for s in members}
    index = StructureIndex()
    new = index.extend(structures)
    assert sum(new) == len(groups) == 6
    kept = {fingerprint(s): s for s, is_new in zip(structures, new) if is_new}
    for s in structures:  # each maps to the one kept structure of its matcher group
        assert group_of[id(kept[index.find(s)])] == group_of[id(s)]


def test_keys_separate_by_formula_and_space_group_before_the_matcher():
    structures = _cases()
    index = StructureIndex()
    index.extend(structures)
    # the matcher ran only inside a formula/space-group group, never across them
    assert index.comparisons <= 8
    assert structure_key(structures[0]).space_group == 225
    assert structure_key(structures[8]).space_group == 216


def test_stored_structures_are_loaded_only_for_a_shared_formula_and_space_group():
    structures = _cases()
    stored = [structures[0], structures[11]]  # rock-salt MgO, L1_2 Cu3Au
    asked = []

    def load(formula, group):
        asked.append((formula, group))
        return [(fingerprint(s), s, None) for s in stored
                if s.composition.reduced_formula == formula]

    index = StructureIndex([fingerprint(s) for s in stored],
                           [s.composition.reduced_formula for s in stored], load)
    # found by fingerprint (a supercell), by the matcher (strained, rattled), or new
    assert index.find(structures[1]) == fingerprint(structures[0])
    assert asked == []
    assert index.find(structures[5]) == fingerprint(structures[0])
    assert index.find(structures[7]) == fingerprint(structures[0])
    assert asked == [("MgO", 225)]  # loaded once for rock salt
    assert not index.add(structures[14])  # L1_2 with Au moved: stored already
    assert index.add(structures[13])  # D0_22 Cu3Au: same formula, another group
    assert index.add(structures[8])  # zinc blende: same formula, another group
    assert index.add(structures[10])  # NaCl: a formula nothing stored has
    assert sorted(asked) == [("Cu3Au", 139), ("MgO", 216), ("MgO", 225)]
    assert len(index) == 3 and index.comparisons == 2
    assert space_group(structures[8]) == 216


def test_each_structure_is_reduced_once_however_often_it_is_compared(monkeypatch):
    from matforge.engine.materials.generate import DecorationGenerator

    rng = np.random.default_rng(2)
    bases = [c.structure for c in DecorationGenerator(["Cu", "Au"], max_atoms=8).propose(
        12, rng)]
    structures = []
    for base in bases:  # strained copies: other fingerprints, the same crystal to the matcher
        for strain in ([0, 0, 0], [0.01, -0.01, 0.005], [-0.008, 0.004, 0.01]):
            copy = base.copy()
            copy.apply_strain(strain)
            structures.append(copy)
    index, matcher = StructureIndex(), StructureMatcher(
        ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True)
    reduce = index.matcher._get_reduced_structure
    reductions = []
    monkeypatch.setattr(index.matcher, "_get_reduced_structure",
                        lambda s, *a: reductions.append(1) or reduce(s, *a))
    kept = []
    for s in structures:
        new = index.add(s)
        # the same answer as the matcher against everything kept so far
        assert new == (not any(matcher.fit(s, k) for k in kept))
        kept += [s] if new else []
    assert index.comparisons >= 20  # many comparisons (pymatgen reduced both cells each time) ...
    assert len(reductions) <= len(structures)  # ... each structure reduced at most once


def test_a_fingerprint_found_to_match_a_kept_structure_needs_no_matcher_again():
    rocksalt, _, _, _, _, strained, *_ = _cases()
    index = StructureIndex()
    assert index.add(rocksalt) and not index.add(strained)  # the matcher says: the same
    comparisons = index.comparisons
    assert not index.has_fingerprint(fingerprint(rocksalt) + "x")
    assert index.has_fingerprint(fingerprint(strained))
    assert not index.add(strained.copy()) and index.comparisons == comparisons
    assert index.find(strained) == fingerprint(rocksalt)  # still the kept one's


def test_indexes_sharing_a_memo_ask_the_matcher_about_each_pair_once(monkeypatch):
    structures = _cases()
    stored = [structures[0], structures[11]]  # rock-salt MgO, L1_2 Cu3Au

    def index(memo):
        return StructureIndex(
            [fingerprint(s) for s in stored], [s.composition.reduced_formula for s in stored],
            lambda formula, group: [(fingerprint(s), s, None) for s in stored
                                    if s.composition.reduced_formula == formula],
            memo=memo)

    memo = MatchMemo()
    first = index(memo)  # round r's history
    answers = [first.find(s) for s in structures]
    assert first.comparisons > 0
    groups = []
    monkeypatch.setattr(dedup, "space_group", lambda s: groups.append(s) or 1)
    second = index(memo)  # round r + 1's: the same candidates drawn again
    assert [second.find(s) for s in structures] == answers
    assert second.comparisons == 0 and groups == []  # no matcher, no spglib
    assert answers[5] == answers[7] == fingerprint(structures[0])  # strained, rattled MgO
    assert index(MatchMemo()).find(structures[5]) == answers[5]


def test_a_memo_forgets_its_older_half_at_its_limit():
    memo = MatchMemo(structures=4, pairs=4)
    for i in range(5):
        memo.record(f"a{i}", f"b{i}", i % 2 == 0)
    assert memo.verdict("a0", "b0") is None and memo.verdict("a1", "b1") is None
    assert memo.verdict("b2", "a2") is True and memo.verdict("a3", "b3") is False
