"""The learned generator moves its samples toward what the campaign rewards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matforge.engine.materials.generate import DecorationGenerator
from matforge.engine.materials.learned import LearnedGenerator, scores, snap

ELEMENTS = ["Cu", "Ag", "Au", "Ni"]


def test_trained_where_gold_scores_well_it_samples_more_gold():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    decorator = DecorationGenerator(ELEMENTS, max_atoms=8)
    evaluated = [decorator.sample(rng).structure for _ in range(60)]
    generator = LearnedGenerator(ELEMENTS, max_atoms=8)
    gold = generator.vectors(evaluated)[:, 2]
    objective = gold + 0.05 * rng.standard_normal(len(gold))  # a toy campaign: gold is good
    generator.fit(evaluated, objective, maximize=True)

    high = generator.propose(200, np.random.default_rng(1))
    high_gold = generator.vectors([c.structure for c in high])[:, 2].mean()
    generator.target = 0.0
    low_gold = generator.vectors([c.structure for c in generator.propose(
        200, np.random.default_rng(1))])[:, 2].mean()
    assert len(high) >= 40
    assert high_gold - gold.mean() >= 0.15  # measured: 0.24 -> 0.49
    assert high_gold - low_gold >= 0.3  # measured: 0.49 against 0.0
    assert all(c.generator.startswith("learned:decoration:") for c in high)

    # the same seed gives the same candidates
    generator.target = 1.0
    again = generator.propose(200, np.random.default_rng(1))
    assert [c.fingerprint for c in again] == [c.fingerprint for c in high]


def test_before_enough_results_it_proposes_nothing():
    generator = LearnedGenerator(ELEMENTS, min_results=8)
    assert generator.propose(10, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="target"):
        LearnedGenerator(ELEMENTS, target=3)


def test_snapping_and_scores():
    assert snap(np.array([0.74, 0.26, 0.0, 0.0]), ELEMENTS, 8).reduced_formula == "Cu3Ag"
    assert snap(np.array([0.5, 0.49, 0.01, 0.0]), ELEMENTS, 8).reduced_formula == "CuAg"
    assert snap(np.zeros(4), ELEMENTS, 8) is None
    assert list(scores([3.0, 1.0, 2.0], maximize=False)) == [0.0, 1.0, 0.5]
