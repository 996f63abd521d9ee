"""Large training sets and pools: the sparse GP above the exact limit, chunked prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matforge.engine.models.gp import EXACT_MAX, GPSurrogate, HyperparameterMixture, kernel_matrix
from matforge.engine.models.sparse import SPARSE_CHUNK_ELEMENTS, SparseGP, greedy_inducing


def _data(n, seed=0, noise=0.15, d=3):
    rng = np.random.default_rng(seed)
    X = rng.random((n, d))
    f = np.sin(4 * X[:, 0]) + X[:, 1] ** 2
    return X, f + noise * rng.normal(size=n)


@pytest.fixture(scope="module")
def sparse():
    """The default GP on 1,500 points: above the exact limit, so sparse by itself."""
    X, y = _data(1500)
    return GPSurrogate(random_state=0).fit(X, y), X, y


def test_above_the_exact_limit_the_gp_turns_sparse_by_itself(sparse):
    model, X, y = sparse
    assert len(y) > EXACT_MAX == GPSurrogate().exact_max
    assert isinstance(model.model_, SparseGP)
    assert model.mixture_ is None and model.acquisition_model() is model.model_
    assert model.model_.n_inducing == model.n_inducing
    # at the limit it is still exact, as every benchmarked campaign below it is
    exact = GPSurrogate(random_state=0, exact_max=40, hyperparameter_samples=0).fit(X[:40], y[:40])
    assert isinstance(exact.mixture_, HyperparameterMixture)


def test_sparse_intervals_cover_held_out_measurements_at_their_level(sparse):
    model, _, _ = sparse
    X, y = _data(2000, seed=1)
    lo, hi = model.predict_interval(X, level=0.9)
    inside = np.mean((y >= lo) & (y <= hi))
    assert 0.85 <= inside <= 0.95, inside
    mean = model.predict(X)
    assert np.sqrt(np.mean((mean - y) ** 2)) < 0.2 * y.std() + 0.15


def test_sparse_gp_with_every_input_inducing_is_the_exact_gp():
    """SGPR with the training inputs as inducing inputs is the exact posterior."""
    rng = np.random.default_rng(2)
    U = torch.as_tensor(rng.random((60, 2)))
    r = torch.as_tensor(np.sin(5 * U[:, 0].numpy()) + 0.1 * rng.normal(size=60))
    ls, noise, constant = torch.tensor([0.3, 0.5], dtype=torch.float64), 0.05, 0.1
    K = kernel_matrix("matern", ls[None], U, U)[0]
    model = SparseGP(torch.nn.Identity(), 0.0, 1.0, "matern", ls, noise, constant, U,
                     K @ K.T / noise, K @ (r - constant) / noise)
    test = torch.as_tensor(rng.random((30, 2)))
    k = kernel_matrix("matern", ls[None], U, test)[0]
    A = K + noise * torch.eye(60, dtype=torch.float64)
    exact_mean = constant + k.T @ torch.linalg.solve(A, r - constant)
    exact_var = 1 - (k * torch.linalg.solve(A, k)).sum(0)
    mean, std = model.moments(test)
    assert np.allclose(mean.numpy(), exact_mean.numpy(), atol=1e-4)
    assert np.allclose(std.numpy() ** 2, exact_var.numpy(), atol=1e-4)
    # the joint posterior BoTorch sees has the same marginals
    post = model.posterior(test[:5].unsqueeze(0), observation_noise=True)
    noisy_mean, noisy_std = model.moments(test[:5], observation_noise=True)
    assert np.allclose(post.mean[0, :, 0].numpy(), noisy_mean.numpy())
    assert np.allclose(post.variance[0, :, 0].sqrt().numpy(), noisy_std.numpy())


def test_conditioning_on_its_mean_keeps_the_mean_and_shrinks_the_spread_nearby(sparse):
    model, X, _ = sparse
    gp = model.model_
    far = torch.full((1, 3), 3.0, dtype=torch.float64)  # outside the data: prior spread
    test = torch.cat([far, far + 0.01, torch.as_tensor(X[:20])])
    believer = gp.condition_on_mean(far)
    mean0, std0 = gp.moments(test)
    mean1, std1 = believer.moments(test)
    assert np.allclose(mean1.numpy(), mean0.numpy(), atol=1e-8)
    assert np.all(std1.numpy() <= std0.numpy() + 1e-10)
    assert std1[1] < 0.9 * std0[1]
    # an observation elsewhere moves the mean towards it
    moved = gp.condition_on_observations(far, mean0[:1] + 5 * std0[:1])
    assert moved.moments(far)[0][0] > mean0[0] + std0[0]


def test_greedy_inducing_inputs_are_distinct_and_skip_duplicates():
    rng = np.random.default_rng(3)
    U = torch.as_tensor(np.repeat(rng.random((25, 2)), 4, axis=0))  # each row four times
    chosen = greedy_inducing("matern", torch.tensor([0.2, 0.2], dtype=torch.float64), U, 60)
    assert len(chosen) <= 25
    assert len(np.unique(U[chosen].numpy(), axis=0)) == len(chosen)


@pytest.mark.parametrize("n_train", [30, 1200])
def test_chunked_prediction_equals_prediction_row_block_by_block(n_train):
    """A pool longer than a chunk (a mixture: 8M kernel entries; sparse: 2M) predicts as its
    blocks predicted one by one do."""
    X, y = _data(n_train)
    model = GPSurrogate(random_state=0, n_inducing=30).fit(X, y)
    rng = np.random.default_rng(4)
    pool = rng.random((90_000 if n_train > 1000 else 20_000, 3))
    if n_train > 1000:
        assert len(pool) > SPARSE_CHUNK_ELEMENTS // model.model_.n_inducing  # two chunks
    else:
        assert len(model.mixture_.chunks(len(pool))) == 2
    mean, std = model.predict(pool, return_std=True)
    blocks = [model.predict(pool[i : i + 1000], return_std=True)
              for i in range(0, len(pool), 1000)]
    # equal to round-off: BLAS sums a block of another width in another order, and a small
    # variance is the difference of numbers near 1
    assert np.allclose(mean, np.concatenate([m for m, _ in blocks]), rtol=1e-9, atol=1e-12)
    assert np.allclose(std, np.concatenate([s for _, s in blocks]), rtol=1e-8, atol=1e-12)
    lo, hi = model.predict_interval(pool[:3000])
    lo1, hi1 = model.predict_interval(pool[:1500])
    assert np.allclose(lo[:1500], lo1) and np.allclose(hi[:1500], hi1)


def test_warm_start_refits_the_sparse_gp_from_its_last_hyperparameters(sparse):
    _, X, y = sparse
    model = GPSurrogate(random_state=0, warm_start=True, exact_max=500, n_inducing=40)
    first = model.fit(X[:900], y[:900]).model_
    second = model.fit(X, y).model_
    assert isinstance(second, SparseGP) and second is not first
    assert np.allclose(second.lengthscale.numpy(), first.lengthscale.numpy(), rtol=0.5)
