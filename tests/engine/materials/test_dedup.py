"""Deduplication agrees with pymatgen's StructureMatcher on equivalent and distinct structures."""

from __future__ import annotations

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from matforge.engine.materials.dedup import StructureIndex, structure_key


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
    np.random.seed(3)  # perturb draws from numpy's global stream
    small_rattle.perturb(0.1)
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
    for s in structures:  # each maps to the one kept structure of its matcher group
        kept = index._structures[index.find(s)]
        assert group_of[id(kept)] == group_of[id(s)]


def test_keys_separate_by_formula_and_space_group_before_the_matcher():
    structures = _cases()
    index = StructureIndex()
    index.extend(structures)
    # the matcher ran only inside a formula/space-group group, never across them
    assert index.comparisons <= 8
    assert structure_key(structures[0]).space_group == 225
    assert structure_key(structures[8]).space_group == 216
