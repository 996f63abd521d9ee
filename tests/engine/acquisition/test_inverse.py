"""Inverse design: simplex-constrained optimization, snapping to stoichiometry, decoration."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Composition

from matforge.engine.acquisition.inverse import (
    composition_candidates,
    largest_remainder_counts,
    optimize_composition,
    optimize_fractions,
    snap_to_stoichiometry,
    supported_totals,
)
from matforge.engine.materials.generate import DecorationGenerator
from matforge.engine.models.gp import GPSurrogate

ELEMENTS = ["Cu", "Ni", "Al"]
OPTIMUM = np.array([0.5, 0.25, 0.25])


@pytest.fixture(scope="module")
def fitted():
    """GP on -10 |x - x*|^2 with x* = Cu2NiAl, seen at 15 random compositions."""
    X = np.random.default_rng(0).dirichlet(np.ones(3), size=15)
    y = -10.0 * ((X - OPTIMUM) ** 2).sum(axis=1)
    return GPSurrogate(random_state=0).fit(X, y), y


def test_largest_remainder_hands_leftover_atoms_to_the_largest_remainders():
    assert largest_remainder_counts(np.array([0.45, 0.35, 0.2]), 4).tolist() == [2, 1, 1]
    assert largest_remainder_counts(np.array([0.2, 0.8]), 4).tolist() == [1, 3]
    assert largest_remainder_counts(np.array([1.0, 0.0]), 7).tolist() == [7, 0]


def test_snap_picks_the_total_with_the_smallest_rounding_error():
    comps = snap_to_stoichiometry(
        [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.26, 0.24, 0.5]], 4, ELEMENTS
    )
    assert comps == [
        Composition("CuNiAl"), Composition("CuNi"), Composition("CuNi3"), Composition("CuNiAl2")
    ]
    # 0.2 / 0.8 is exact with 5 atoms once 5 is allowed
    assert snap_to_stoichiometry([0.2, 0.8, 0.0], 8, ELEMENTS) == [Composition("CuNi4")]


def test_snap_drops_zero_rows_and_repeats_and_honours_totals_and_species():
    comps = snap_to_stoichiometry(
        [[0, 0, 0], [0.5, 0.5, 0], [0.49, 0.51, 0], [1, 1, 0]], 8, ELEMENTS
    )
    assert comps == [Composition("CuNi")]
    # only 4-atom cells: 1/3 each becomes a 2:1:1 split
    (comp,) = snap_to_stoichiometry([[1 / 3, 1 / 3, 1 / 3]], 8, ELEMENTS, totals=[4])
    assert comp.num_atoms == 4 and sorted(comp.values()) == [1, 1, 2]
    (comp,) = snap_to_stoichiometry([[0.5, 0.3, 0.2]], 8, ELEMENTS, max_species=2)
    assert set(comp.get_el_amt_dict()) == {"Cu", "Ni"}


def test_snap_refuses_bad_input():
    with pytest.raises(ValueError, match="max_atoms"):
        snap_to_stoichiometry([[0.5, 0.5, 0]], 0, ELEMENTS)
    with pytest.raises(ValueError, match="Xx"):
        snap_to_stoichiometry([[0.5, 0.5]], 4, ["Cu", "Xx"])
    with pytest.raises(ValueError, match="3 elements"):
        snap_to_stoichiometry([[0.5, 0.5]], 4, ELEMENTS)
    with pytest.raises(ValueError, match="non-negative"):
        snap_to_stoichiometry([[0.5, 0.7, -0.2]], 4, ELEMENTS)


def test_optimized_fractions_lie_on_the_simplex_near_the_optimum(fitted):
    model, y = fitted
    fractions, values = optimize_fractions(model, 3, y, 3, seed=0, num_restarts=4, raw_samples=128)
    assert fractions.shape == (3, 3) and np.isfinite(values).all()
    assert fractions.sum(axis=1) == pytest.approx(np.ones(3), abs=1e-6)
    assert ((fractions >= 0) & (fractions <= 1)).all()
    assert np.abs(fractions - OPTIMUM).sum(axis=1).min() < 0.1


def test_snapped_proposals_are_whole_stoichiometries_at_the_optimum(fitted):
    model, y = fitted
    comps = optimize_composition(
        model, ELEMENTS, y, 3, max_atoms=8, seed=0, num_restarts=4, raw_samples=128
    )
    assert comps
    for comp in comps:
        counts = np.array(list(comp.get_el_amt_dict().values()))
        assert np.allclose(counts, np.round(counts)) and (counts >= 1).all()
        assert 1 <= comp.num_atoms <= 8
    assert Composition("Cu2NiAl") in comps


def test_minimizing_sends_the_search_away_from_the_optimum(fitted):
    model, y = fitted
    fractions, _ = optimize_fractions(
        model, 3, y, 2, maximize=False, seed=0, kind="ucb", num_restarts=4, raw_samples=128
    )
    assert np.abs(fractions - OPTIMUM).sum(axis=1).min() > 0.5


def test_optimizer_refuses_a_surrogate_on_other_features(fitted):
    model, y = fitted
    with pytest.raises(ValueError, match="4 elements"):
        optimize_composition(model, ["Cu", "Ni", "Al", "Fe"], y, 2)
    with pytest.raises(ValueError, match="'ei'"):
        optimize_fractions(model, 3, y, 2, kind="ei")


def test_decorate_builds_exactly_the_composition_on_a_matching_supercell():
    decorator = DecorationGenerator(ELEMENTS, ("fcc", "bcc"), max_atoms=8)
    rng = np.random.default_rng(0)
    for _ in range(10):
        cand = decorator.decorate(Composition("Cu2NiAl"), rng)
        comp = cand.structure.composition
        assert comp.reduced_composition == Composition("Cu2NiAl")
        assert len(cand.structure) in (4, 8)
    assert 3 in supported_totals(decorator) and 5 not in supported_totals(decorator)
    with pytest.raises(ValueError, match="Fe"):
        decorator.decorate(Composition("CuFe"), rng)
    with pytest.raises(ValueError, match="5 atoms"):
        decorator.decorate(Composition("Cu3Ni2"), rng)


def test_composition_candidates_join_a_pool_without_repeats():
    decorator = DecorationGenerator(ELEMENTS, ("fcc",), max_atoms=4)
    rng = np.random.default_rng(1)
    cands = composition_candidates([Composition("Cu2NiAl"), Composition("CuNi")], decorator, rng)
    assert [c.generator.split(":")[0] for c in cands] == ["inverse", "inverse"]
    again = composition_candidates(
        [Composition("CuNi")] * 5, decorator, rng, exclude={c.fingerprint for c in cands}
    )
    assert len({c.fingerprint for c in again}) == len(again)
    assert not {c.fingerprint for c in again} & {c.fingerprint for c in cands}
