from __future__ import annotations

import numpy as np

from matforge.engine.loop.anomaly import flag_anomalies, residual_scores


def test_a_planted_surprise_is_flagged_and_ordinary_results_are_not():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 20))
    residuals = rng.normal(size=60)
    residuals[17] = 15.0  # the surrogate was wildly wrong here
    X[42] += 25.0  # far from every other result in feature space
    flagged = flag_anomalies(X, residuals)
    assert flagged[17] and flagged[42]
    assert flagged.sum() <= 4


def test_too_few_results_flag_nothing():
    assert not flag_anomalies(np.zeros((3, 5)), np.zeros(3)).any()


def test_residual_scores_without_prediction_are_zero():
    z = residual_scores(np.array([1.0, 2.0]), np.array([np.nan, 1.0]), np.array([np.nan, 0.5]))
    np.testing.assert_allclose(z, [0.0, 2.0])
