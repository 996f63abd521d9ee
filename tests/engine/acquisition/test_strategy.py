"""One selection path: the model a campaign fits is the model the benchmark measures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from matforge.engine.acquisition.strategy import Strategy
from matforge.engine.config import parse_config
from matforge.engine.loop import campaign
from matforge.engine.models.selection import AutoSurrogate


def _data(seed=0, n_train=12, n_pool=60):
    rng = np.random.default_rng(seed)
    X_train, X_pool = rng.uniform(size=(n_train, 3)), rng.uniform(size=(n_pool, 3))
    y = np.sin(4 * X_train[:, 0]) + X_train[:, 1] ** 2 + 0.05 * rng.normal(size=n_train)
    return X_train, y, X_pool


@pytest.mark.parametrize("kind", ["ptop", "qlogei"])
def test_auto_and_gp_pick_the_same_rows_when_auto_chooses_the_gp(kind):
    X_train, y, X_pool = _data()
    gp = Strategy(surrogate="gp", acquisition=kind, budget=40)
    auto = Strategy(surrogate="auto", acquisition=kind, budget=40,
                    surrogate_params={"kinds": ["gp"]})
    picks = [s.select(X_train, y, X_pool, 4, seed=3) for s in (gp, auto)]
    assert picks[1].indices.tolist() == picks[0].indices.tolist()
    np.testing.assert_allclose(picks[1].acquisition, picks[0].acquisition, rtol=1e-6)


def test_auto_forwards_the_target_scale_and_the_mixture_of_its_choice():
    X_train, y, X_pool = _data(1)
    auto = Strategy(surrogate="auto", surrogate_params={"kinds": ["gp"]}).fit(
        X_train, y, 0, X_pool
    )
    assert isinstance(auto, AutoSurrogate) and auto.chosen_ == "gp"
    gp = auto.surrogate_
    # the copula's normal scores, not the raw targets
    np.testing.assert_allclose(auto.to_model_scale(y), gp.to_model_scale(y))
    assert not np.allclose(auto.to_model_scale(y), y)
    assert auto.acquisition_model() is gp.mixture_ and gp.mixture_.n_components > 1
    assert auto.botorch_model() is gp.model_


@dataclass
class _Result:
    objective: float
    result: dict


def test_a_live_round_and_the_pool_benchmark_pick_the_same_rows():
    """A column constant in training but varying in the pool is seen by both paths."""
    X_train, y, X_pool = _data(2)
    X_train[:, 2] = 0.5  # every result so far shares this descriptor; candidates do not
    config = parse_config({"name": "c", "elements": ["Cu"], "budget": 40, "batch_size": 4,
                           "objective": {"direction": "maximize"}})
    training = [_Result(v, {}) for v in y]
    live = campaign.select(config, 1, X_pool, X_train, training, 4)
    seed = int(campaign.round_rng(config.seed, 1, campaign.SELECT).integers(2**31))
    replay = campaign.strategy(config).chooser()(X_train, y, X_pool, 4, maximize=True, seed=seed)
    assert live.indices.tolist() == replay.tolist()
    # and the column matters: dropping it changes what is picked
    blind = campaign.strategy(config).chooser()(X_train[:, :2], y, X_pool[:, :2], 4,
                                                  maximize=True, seed=seed)
    assert blind.tolist() != replay.tolist()
