"""Outcome constraints: a campaign avoids candidates predicted to break them."""

from __future__ import annotations

import numpy as np
import pytest

from matforge.engine.config import ConfigError, parse_config
from matforge.engine.loop import campaign as engine

BASE = {"name": "c", "elements": ["Cu", "Au"], "objective": {"property": "energy_per_atom"}}


def test_constraint_needs_exactly_one_bound():
    with pytest.raises(ConfigError, match="exactly one of 'below' or 'above'"):
        parse_config({**BASE, "constraints": [{"property": "formation_energy_per_atom"}]})
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config({**BASE, "constraints": [{"property": "x", "below": 0, "above": 1}]})


def test_selection_avoids_the_region_where_the_constraint_fails():
    config = parse_config(
        {**BASE, "constraints": [{"property": "formation_energy_per_atom", "below": 0.0}]}
    )
    rng = np.random.default_rng(0)
    X_train = rng.random((30, 2))
    # the objective improves towards x0 = 1, but only x0 < 0.6 is stable (formation < 0)
    y = -X_train[:, 0] + 0.01 * rng.normal(size=30)
    results = [{"formation_energy_per_atom": x0 - 0.6, "energy_per_atom": v}
               for x0, v in zip(X_train[:, 0], y)]
    p = engine.feasibility(config, X_train, results)
    assert p(np.array([[0.1, 0.5]]))[0] > 0.8 > 0.2 > p(np.array([[0.95, 0.5]]))[0]

    pool = np.column_stack([np.linspace(0, 1, 51), np.full(51, 0.5)])
    strategy = engine.strategy(config)
    # minimizing the energy alone heads for x0 = 1, where nothing is stable
    free = strategy.select(X_train, y, pool, 3, maximize=False, seed=1)
    held = strategy.select(X_train, y, pool, 3, maximize=False, seed=1, constraint=p)
    assert pool[free.indices, 0].min() > 0.8
    assert pool[held.indices, 0].max() < 0.7


def test_no_constraints_or_no_reports_mean_no_weighting():
    config = parse_config(BASE)
    assert engine.feasibility(config, np.ones((3, 2)), [{}, {}, {}]) is None
    config = parse_config({**BASE, "constraints": [{"property": "band_gap", "above": 0.5}]})
    assert engine.feasibility(config, np.ones((3, 2)), [{}, None, {"band_gap": None}]) is None
