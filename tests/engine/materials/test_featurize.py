from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from matforge.engine.materials.featurize import (
    CompositionFeaturizer,
    MaterialFeaturizer,
    standardize,
)
from matforge.engine.materials.generate import DecorationGenerator

ELEMENTS = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt"]


@pytest.fixture
def structures():
    gen = DecorationGenerator(ELEMENTS, max_atoms=16)
    rng = np.random.default_rng(3)
    return [gen.sample(rng).structure for _ in range(12)]


def rotated(structure: Structure, rng) -> Structure:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    op = SymmOp.from_rotation_and_translation(q, [0, 0, 0])
    new_lattice = Lattice(op.apply_rotation_only(structure.lattice.matrix.T).T)
    return Structure(new_lattice, structure.species, structure.frac_coords)


def test_invariant_to_rotation_translation_and_permutation(structures):
    featurizer = MaterialFeaturizer(ELEMENTS)
    rng = np.random.default_rng(0)
    reference = featurizer.transform(structures)
    moved = []
    for s in structures:
        s = rotated(s, rng)
        s.translate_sites(range(len(s)), rng.random(3))
        order = rng.permutation(len(s))
        moved.append(Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order]))
    np.testing.assert_allclose(featurizer.transform(moved), reference, atol=1e-8)


def test_supercell_has_the_same_features(structures):
    featurizer = MaterialFeaturizer(ELEMENTS)
    s = structures[0]
    np.testing.assert_allclose(
        featurizer.transform([s * (2, 1, 1)]), featurizer.transform([s]), atol=1e-8
    )


def test_features_tell_orderings_apart():
    # same composition, two decorations of the fcc conventional cell: L1_0 layers vs another order
    lattice = Lattice.cubic(3.8)
    coords = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    l10 = Structure(lattice * 1 if False else lattice, ["Cu", "Cu", "Au", "Au"], coords)
    l10_super = l10 * (1, 1, 2)
    other = l10_super.copy()
    other.replace(0, "Au")
    other.replace(2, "Cu")
    X = MaterialFeaturizer(ELEMENTS).transform([l10_super, other])
    assert not np.allclose(X[0], X[1])


def test_composition_features_follow_element_data():
    s = Structure(Lattice.cubic(3.0), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    f = CompositionFeaturizer(["Cu", "Au"], properties=["X"])
    values = dict(zip(f.feature_names, f.featurize(s)))
    assert values["frac_Cu"] == pytest.approx(0.5)
    assert values["mean_X"] == pytest.approx((1.90 + 2.54) / 2)
    assert values["min_X"] == pytest.approx(1.90)
    assert values["max_X"] == pytest.approx(2.54)


def test_standardize_handles_constant_columns():
    a = np.array([[1.0, 5.0], [3.0, 5.0]])
    (z,) = standardize(a)
    np.testing.assert_allclose(z, [[-1.0, 0.0], [1.0, 0.0]])
