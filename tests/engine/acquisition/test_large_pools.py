"""Pools too large to condition on whole or to hold: shortlisted selection, streamed top-k."""

from __future__ import annotations

import numpy as np
import pytest

from matforge.engine.acquisition import batch
from matforge.engine.acquisition.batch import LARGE_POOL, rows_not_pending, select_batch
from matforge.engine.acquisition.strategy import Strategy
from matforge.engine.acquisition.stream import best_rows, predict_stream, stream_top_k
from matforge.engine.models.gp import GPSurrogate
from matforge.engine.models.sparse import SparseGP


def _f(X):
    return np.sin(6 * X[:, 0]) * np.cos(4 * X[:, 1]) + 0.5 * X[:, 0]


@pytest.fixture(scope="module")
def small_gp():
    """The default GP (a hyperparameter mixture) on 40 noisy points of a 2-D function."""
    rng = np.random.default_rng(0)
    X = rng.random((40, 2))
    y = _f(X) + 0.05 * rng.normal(size=40)
    return GPSurrogate(random_state=0).fit(X, y), X, y


def _chunks(pool, sizes):
    start = 0
    for size in sizes:
        yield pool[start : start + size]
        start += size
    if start < len(pool):
        yield pool[start:]


def test_streaming_top_k_equals_top_k_of_the_whole_pool(small_gp):
    model, _, _ = small_gp
    rng = np.random.default_rng(1)
    pool = rng.random((12_000, 2))
    pool[5000:5100] = pool[:100]  # repeated rows: tied scores, broken by stream position
    mean, std = model.predict(pool, return_std=True, observation_noise=True)
    for score, scores in [("ucb", mean + 2.0**0.5 * std), ("mean", -mean)]:
        top = stream_top_k(model, _chunks(pool, [1000, 777, 3000, 1, 2500]), 60,
                           score=score, beta=2.0, maximize=score == "ucb")
        whole = best_rows(scores, 60)
        assert top.indices.tolist() == whole.tolist()
        assert np.allclose(top.scores, scores[whole])
        assert np.array_equal(top.X, pool[whole])
        assert top.n_seen == len(pool)
    # ties: a repeated row keeps its first position
    assert best_rows(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 2).tolist() == [1, 2]


def test_streaming_keeps_the_raw_candidates_it_featurizes(small_gp):
    model, _, _ = small_gp
    candidates = [(i, j) for i in range(100) for j in range(50)]  # raw items, not features

    def featurize(chunk):
        return np.array([[i / 100, j / 50] for i, j in chunk])

    top = stream_top_k(model, _chunks(candidates, [700] * 7), 10, featurize=featurize)
    X = featurize(candidates)
    mean, std = model.predict(X, return_std=True, observation_noise=True)
    assert top.indices.tolist() == best_rows(mean + std, 10).tolist()
    assert top.items == [candidates[i] for i in top.indices]
    streamed_mean, streamed_std = predict_stream(model, _chunks(candidates, [999] * 6),
                                                 featurize=featurize)
    plain_mean, plain_std = model.predict(X, return_std=True)
    assert np.allclose(streamed_mean, plain_mean) and np.allclose(streamed_std, plain_std)


@pytest.mark.parametrize("kind", ["pucb", "explore", "ptop"])
def test_a_shortlisted_large_pool_picks_what_the_whole_pool_greedy_picks(small_gp, kind,
                                                                         monkeypatch):
    """pucb and explore: exactly the same picks (a row's score only falls as the batch is
    conditioned on); ptop: the same first pick, and almost always the same batch."""
    model, X, y = small_gp
    pool = np.random.default_rng(2).random((3000, 2))
    pending = pool[:2]
    whole, whole_values = select_batch(model, pool, y, 8, kind=kind, pending=pending, seed=0,
                                       X_train=X)
    monkeypatch.setattr(batch, "LARGE_POOL", 500)
    monkeypatch.setattr(batch, "SHORTLIST", 64)
    large, large_values = select_batch(model, pool, y, 8, kind=kind, pending=pending, seed=0,
                                       X_train=X)
    assert large[0] == whole[0]
    if kind == "ptop":
        assert len(set(large) & set(whole)) >= 6
        assert np.allclose(large_values[0], whole_values[0], rtol=1e-6)
    else:
        assert large.tolist() == whole.tolist()
        assert np.allclose(large_values, whole_values)


def test_selection_from_a_large_pool_returns_a_valid_batch():
    """The default strategy on 1,100 results (a sparse GP) picks 16 of 30,000 rows."""
    rng = np.random.default_rng(3)
    X = rng.random((1100, 2))
    y = _f(X) + 0.05 * rng.normal(size=len(X))
    pool = rng.random((30_000, 2))
    pending = pool[[7, 19]]
    strategy = Strategy()
    model = strategy.fit(X, y, seed=0, X_pool=pool)
    assert isinstance(model.model_, SparseGP) and len(pool) > LARGE_POOL
    picked, values = select_batch(model, pool, y, 16, kind="ptop", pending=pending, seed=0,
                                  X_train=X)
    assert len(set(picked.tolist())) == 16
    assert picked.min() >= 0 and picked.max() < len(pool)
    assert not {7, 19} & set(picked.tolist())
    assert np.all((values > 0) & (values <= 1))
    # the picks are predicted well above the pool's typical row, and spread out
    mean = model.predict(pool)
    assert np.median(mean[picked]) > np.quantile(mean, 0.9)
    distances = np.linalg.norm(pool[picked][:, None] - pool[picked][None], axis=-1)
    assert distances[np.triu_indices(16, 1)].min() > 0
    selection = strategy.select(X, y, pool, 16, seed=0, pending=pending)
    assert selection.indices.tolist() == picked.tolist()
    assert np.all(np.isfinite(selection.mean)) and np.all(selection.std > 0)


def test_pending_rows_are_found_in_a_long_pool_chunk_by_chunk():
    rng = np.random.default_rng(4)
    pool = rng.integers(0, 3, size=(300_000, 3)).astype(float)
    pending = pool[[5, 123_456]]
    rows = rows_not_pending(pool, pending)
    naive = ~np.zeros(len(pool), dtype=bool)
    for p in pending:
        naive &= ~(pool == p).all(axis=1)
    assert rows.tolist() == np.flatnonzero(naive).tolist()


def test_pareto_batch_works_with_sparse_gps():
    """Above the exact limit each objective's GP is sparse; qLogNEHVI still picks a batch."""
    from matforge.engine.acquisition.multiobjective import select_pareto_batch

    rng = np.random.default_rng(5)
    X = rng.random((1050, 2))
    Y = np.column_stack([_f(X), np.cos(3 * X[:, 0]) - X[:, 1]]) + 0.05 * rng.normal(size=(1050, 2))
    models = [GPSurrogate(random_state=0, n_inducing=40).fit(X, Y[:, j]) for j in range(2)]
    assert all(isinstance(m.model_, SparseGP) for m in models)
    pool = rng.random((300, 2))
    picked, values = select_pareto_batch(models, pool, Y[:80], X[:80], 3, seed=0,
                                         pending=pool[:1])
    assert len(set(picked.tolist())) == 3 and 0 not in picked.tolist()
    assert np.all(np.isfinite(values))
