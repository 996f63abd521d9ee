"""Monotone transforms of the objective before a surrogate sees it.

Materials targets are often skewed (conductivities over decades, instability
indices with a long tail): a GP fitted to raw values spends its length scales
on the tail. :class:`GaussianCopula` maps values to normal scores by rank
(a Gaussian copula, as in HEBO and "copula-based" BO), which keeps the order of
the data, the only thing optimization needs, and makes the marginal Gaussian.
Its inverse maps predictions back to the units of the data.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata


class GaussianCopula:
    """Rank-based normal-score transform with a piecewise-linear monotone inverse.

    ``fit(y)`` stores the sorted data; ``transform`` maps any value to a normal
    score by interpolating its rank (ties share their mean rank); ``inverse``
    maps scores back, extrapolating linearly beyond the data.
    """

    def fit(self, y: np.ndarray) -> GaussianCopula:
        y = np.asarray(y, dtype=float).ravel()
        if len(y) < 2:
            raise ValueError(f"a copula transform needs at least 2 values, got {len(y)}")
        if not np.isfinite(y).all():
            raise ValueError("cannot transform NaN or infinite objective values")
        n = len(y)
        scores = norm.ppf((rankdata(y) - 0.5) / n)
        # one knot per distinct value: its mean normal score
        self.knots_y_, inverse = np.unique(y, return_inverse=True)
        self.knots_z_ = np.bincount(inverse, weights=scores) / np.bincount(inverse)
        return self

    def transform(self, y: np.ndarray) -> np.ndarray:
        return self._interp(np.asarray(y, dtype=float), self.knots_y_, self.knots_z_)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return self._interp(np.asarray(z, dtype=float), self.knots_z_, self.knots_y_)

    @staticmethod
    def _interp(x, xp, fp):
        if len(xp) == 1:
            return np.full_like(x, fp[0], dtype=float)
        out = np.interp(x, xp, fp)
        lo, hi = x < xp[0], x > xp[-1]
        out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
        out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        return out


class Identity:
    """No transform (the GP standardizes internally)."""

    def fit(self, y: np.ndarray) -> Identity:
        return self

    def transform(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=float)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=float)


Y_TRANSFORMS = {"copula": GaussianCopula, "none": Identity}
