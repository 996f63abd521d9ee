"""Cheap surrogates: a random forest, a Bayesian linear baseline, and a feasibility classifier.

The forest and the linear model expose BoTorch models as ``model_`` so the same
acquisition functions run on them as on the GP. The classifier gives the
probability that a candidate satisfies an outcome condition (for example a
negative formation energy), to multiply into expected improvement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from botorch.models.ensemble import EnsembleModel
from botorch.models.model import Model
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import BayesianRidge, LogisticRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from matforge.engine.models.base import Surrogate
from matforge.engine.models.gp import DTYPE, as_tensor
from matforge.engine.models.metrics import check_training_data

STD_FLOOR = 1e-3
"""Smallest forest std, as a fraction of the training target's std: trees that all
agree still do not know a point exactly, and a zero std makes the NLL infinite."""

MAX_LOO_ROWS = 500
"""Above this many rows the classifier's held-out check is LARGE_N_FOLDS-fold, not
leave-one-out: one logistic fit per row would take tens of seconds at 2000 rows, and
the two estimates barely differ at that size."""

LARGE_N_FOLDS = 10


def _check_predict_input(X, n_features: int) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"X must have shape (n, {n_features}), got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return X


class ForestEnsembleModel(EnsembleModel):
    """BoTorch view of a fitted scikit-learn forest: one posterior sample per tree.

    ``forward`` maps ``batch x q x d`` to ``batch x n_trees x q x 1``. Trees are
    piecewise constant, so the posterior has no useful gradient in X: use it with
    discrete optimization (``optimize_acqf_discrete``), not gradient-based
    ``optimize_acqf``.
    """

    def __init__(self, forest: RandomForestRegressor):
        super().__init__()
        self.forest = forest
        self._num_outputs = 1

    def forward(self, X: Tensor) -> Tensor:
        batch_shape, q, d = X.shape[:-2], X.shape[-2], X.shape[-1]
        flat = X.detach().reshape(-1, d).cpu().numpy()
        per_tree = np.stack([tree.predict(flat) for tree in self.forest.estimators_])
        values = torch.as_tensor(per_tree, dtype=X.dtype, device=X.device)
        values = values.reshape(len(per_tree), *batch_shape, q).movedim(0, -2)
        return values.unsqueeze(-1)


class RandomForestSurrogate(Surrogate):
    """Random forest regression; the std is the spread of the trees' predictions.

    Parameters
    ----------
    n_estimators : number of trees
    min_samples_leaf : fewest training rows in a leaf
    random_state : seed for bootstrap samples and split features
    """

    def __init__(
        self,
        n_estimators: int = 100,
        min_samples_leaf: int = 1,
        random_state: int | None = None,
    ):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, bounds=None) -> RandomForestSurrogate:
        """Fit to X : array of shape (n_samples, n_features), y : shape (n_samples,)."""
        X, y = check_training_data(X, y, min_rows=2)
        forest = RandomForestRegressor(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            random_state=self.random_state,
            n_jobs=1,
        ).fit(X, y)
        self.forest_ = forest
        self.model_ = ForestEnsembleModel(forest).eval()
        self.std_floor_ = STD_FLOOR * (float(y.std()) or 1.0)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray, return_std: bool = False, observation_noise: bool = False):
        """Mean over trees (and their std, at least ``std_floor_``) at X : (n, n_features).

        Returns arrays of shape (n,).
        """
        X = _check_predict_input(X, self.n_features_in_)
        per_tree = np.stack([tree.predict(X) for tree in self.forest_.estimators_])
        mean = per_tree.mean(axis=0)
        if not return_std:
            return mean
        return mean, np.maximum(per_tree.std(axis=0), self.std_floor_)


class BayesianLinearModel(Model):
    """BoTorch posterior of a fitted ``BayesianRidge`` on standardized inputs.

    The posterior over the latent linear function at ``batch x q x d`` inputs is
    Gaussian with mean ``x w + b`` and covariance ``x S x^T`` (S the weights'
    posterior covariance), without observation noise, as a GP's posterior is.
    """

    def __init__(self, regressor: BayesianRidge, x_mean: np.ndarray, x_scale: np.ndarray):
        super().__init__()
        self.register_buffer("x_mean", as_tensor(x_mean))
        self.register_buffer("x_scale", as_tensor(x_scale))
        self.register_buffer("x_offset", as_tensor(regressor.X_offset_))
        self.register_buffer("coef", as_tensor(regressor.coef_))
        self.register_buffer("sigma", as_tensor(regressor.sigma_))
        self.intercept = float(regressor.intercept_)
        # a rank-d covariance is singular for q > d; this jitter keeps sampling defined
        self.jitter = 1e-8 / float(regressor.alpha_)
        self._num_outputs = 1

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform=None,
        **kwargs: Any,
    ) -> GPyTorchPosterior:
        Z = (X.to(DTYPE) - self.x_mean) / self.x_scale - self.x_offset
        mean = Z @ self.coef + self.intercept
        cov = Z @ self.sigma @ Z.transpose(-1, -2)
        cov = cov + self.jitter * torch.eye(X.shape[-2], dtype=DTYPE, device=X.device)
        posterior = GPyTorchPosterior(MultivariateNormal(mean, cov))
        if posterior_transform is not None:
            return posterior_transform(posterior)
        return posterior


class RidgeSurrogate(Surrogate):
    """Bayesian linear regression (scikit-learn ``BayesianRidge``) on standardized inputs.

    A baseline: if a GP or forest cannot beat it in cross-validation, the
    features carry little more than a linear trend. ``predict`` std includes the
    fitted noise; ``model_`` is the noise-free posterior of the linear function.

    Parameters
    ----------
    random_state : unused (the fit is deterministic); kept so every surrogate
        takes the same arguments
    """

    def __init__(self, random_state: int | None = None):
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, bounds=None) -> RidgeSurrogate:
        """Fit to X : array of shape (n_samples, n_features), y : shape (n_samples,)."""
        X, y = check_training_data(X, y, min_rows=2)
        self.scaler_ = StandardScaler().fit(X)
        self.regressor_ = BayesianRidge().fit(self.scaler_.transform(X), y)
        scale = self.scaler_.scale_
        self.model_ = BayesianLinearModel(self.regressor_, self.scaler_.mean_, scale).eval()
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray, return_std: bool = False, observation_noise: bool = False):
        """Predictive mean (and std, noise included) at X : (n, n_features); shape (n,)."""
        X = _check_predict_input(X, self.n_features_in_)
        return self.regressor_.predict(self.scaler_.transform(X), return_std=return_std)


class FeasibilityClassifier:
    """Probability that a candidate satisfies ``y < threshold`` (or ``y > threshold``).

    Standardized inputs into an L2-regularized logistic regression. At fit time
    every row is predicted by a model trained without it (leave-one-out; 10-fold
    above ``MAX_LOO_ROWS`` rows, see ``cv_folds_``), which gives ``loo_proba_``,
    ``loo_accuracy_`` and ``loo_log_loss_``: check them before trusting the
    classifier as an acquisition constraint (expected improvement times
    probability feasible).

    When every training row is feasible, or none is, there is nothing to
    discriminate: the probability is the constant ``(n_feasible + 1) / (n + 2)``
    (Laplace's rule of succession) for every candidate.

    Parameters
    ----------
    threshold : the outcome bound, e.g. 0.0 for "formation energy below 0"
    below : True if feasible means ``y < threshold``, False for ``y > threshold``
    C : inverse regularization strength of the logistic regression
    random_state : passed to the logistic regression
    """

    def __init__(
        self,
        threshold: float,
        below: bool = True,
        C: float = 1.0,
        random_state: int | None = None,
    ):
        self.threshold = threshold
        self.below = below
        self.C = C
        self.random_state = random_state

    def feasible(self, y) -> np.ndarray:
        """Boolean feasibility labels of shape (n,) for outcomes y of shape (n,).

        A boolean y is taken as the labels themselves.
        """
        y = np.asarray(y)
        if y.dtype == bool:
            return y.ravel()
        y = np.asarray(y, dtype=float).ravel()
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values")
        return y < self.threshold if self.below else y > self.threshold

    def _fit_one(self, X: np.ndarray, labels: np.ndarray):
        """A fitted (scaler, classifier), or the constant probability for one class."""
        n_feasible = int(labels.sum())
        if n_feasible in (0, len(labels)):
            return (n_feasible + 1) / (len(labels) + 2)
        scaler = StandardScaler().fit(X)
        # Newton-Cholesky: exact and several times faster than lbfgs on the few-hundred-row,
        # few-dozen-feature problems a campaign has, which matters with one fit per LOO row
        classifier = LogisticRegression(
            C=self.C, solver="newton-cholesky", random_state=self.random_state
        )
        return scaler, classifier.fit(scaler.transform(X), labels)

    @staticmethod
    def _proba(fitted, X: np.ndarray) -> np.ndarray:
        if isinstance(fitted, float):
            return np.full(len(X), fitted)
        scaler, classifier = fitted
        return classifier.predict_proba(scaler.transform(X))[:, 1]

    def fit(self, X: np.ndarray, y) -> FeasibilityClassifier:
        """Fit to X : array of shape (n_samples, n_features) and y of shape (n_samples,).

        y holds outcome values, compared with ``threshold``, or booleans that
        already say which rows are feasible.
        """
        labels = self.feasible(y)
        X, _ = check_training_data(X, labels.astype(float), min_rows=1)
        n = len(labels)
        n_folds = n if n <= MAX_LOO_ROWS else LARGE_N_FOLDS
        loo = np.full(n, 0.5)  # a single row has nothing to learn from: a coin flip
        if n > 1:
            folds = KFold(n_splits=n_folds, shuffle=True, random_state=self.random_state)
            for train, test in folds.split(X):
                loo[test] = self._proba(self._fit_one(X[train], labels[train]), X[test])
        p = np.clip(loo, 1e-15, 1 - 1e-15)
        self.cv_folds_ = n_folds
        self.loo_proba_ = loo
        self.loo_accuracy_ = float(np.mean((loo >= 0.5) == labels))
        self.loo_log_loss_ = float(-np.mean(np.where(labels, np.log(p), np.log1p(-p))))
        self.fitted_ = self._fit_one(X, labels)
        self.one_class_ = isinstance(self.fitted_, float)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability that each row of X : (n, n_features) is feasible; shape (n,).

        Unlike scikit-learn classifiers this returns one column, the feasible class.
        """
        X = _check_predict_input(X, self.n_features_in_)
        return self._proba(self.fitted_, X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Whether each row of X : (n, n_features) is more likely feasible than not."""
        return self.predict_proba(X) >= 0.5
