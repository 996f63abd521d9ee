"""How good a surrogate's uncertainty is: accuracy, calibration, and a recalibrator.

A surrogate drives acquisition through both its mean and its standard deviation,
so it is scored on both: RMSE and MAE for the mean, the Gaussian negative log
likelihood, the 90 % interval coverage and the miscalibration area (Tran et al.
2020, "Methods for comparing uncertainty quantifications for material property
predictions"; uncertainty-toolbox) for the standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import norm
from sklearn.model_selection import KFold

from matforge.engine.models.base import Surrogate, WrappedSurrogate

Z90 = 1.6448536269514722
"""Half-width, in standard deviations, of the central 90 % Gaussian interval."""

CALIBRATION_LEVELS = np.linspace(0.01, 0.99, 99)
"""Nominal central-interval probabilities at which the calibration curve is read."""


def check_training_data(X, y, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Return X as a float array of shape (n, n_features) and y of shape (n,).

    Raises ValueError naming the problem when shapes disagree, there are fewer
    than ``min_rows`` rows, or any value is NaN or infinite. (Own rather than
    scikit-learn's ``check_X_y``: a campaign's log shows the message, and it names
    the array and the problem in one line.)
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise ValueError(f"y must be 1-D (n_samples,), got shape {y.shape}")
    y = y.ravel()
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} values")
    if len(y) < min_rows:
        raise ValueError(f"need at least {min_rows} training rows, got {len(y)}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    if not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinite values")
    return X, y


def _check_predictions(y_true, mean, std) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for name, a in (("y_true", y_true), ("mean", mean), ("std", std)):
        a = np.asarray(a, dtype=float)
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        arrays.append(a)
    y_true, mean, std = arrays
    if not len(y_true) == len(mean) == len(std):
        raise ValueError(
            f"y_true, mean and std must have the same length, got "
            f"{len(y_true)}, {len(mean)} and {len(std)}"
        )
    if len(y_true) == 0:
        raise ValueError("no predictions to score")
    if (std <= 0).any():
        raise ValueError(f"std must be > 0 everywhere; smallest is {std.min():g}")
    return y_true, mean, std


def gaussian_nll(y_true, mean, std) -> float:
    """Mean negative log likelihood of y_true under N(mean, std**2); arrays of shape (n,)."""
    y_true, mean, std = _check_predictions(y_true, mean, std)
    z = (y_true - mean) / std
    return float(np.mean(0.5 * np.log(2 * np.pi) + np.log(std) + 0.5 * z**2))


def calibration_curve(y_true, mean, std, levels: np.ndarray = CALIBRATION_LEVELS):
    """Observed fraction of y_true inside each nominal central interval.

    Parameters
    ----------
    y_true, mean, std : arrays of shape (n,)
    levels : array of shape (n_levels,), nominal probabilities in (0, 1)

    Returns
    -------
    observed : array of shape (n_levels,), fraction of |y - mean| <= q(level) std,
        where q(level) is the standard normal quantile of (1 + level) / 2
    """
    y_true, mean, std = _check_predictions(y_true, mean, std)
    abs_z = np.abs(y_true - mean) / std
    half_widths = norm.ppf(0.5 + np.asarray(levels) / 2)
    return (abs_z[None, :] <= half_widths[:, None]).mean(axis=1)


def miscalibration_area(y_true, mean, std) -> float:
    """Area between the central-interval calibration curve and the diagonal.

    0 for perfect calibration; at most 0.5. The curve is read at
    ``CALIBRATION_LEVELS`` and closed with its exact end points (0, 0) and (1, 1).
    """
    observed = calibration_curve(y_true, mean, std)
    p = np.concatenate([[0.0], CALIBRATION_LEVELS, [1.0]])
    gap = np.abs(np.concatenate([[0.0], observed, [1.0]]) - p)
    return float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(p)))


def uncertainty_metrics(y_true, mean, std) -> dict[str, float]:
    """Score predictions with uncertainty.

    Parameters
    ----------
    y_true, mean, std : arrays of shape (n,); std must be > 0

    Returns
    -------
    dict with ``rmse``, ``mae``, ``nll`` (mean Gaussian negative log likelihood),
    ``coverage90`` (fraction of y_true within mean +/- 1.6449 std) and
    ``miscalibration_area``.
    """
    y_true, mean, std = _check_predictions(y_true, mean, std)
    err = y_true - mean
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "nll": gaussian_nll(y_true, mean, std),
        "coverage90": float(np.mean(np.abs(err) <= Z90 * std)),
        "miscalibration_area": miscalibration_area(y_true, mean, std),
    }


def cross_validate(
    make_model: Callable[[], object],
    X,
    y,
    n_splits: int = 5,
    random_state: int | None = None,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Out-of-fold predictions of a surrogate and their uncertainty metrics.

    Parameters
    ----------
    make_model : callable returning a new unfitted surrogate with
        ``fit(X, y)`` and ``predict(X, return_std=True)``
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples,)
    n_splits : number of folds (shuffled KFold); ``n_samples`` gives leave-one-out
    random_state : seed for the fold shuffle

    Returns
    -------
    metrics : dict from ``uncertainty_metrics`` on the out-of-fold predictions
    mean : array of shape (n_samples,), out-of-fold predicted means
    std : array of shape (n_samples,), out-of-fold predicted standard deviations
    """
    X, y = check_training_data(X, y)
    if not 2 <= n_splits <= len(y):
        raise ValueError(f"n_splits must be between 2 and n_samples={len(y)}, got {n_splits}")
    mean = np.empty(len(y))
    std = np.empty(len(y))
    folds = KFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    for train, test in folds.split(X):
        model = make_model().fit(X[train], y[train])
        mean[test], std[test] = model.predict(X[test], return_std=True)
    # A zero std out of fold (a GP or forest certain of a point it never saw) makes the
    # NLL infinite; score it as a tiny positive std so the model is ranked, not rejected.
    std = np.maximum(std, 1e-12 * max(float(np.std(y)), 1e-300))
    return uncertainty_metrics(y, mean, std), mean, std


class StdRecalibrator:
    """One scale factor for a surrogate's standard deviation.

    Given out-of-fold z-scores z = (y - mean) / std, the factor s that minimizes
    the Gaussian NLL of y under N(mean, (s std)**2) is s = sqrt(mean(z**2)).
    s > 1 widens an overconfident model, s < 1 narrows an underconfident one.
    Use ``fit`` with predictions the model did not train on (``cross_validate``),
    then ``wrap`` the surrogate refitted on all data.
    """

    def fit(self, y_true, mean, std) -> StdRecalibrator:
        """Learn ``scale_`` from y_true, mean, std : arrays of shape (n,)."""
        y_true, mean, std = _check_predictions(y_true, mean, std)
        z = (y_true - mean) / std
        self.scale_ = float(np.sqrt(np.mean(z**2)))
        if self.scale_ == 0:
            # every prediction exact: keep the stds rather than collapse them to zero
            self.scale_ = 1.0
        return self

    def transform(self, std) -> np.ndarray:
        """Recalibrated standard deviation, std * scale_, same shape as std."""
        return np.asarray(std, dtype=float) * self.scale_

    def wrap(self, surrogate) -> RecalibratedSurrogate:
        """The fitted ``surrogate`` with its predicted std multiplied by ``scale_``."""
        return RecalibratedSurrogate(surrogate, self.scale_)


class RecalibratedSurrogate(WrappedSurrogate):
    """A fitted surrogate whose ``predict`` std is multiplied by ``scale``.

    The acquisitions' view (BoTorch model, model scale, mixture) is the wrapped
    surrogate's, unscaled: acquisition functions see the original posterior.

    Parameters
    ----------
    surrogate : fitted surrogate
    scale : positive factor applied to the predicted standard deviation
    """

    def __init__(self, surrogate: Surrogate, scale: float):
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.surrogate = surrogate
        self.scale = scale

    @property
    def surrogate_(self) -> Surrogate:
        return self.surrogate

    def fit(self, X, y, bounds=None) -> RecalibratedSurrogate:
        """Refit the wrapped surrogate on X, y, keeping ``scale``."""
        self.surrogate.fit(X, y, bounds)
        return self

    def predict(self, X, return_std: bool = False, observation_noise: bool = False):
        """Mean (and scaled standard deviation) at X : array (n, n_features)."""
        if not return_std:
            return self.surrogate.predict(X, observation_noise=observation_noise)
        mean, std = self.surrogate.predict(X, return_std=True, observation_noise=observation_noise)
        return mean, std * self.scale
