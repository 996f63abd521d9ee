"""The surrogate contract every model implements, built-in or plug-in.

A surrogate follows scikit-learn: ``__init__`` stores hyperparameters only,
``fit`` returns ``self``, learned state ends in ``_``, and
``predict(X, return_std=True)`` gives mean and standard deviation in the units
of ``y``. For the acquisitions it also exposes, through methods rather than
attributes callers probe, the fitted BoTorch model, the scale that model
predicts in, and what ``ptop`` scores; a surrogate that transforms its targets
or averages several fits (a hyperparameter mixture) says so here, and a
wrapper (model selection, recalibration) forwards all of it.

Plug-ins register a subclass under the entry-point group ``matforge.surrogates``.
"""

from __future__ import annotations

import abc

import numpy as np
from scipy.stats import norm


class Surrogate(abc.ABC):
    """A regression model that knows its uncertainty.

    Subclasses implement :meth:`fit` and :meth:`predict`, and set ``model_`` to a
    fitted BoTorch ``Model`` when BoTorch acquisitions should drive them.
    """

    @abc.abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, bounds: np.ndarray | None = None) -> Surrogate:
        """Fit to X : (n_samples, n_features), y : (n_samples,); returns self.

        ``bounds`` : (2, n_features), the box of every row the model will be
        asked about (training rows and the candidates to screen); models that
        normalize their inputs use it, others may ignore it.
        """

    @abc.abstractmethod
    def predict(self, X: np.ndarray, return_std: bool = False, observation_noise: bool = False):
        """Mean (and standard deviation) at X : (n, n_features), arrays of shape (n,).

        ``observation_noise``: the spread of a new measurement rather than of the
        underlying function, for models that tell the two apart.
        """

    def botorch_model(self):
        """The fitted BoTorch model the BoTorch acquisitions use, predicting in
        :meth:`to_model_scale`'s scale."""
        try:
            return self.model_
        except AttributeError:
            raise ValueError(
                f"{type(self).__name__} exposes no fitted BoTorch model (`model_`); fit it first"
            ) from None

    def acquisition_model(self):
        """What ``ptop`` scores: the BoTorch model, or a mixture of fits where the
        surrogate averages several."""
        return self.botorch_model()

    def to_model_scale(self, y: np.ndarray) -> np.ndarray:
        """Objective values, shape (n,), in the scale :meth:`botorch_model` predicts
        (thresholds such as EI's incumbent must pass through it)."""
        return np.asarray(y, dtype=float)

    def predict_interval(self, X: np.ndarray, level: float = 0.9):
        """Central ``level`` interval of a new measurement at X, arrays (lower, upper) of
        shape (n,); Gaussian around :meth:`predict` unless the model knows better."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        mean, std = self.predict(X, return_std=True, observation_noise=True)
        half = norm.ppf(0.5 + level / 2) * std
        return mean - half, mean + half


class WrappedSurrogate(Surrogate):
    """A surrogate that delegates the acquisitions' view to a fitted inner surrogate
    (``surrogate_``): model selection, recalibration."""

    def botorch_model(self):
        return self.surrogate_.botorch_model()

    def acquisition_model(self):
        return self.surrogate_.acquisition_model()

    def to_model_scale(self, y: np.ndarray) -> np.ndarray:
        return self.surrogate_.to_model_scale(y)
