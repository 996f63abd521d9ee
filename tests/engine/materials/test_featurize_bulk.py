"""The array path of the featurizers (``transform``, ``transform_amounts``) against the
per-row reference (``featurize``) on varied compositions and structures."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from matforge.engine.materials.featurize import (
    CompositionFeaturizer,
    MaterialFeaturizer,
    StructureFeaturizer,
)
from matforge.engine.materials.generate import DecorationGenerator

ELEMENTS = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt"]
# beyond the campaign's elements: no fraction column, but they count in the statistics;
# He, Xe and Og lack some properties (NaN statistics)
OTHERS = ["O", "Li", "Fe", "Si", "He", "Xe", "Og"]


def row_by_row(featurizer, materials) -> np.ndarray:
    return np.vstack([featurizer.featurize(m) for m in materials])


@pytest.fixture
def amounts():
    """(symbols, integer amounts of shape (40, 13)) with 1..5 elements per row."""
    rng = np.random.default_rng(7)
    symbols = ELEMENTS + OTHERS
    table = np.zeros((40, len(symbols)), dtype=np.int16)
    for row in table:
        k = rng.integers(1, 6)
        row[rng.choice(len(symbols), size=k, replace=False)] = rng.integers(1, 9, size=k)
    return symbols, table


def compositions_of(symbols, table) -> list[Composition]:
    return [Composition({s: int(n) for s, n in zip(symbols, row) if n}) for row in table]


def test_compositions_match_the_per_row_features(amounts):
    symbols, table = amounts
    comps = compositions_of(symbols, table)
    comps += [Composition("Cu0.25Au0.75"), Composition("Pt"), Composition("HeXe"),
              Composition({"Fe2+": 1, "Fe3+": 2, "O2-": 4}), Composition("Li1.5Ni0.5O2")]
    featurizer = CompositionFeaturizer(ELEMENTS)
    X = featurizer.transform(comps)
    assert X.shape == (len(comps), len(featurizer.feature_names))
    assert np.isnan(X).any()  # the He / Xe / Og rows
    np.testing.assert_allclose(X, row_by_row(featurizer, comps), rtol=1e-12, atol=1e-12)


def test_amount_arrays_match_the_per_row_features(amounts):
    symbols, table = amounts
    featurizer = CompositionFeaturizer(ELEMENTS, properties=["X", "atomic_radius", "row"])
    expected = row_by_row(featurizer, compositions_of(symbols, table))
    order = np.random.default_rng(1).permutation(len(symbols))  # any column order
    X = featurizer.transform_amounts(table[:, order], [symbols[k] for k in order], chunk_size=7)
    np.testing.assert_allclose(X, expected, rtol=1e-12, atol=1e-12)
    # fractions instead of atoms: the same compositions
    scaled = table / table.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(featurizer.transform_amounts(scaled, symbols), expected,
                               rtol=1e-12, atol=1e-12)


def test_amount_arrays_that_are_not_compositions_are_refused():
    featurizer = CompositionFeaturizer(["Cu", "Au"])
    with pytest.raises(ValueError, match="row 1 is not a composition"):
        featurizer.transform_amounts(np.array([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="row 0 is not a composition"):
        featurizer.transform_amounts(np.array([[2.0, -1.0]]))
    with pytest.raises(ValueError, match="expected shape"):
        featurizer.transform_amounts(np.ones((3, 3)))


@pytest.fixture(scope="module")
def structures() -> list[Structure]:
    """Decorations of fcc cells, rattled rock-salt and bcc cells with other elements,
    triclinic cells, one-atom cells and a structure with ions: 36 in all."""
    rng = np.random.default_rng(11)
    gen = DecorationGenerator(ELEMENTS, max_atoms=16)
    out = [gen.sample(rng).structure for _ in range(14)]
    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    for _ in range(8):
        rocksalt = Structure(Lattice.cubic(4.2), ["Ni"] * 4 + ["O"] * 4,
                             np.vstack([fcc, fcc + 0.5]) % 1.0)
        rocksalt.replace(int(rng.integers(8)), str(rng.choice(["Li", "Fe", "Cu"])))
        rocksalt.perturb(0.1, min_distance=0.02, seed=int(rng.integers(2**31)))
        out.append(rocksalt)
    for _ in range(8):
        bcc = Structure(Lattice.cubic(3.0), ["Fe", "Pd"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        bcc = bcc * (int(rng.integers(1, 3)), 1, 2)
        for i in range(len(bcc)):
            bcc.replace(i, str(rng.choice(["Fe", "Pd", "Au", "Si"])))
        bcc.perturb(0.15, seed=int(rng.integers(2**31)))
        out.append(bcc)
    for _ in range(3):
        lengths, angles = rng.uniform(3.0, 6.0, 3), rng.uniform(70, 110, 3)
        lattice = Lattice.from_parameters(*lengths, *angles)
        out.append(Structure(lattice, rng.choice(ELEMENTS, size=6), rng.random((6, 3))))
    out.append(Structure(Lattice.cubic(2.5), ["Cu"], [[0, 0, 0]]))
    out.append(Structure(Lattice.hexagonal(2.6, 9.0), ["Pt"], [[0, 0, 0]]))
    ionic = Structure(Lattice.cubic(4.2), ["Ni2+", "O2-"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    out.append(ionic)
    return out


def test_structures_match_the_per_row_features(structures):
    featurizer = StructureFeaturizer(ELEMENTS + ["O"])
    X = featurizer.transform(structures, chunk_size=5)
    assert X.shape == (len(structures), len(featurizer.feature_names))
    assert np.abs(X[:, -1]).max() > 0  # some bonds between two of the campaign's elements
    np.testing.assert_allclose(X, row_by_row(featurizer, structures), rtol=1e-10, atol=1e-12)


def test_material_features_match_the_per_row_features(structures):
    featurizer = MaterialFeaturizer(ELEMENTS)
    np.testing.assert_allclose(featurizer.transform(structures),
                               row_by_row(featurizer, structures), rtol=1e-10, atol=1e-12)


def test_an_empty_pool_has_no_rows():
    for featurizer in (CompositionFeaturizer(ELEMENTS), StructureFeaturizer(ELEMENTS),
                       MaterialFeaturizer(ELEMENTS)):
        assert featurizer.transform([]).shape == (0, len(featurizer.feature_names))
    featurizer = CompositionFeaturizer(ELEMENTS)
    assert featurizer.transform_amounts(np.zeros((0, 6))).shape == (0, 26)
