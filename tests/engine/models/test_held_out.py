"""Leave-one-out quality of a fitted GP, read from its Cholesky factors: the same as
conditioning each component on the other points, at a fraction of K-fold's refits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matforge.engine.models.gp import GPSurrogate, HyperparameterMixture, as_tensor
from matforge.engine.models.held_out import gp_held_out, leave_one_out


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 3))
    y = np.sin(4 * X[:, 0]) + X[:, 1] ** 2 + 0.1 * rng.standard_normal(n)
    return X, y


@pytest.mark.parametrize("samples", [0, 4])
def test_leave_one_out_equals_each_component_conditioned_on_the_others(samples):
    X, y = _data(25)
    model = GPSurrogate(measurement_noise="likelihood", hyperparameter_samples=samples,
                        random_state=0).fit(X, y)
    mixture = model.mixture_
    means, stds = leave_one_out(mixture)
    assert means.shape == stds.shape == (max(samples, 1), 25)
    for i in (0, 7, 24):
        others = torch.arange(25) != i
        without = HyperparameterMixture(
            mixture._input_transform, mixture._shift, mixture._scale, mixture.inputs[others],
            mixture.targets[:, others], mixture.kernel, mixture.lengthscale, mixture.noise,
            mixture.constant, mixture.noise_scale[others])
        mean, std = without.moments(as_tensor(X[i:i + 1]), observation_noise=True)
        assert means[:, i].numpy() == pytest.approx(mean[:, 0].numpy(), rel=1e-5, abs=1e-6)
        assert stds[:, i].numpy() == pytest.approx(std[:, 0].numpy(), rel=1e-5, abs=1e-6)


def test_held_out_metrics_are_honest_on_data_the_gp_describes():
    X, y = _data(200, seed=1)
    model = GPSurrogate(random_state=0).fit(X, y)
    metrics = gp_held_out(model, y)
    assert set(metrics) >= {"rmse", "mae", "nll", "coverage90", "miscalibration_area"}
    assert 0.08 < metrics["rmse"] < 0.2  # the noise is 0.1
    assert 0.8 <= metrics["coverage90"] <= 0.97
    # a model that is told nothing about the function (constant targets elsewhere) is not
    # credited with it: shuffled targets predict badly
    shuffled = np.random.default_rng(2).permutation(y)
    worse = gp_held_out(GPSurrogate(random_state=0).fit(X, shuffled), shuffled)
    assert worse["rmse"] > 2 * metrics["rmse"]


def test_a_sparse_gp_has_no_closed_form_and_says_so():
    X, y = _data(60)
    model = GPSurrogate(exact_max=50, n_inducing=20, random_state=0).fit(X, y)
    assert model.mixture_ is None and gp_held_out(model, y) is None
