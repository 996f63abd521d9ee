"""Gaussian-process surrogates that know their uncertainty.

Every surrogate follows scikit-learn: ``__init__`` stores hyperparameters only,
``fit(X, y)`` returns ``self``, ``predict(X, return_std=True)`` gives mean and
standard deviation in the units of ``y``, learned state ends in ``_``.
Surrogates that BoTorch can drive expose the fitted BoTorch model as ``model_``;
it works in the surrogate's internal target scale, which ``transform_targets``
maps training values to (acquisition thresholds such as EI's incumbent must be
given in that scale).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import ChainedInputTransform, FilterFeatures, Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.kernels import InducingPointKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood

from matforge.engine.transforms import Y_TRANSFORMS

DTYPE = torch.float64


def as_tensor(X: np.ndarray) -> torch.Tensor:
    """Return ``X`` as a double-precision torch tensor."""
    return torch.as_tensor(np.asarray(X, dtype=float), dtype=DTYPE)


class GPSurrogate:
    """Gaussian process with an ARD Matérn-5/2 kernel (BoTorch).

    Length scales carry BoTorch's dimension-scaled log-normal prior (Hvarfner et
    al. 2024), which keeps the fit sensible from a handful of points up to tens
    of features; the noise level is learned. Inputs are normalized to the unit
    cube (constant columns are dropped) and outcomes standardized inside the
    model. Above ``exact_max`` training points a sparse GP (SGPR) with
    ``n_inducing`` inducing points (a random subset of the inputs) replaces the exact one, so a fit costs
    O(n m^2) instead of O(n^3).

    Parameters
    ----------
    kernel : "matern" (Matérn-5/2) or "rbf"
    y_transform : "copula" maps targets to normal scores by rank before fitting
        (robust to skewed targets and outliers; predictions are mapped back),
        "none" fits them as they are
    exact_max : largest training set fitted by an exact GP
    n_inducing : inducing points of the sparse GP
    warm_start : start the hyperparameter search from the previous fit's values
        when refitting on data with the same columns (faster sequential refits)
    random_state : seed of the optimizer's restarts and the inducing points
    """

    def __init__(
        self,
        kernel: str = "matern",
        y_transform: str = "copula",
        exact_max: int = 3000,
        n_inducing: int = 256,
        warm_start: bool = False,
        random_state: int | None = None,
    ):
        self.kernel = kernel
        self.y_transform = y_transform
        self.exact_max = exact_max
        self.n_inducing = n_inducing
        self.warm_start = warm_start
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, bounds: np.ndarray | None = None) -> GPSurrogate:
        """Fit to X : (n_samples, n_features), y : (n_samples,).

        ``bounds`` : (2, n_features), the box inputs are normalized over
        (default: the range of X). Pass the range of training data plus the
        candidates to be screened, so both live in the unit cube.
        """
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float).ravel()
        if self.kernel not in ("matern", "rbf"):
            raise ValueError(f"kernel must be 'matern' or 'rbf', got {self.kernel!r}")
        if self.y_transform not in Y_TRANSFORMS:
            raise ValueError(
                f"y_transform must be one of {sorted(Y_TRANSFORMS)}, got {self.y_transform!r}"
            )
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X has shape {X.shape} but y has {len(y)} values")
        if len(y) < 2:
            raise ValueError(f"a GP needs at least 2 training points, got {len(y)}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("training data contains NaN or infinite values")
        if bounds is None:
            bounds = np.stack([X.min(axis=0), X.max(axis=0)])
        bounds = np.asarray(bounds, dtype=float)
        if bounds.shape != (2, X.shape[1]):
            raise ValueError(f"bounds must have shape (2, {X.shape[1]}), got {bounds.shape}")
        if self.random_state is not None:
            torch.manual_seed(self.random_state)

        previous = getattr(self, "model_", None) if self.warm_start else None
        keep = np.flatnonzero(bounds[1] - bounds[0] > 1e-12 * (1 + np.abs(bounds).max(axis=0)))
        if len(keep) == 0:
            keep = np.arange(X.shape[1])  # nothing varies: the GP learns a constant
        self.y_transform_ = Y_TRANSFORMS[self.y_transform]().fit(y)
        z = self.y_transform_.transform(y)
        transform = ChainedInputTransform(
            select=FilterFeatures(feature_indices=torch.as_tensor(keep)),
            normalize=Normalize(d=len(keep), bounds=as_tensor(bounds[:, keep])),
        )
        train_X, train_Y = as_tensor(X), as_tensor(z).unsqueeze(-1)
        covar = get_covar_module_with_dim_scaled_prior(
            ard_num_dims=len(keep), use_rbf_kernel=self.kernel == "rbf"
        )
        if len(y) > self.exact_max:
            # sparse GP (SGPR, Titsias 2009): the kernel through n_inducing points at a
            # random subset of the (normalized) training inputs
            rng = np.random.default_rng(self.random_state)
            start = rng.choice(len(y), size=min(self.n_inducing, len(y)), replace=False)
            with torch.no_grad():
                inducing = transform(train_X[start])
            covar = InducingPointKernel(covar, inducing_points=inducing.clone(),
                                        likelihood=GaussianLikelihood())
            # fixed at spread-out training inputs: hyperparameters alone are optimized,
            # which keeps the fit as cheap as the sparse algebra promises
            covar.inducing_points.requires_grad_(False)
        model = SingleTaskGP(
            train_X, train_Y, covar_module=covar,
            input_transform=transform, outcome_transform=Standardize(m=1),
        )
        if isinstance(covar, InducingPointKernel):
            covar.likelihood = model.likelihood
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        if previous is not None and type(previous) is type(model) and self.keep_.tolist() == keep.tolist():
            _copy_hyperparameters(previous, model)
        with warnings.catch_warnings():
            # a fit that stops at its iteration cap is still a usable fit
            warnings.filterwarnings("ignore", message=".*[Oo]ptimization.*")
            fit_gpytorch_mll(mll)
        model.eval()
        self.model_ = model
        self.keep_ = keep
        self.n_features_in_ = X.shape[1]
        return self

    def transform_targets(self, y: np.ndarray) -> np.ndarray:
        """Objective values in the scale ``model_`` predicts."""
        return self.y_transform_.transform(y)

    def predict(self, X: np.ndarray, return_std: bool = False, observation_noise: bool = False):
        """Mean (and standard deviation) at X : (n, n_features), in the units of y.

        With a copula transform the mean is the back-transformed latent mean
        (a median) and the std half the width of the back-transformed ±1σ interval.
        ``observation_noise`` adds the learned noise (the spread of a new
        measurement rather than of the underlying function).
        """
        mean_z, std_z = self.predict_latent(X, observation_noise)
        inverse = self.y_transform_.inverse
        mean = inverse(mean_z)
        if not return_std:
            return mean
        # half the width of the mapped-back ±1σ interval: exact for the identity,
        # and for a copula it follows the data's spread over the whole interval
        return mean, 0.5 * (inverse(mean_z + std_z) - inverse(mean_z - std_z))

    def predict_interval(self, X: np.ndarray, level: float = 0.9, observation_noise: bool = True):
        """Central ``level`` interval of a new measurement at X, arrays (lower, upper) of shape (n,).

        Computed in the transformed scale, where the prediction is Gaussian, and
        mapped back, so it is exact for the monotone target transform.
        """
        from scipy.stats import norm

        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        mean, std = self.predict_latent(X, observation_noise)
        half = norm.ppf(0.5 + level / 2) * std
        return self.y_transform_.inverse(mean - half), self.y_transform_.inverse(mean + half)

    def predict_latent(self, X: np.ndarray, observation_noise: bool = False):
        """Mean and std in the transformed target scale, arrays of shape (n,)."""
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n, {self.n_features_in_}), got {X.shape}")
        with torch.no_grad():
            post = self.model_.posterior(as_tensor(X), observation_noise=observation_noise)
            mean = post.mean.squeeze(-1).numpy()
            std = post.variance.clamp_min(0).sqrt().squeeze(-1).numpy()
        return mean, std


def _copy_hyperparameters(source, target) -> None:
    """Start ``target``'s fit from ``source``'s kernel, noise and mean hyperparameters."""
    names = ("covar_module", "likelihood", "mean_module")
    state = {k: v for k, v in source.state_dict().items() if k.split(".")[0] in names}
    target.load_state_dict(state, strict=False)
