"""Pareto fronts, hypervolume, and qLogNEHVI batches that recover a known front."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from botorch.test_functions.multi_objective import BraninCurrin
from torch.quasirandom import SobolEngine

from matforge.engine.acquisition.multiobjective import (
    default_ref_point,
    hypervolume,
    optimize_pareto_batch,
    pareto_mask,
    select_pareto_batch,
)
from matforge.engine.models.gp import GPSurrogate


def test_pareto_mask_respects_the_direction_of_each_objective():
    Y = np.array([[1.0, 5.0], [2.0, 4.0], [1.5, 3.0], [3.0, 1.0], [0.5, 0.5]])
    assert pareto_mask(Y, True).tolist() == [True, True, False, True, False]
    assert pareto_mask(Y, False).tolist() == [False, False, False, False, True]
    # maximize the first, minimize the second: (3, 1) beats everything but (0.5, 0.5)
    assert pareto_mask(Y, (True, False)).tolist() == [False, False, False, True, True]
    assert pareto_mask(np.array([[1.0, 1.0], [1.0, 1.0]]), True).tolist() == [True, True]


def test_hypervolume_of_a_staircase():
    Y = np.array([[1.0, 2.0], [2.0, 1.0], [0.5, 0.5]])
    assert hypervolume(Y, [0.0, 0.0], True) == pytest.approx(3.0)
    assert hypervolume(-Y, [0.0, 0.0], False) == pytest.approx(3.0)
    # a point worse than the reference in one objective adds nothing
    assert hypervolume(np.array([[3.0, -1.0]]), [0.0, 0.0], True) == 0.0
    with pytest.raises(ValueError, match="ref_point"):
        hypervolume(Y, [0.0], True)
    with pytest.raises(ValueError, match="maximize"):
        hypervolume(Y, [0.0, 0.0], (True, True, False))


def test_default_ref_point_lies_behind_every_front_point():
    Y = np.array([[1.0, 4.0], [2.0, 2.0], [4.0, 1.0], [0.0, 0.0]])
    ref = default_ref_point(Y, True)
    front = Y[pareto_mask(Y, True)]
    assert (front > ref).all()
    assert ref == pytest.approx([1.0 - 0.3, 1.0 - 0.3])
    ref_min = default_ref_point(-Y, False)
    assert ref_min == pytest.approx(-ref)


def _branin_currin(X):
    return BraninCurrin()(torch.as_tensor(X)).numpy()


def _fit(X, Y, seed):
    return [GPSurrogate(random_state=seed).fit(X, Y[:, j]) for j in range(Y.shape[1])]


def test_select_pareto_batch_recovers_90_percent_of_the_branin_currin_front():
    # Both objectives minimized. The true front's hypervolume w.r.t. (18, 6) is BoTorch's
    # analytic max_hv, not anything computed from the pool. Each round proposes a fresh
    # 2048-point Sobol pool, as the campaign proposes a fresh candidate pool each round.
    problem, ref = BraninCurrin(), [18.0, 6.0]
    rng = np.random.default_rng(0)
    X = rng.random((8, 2))
    Y = _branin_currin(X)
    for r in range(8):
        pool = SobolEngine(2, scramble=True, seed=r).draw(2048).double().numpy()
        idx, values = select_pareto_batch(
            _fit(X, Y, 0), pool, Y, X, 4, ref_point=ref, maximize=(False, False), seed=0,
            num_samples=32,
        )
        assert len(set(idx.tolist())) == 4 and np.isfinite(values).all()
        X, Y = np.vstack([X, pool[idx]]), np.vstack([Y, _branin_currin(pool[idx])])
    assert len(X) == 40
    assert hypervolume(Y, ref, (False, False)) >= 0.9 * problem.max_hv


def test_pending_rows_are_skipped_and_the_batch_spreads_along_the_front():
    rng = np.random.default_rng(1)
    X = rng.random((10, 2))
    Y = -_branin_currin(X)
    pool = SobolEngine(2, scramble=True, seed=3).draw(256).double().numpy()
    surrogates = _fit(X, Y, 1)
    first, _ = select_pareto_batch(surrogates, pool, Y, X, 1, seed=0, num_samples=32)
    idx, values = select_pareto_batch(
        surrogates, pool, Y, X, 3, seed=0, pending=pool[first], num_samples=32
    )
    assert first[0] not in idx.tolist()
    assert len(set(idx.tolist())) == 3
    # sequential conditioning: each later pick adds less than the one before could alone
    assert values[0] >= values[-1] - 1e-6


def test_optimize_pareto_batch_stays_in_bounds():
    rng = np.random.default_rng(2)
    X = rng.random((8, 2))
    Y = -_branin_currin(X)
    Xn, values = optimize_pareto_batch(
        _fit(X, Y, 2), [[0.0, 0.0], [1.0, 1.0]], Y, X, 2, seed=0,
        num_samples=32, num_restarts=2, raw_samples=32,
    )
    assert Xn.shape == (2, 2) and values.shape == (2,)
    assert ((Xn >= 0) & (Xn <= 1)).all()


def test_bad_inputs_are_refused_with_a_reason():
    rng = np.random.default_rng(3)
    X = rng.random((6, 2))
    Y = -_branin_currin(X)
    surrogates = _fit(X, Y, 3)
    pool = rng.random((20, 2))
    with pytest.raises(ValueError, match="outputs"):
        select_pareto_batch(surrogates[:1], pool, Y, X, 2)
    with pytest.raises(ValueError, match="X_train"):
        select_pareto_batch(surrogates, pool, Y, X[:3], 2)
    with pytest.raises(ValueError, match="batch_size"):
        select_pareto_batch(surrogates, pool, Y, X, 0)
