"""Surrogate models that know their uncertainty.

Every surrogate follows scikit-learn: ``__init__`` stores hyperparameters only,
``fit(X, y)`` returns ``self``, ``predict(X, return_std=True)`` gives mean and
standard deviation, learned state ends in ``_``. Surrogates that BoTorch can
drive directly expose the fitted BoTorch model as ``model_``.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood

DTYPE = torch.float64


def as_tensor(X: np.ndarray) -> torch.Tensor:
    """Return ``X`` as a double-precision torch tensor."""
    return torch.as_tensor(np.asarray(X, dtype=float), dtype=DTYPE)


class GPSurrogate:
    """Exact Gaussian process (BoTorch ``SingleTaskGP``) with ARD Matérn-5/2.

    Inputs are normalized to the unit cube and outcomes standardized inside the
    model, so predictions come back in the units of ``y``.

    Parameters
    ----------
    random_state : int or None
        Seed for the hyperparameter optimizer's restarts.
    """

    def __init__(self, random_state: int | None = None):
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> GPSurrogate:
        """Fit to X : array of shape (n_samples, n_features), y : shape (n_samples,)."""
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float).ravel()
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X has shape {X.shape} but y has {len(y)} values")
        if len(y) < 2:
            raise ValueError(f"a GP needs at least 2 training points, got {len(y)}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("training data contains NaN or infinite values")
        if self.random_state is not None:
            torch.manual_seed(self.random_state)
        train_X = as_tensor(X)
        train_Y = as_tensor(y).unsqueeze(-1)
        model = SingleTaskGP(
            train_X,
            train_Y,
            input_transform=Normalize(d=X.shape[1]),
            outcome_transform=Standardize(m=1),
        )
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        fit_gpytorch_mll(mll)
        model.eval()
        self.model_ = model
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray, return_std: bool = False):
        """Posterior mean (and standard deviation) at X : array (n, n_features)."""
        with torch.no_grad():
            post = self.model_.posterior(as_tensor(X))
            mean = post.mean.squeeze(-1).numpy()
            std = post.variance.clamp_min(0).sqrt().squeeze(-1).numpy()
        return (mean, std) if return_std else mean
