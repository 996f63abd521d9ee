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
from gpytorch.kernels import InducingPointKernel, MaternKernel, RBFKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood

from matforge.engine.transforms import Y_TRANSFORMS

DTYPE = torch.float64

HYPERPARAMETER_SAMPLES = 16
"""Hyperparameter samples a GP averages its predictions over (0: the MAP fit alone)."""
SAMPLE_MAX = 500
"""Largest training set whose hyperparameters are sampled; above it the data pin them
down and the MAP fit alone is used (the sampler's cost grows as n^3 per step)."""
_SAMPLER_STEPS = 30
_SAMPLER_STEP = 0.25
"""Random-walk Metropolis: steps per chain and proposal width in log-hyperparameter units."""


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

    With few data the hyperparameters are poorly determined, and one MAP fit picks
    one guess: BO then trusts length scales it cannot know. So up to
    ``sample_max`` training points the GP also draws ``hyperparameter_samples``
    hyperparameter sets from their posterior (same priors, random-walk Metropolis
    chains started at the MAP fit) and predicts with the equal mixture of the
    GPs they define (``mixture_``, a :class:`HyperparameterMixture`): a cheap
    fully Bayesian GP. ``predict`` and ``predict_interval`` report the mixture;
    the ``ptop`` acquisition scores it; ``model_`` stays the MAP fit, which the
    BoTorch acquisitions use.

    Parameters
    ----------
    kernel : "matern" (Matérn-5/2) or "rbf"
    y_transform : "copula" maps targets to normal scores by rank before fitting
        (robust to skewed targets and outliers; predictions are mapped back),
        "none" fits them as they are
    exact_max : largest training set fitted by an exact GP
    n_inducing : inducing points of the sparse GP
    hyperparameter_samples : hyperparameter sets averaged over (0: MAP only)
    sample_max : largest training set whose hyperparameters are sampled
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
        hyperparameter_samples: int = HYPERPARAMETER_SAMPLES,
        sample_max: int = SAMPLE_MAX,
        random_state: int | None = None,
    ):
        self.kernel = kernel
        self.y_transform = y_transform
        self.exact_max = exact_max
        self.n_inducing = n_inducing
        self.warm_start = warm_start
        self.hyperparameter_samples = hyperparameter_samples
        self.sample_max = sample_max
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
        if isinstance(self.hyperparameter_samples, bool) or not (
            int(self.hyperparameter_samples) == self.hyperparameter_samples
            and self.hyperparameter_samples >= 0
        ):
            raise ValueError(
                "hyperparameter_samples must be a non-negative integer, "
                f"got {self.hyperparameter_samples!r}"
            )
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
        self.mixture_ = None
        if self.hyperparameter_samples and len(y) <= min(self.sample_max, self.exact_max):
            self.mixture_ = HyperparameterMixture.sample(
                model, train_X, self.kernel, int(self.hyperparameter_samples),
                seed=0 if self.random_state is None else self.random_state,
            )
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
        if self.mixture_ is not None:
            self._check_X(X)
            mean, std = (t.numpy() for t in self.mixture_.moments(as_tensor(X), observation_noise))
            lower = mixture_quantile(mean, std, 0.5 - level / 2)
            upper = mixture_quantile(mean, std, 0.5 + level / 2)
            return self.y_transform_.inverse(lower), self.y_transform_.inverse(upper)
        mean, std = self.predict_latent(X, observation_noise)
        half = norm.ppf(0.5 + level / 2) * std
        return self.y_transform_.inverse(mean - half), self.y_transform_.inverse(mean + half)

    def predict_latent(self, X: np.ndarray, observation_noise: bool = False):
        """Mean and std in the transformed target scale, arrays of shape (n,).

        For a hyperparameter mixture, the mixture's mean and standard deviation.
        """
        self._check_X(X)
        if self.mixture_ is not None:
            mean, std = self.mixture_.moments(as_tensor(X), observation_noise)
            mixed = mean.mean(0)
            var = (std**2 + mean**2).mean(0) - mixed**2
            return mixed.numpy(), var.clamp_min(0).sqrt().numpy()
        with torch.no_grad():
            post = self.model_.posterior(as_tensor(X), observation_noise=observation_noise)
            mean = post.mean.squeeze(-1).numpy()
            std = post.variance.clamp_min(0).sqrt().squeeze(-1).numpy()
        return mean, std

    def _check_X(self, X: np.ndarray) -> None:
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n, {self.n_features_in_}), got {X.shape}")


def mixture_quantile(mean: np.ndarray, std: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of equal mixtures of normals, by bisection.

    ``mean`` and ``std`` have shape (n_components, n); returns shape (n,).
    """
    from scipy.stats import norm

    lo = (mean - 10 * std).min(axis=0)
    hi = (mean + 10 * std).max(axis=0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = norm.cdf((mid - mean) / np.maximum(std, 1e-300)).mean(axis=0) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


class HyperparameterMixture:
    """Equal mixture of exact GPs that share data but not hyperparameters.

    Built by :meth:`sample` from a fitted exact ``SingleTaskGP`` (its input and
    outcome transforms, kernel kind and priors). Component k has length scales
    ``lengthscale[k]``, noise ``noise[k]`` and constant mean ``constant[k]``, all
    in the model's standardized scale; ``moments`` reports each component's
    posterior in the scale the MAP model predicts. Training targets may differ
    per component (``targets`` : (S, n)), which is how :meth:`condition_on_mean`
    lets each component believe its own prediction.
    """

    def __init__(self, input_transform, shift, scale, inputs, targets, kernel, lengthscale, noise,
                 constant):
        self._input_transform, self._shift, self._scale = input_transform, shift, scale
        self.inputs, self.targets = inputs, targets
        self.kernel, self.lengthscale = kernel, lengthscale
        self.noise, self.constant = noise, constant
        self._kernel_module = _batched_kernel(kernel, lengthscale)
        with torch.no_grad():
            self._cholesky, info, self._alpha = _solve_gp(
                self._kernel_module, inputs, targets, noise + 1e-8, constant
            )
        if (info > 0).any():
            raise torch.linalg.LinAlgError(
                "a mixture component's kernel matrix is not positive definite"
            )

    @property
    def n_components(self) -> int:
        return len(self.noise)

    @classmethod
    def sample(
        cls, model, train_X: torch.Tensor, kernel: str, n_samples: int, seed: int = 0
    ) -> HyperparameterMixture | None:
        """Hyperparameter samples of an exact ``SingleTaskGP`` fitted by MAP.

        ``n_samples`` random-walk Metropolis chains on (log length scales, log
        noise, constant mean), started at the MAP values, target the posterior
        under the model's own priors (the marginal likelihood times the length
        scale and noise priors); each chain's last state is one component.
        The kernel has unit prior variance (BoTorch's default, on standardized
        outcomes). Returns None where the MAP values themselves give no finite
        posterior (nothing to sample around).
        """
        generator = torch.Generator().manual_seed(int(seed) % 2**63)
        with torch.no_grad():
            inputs = model.input_transform(train_X)
            targets = model.train_targets.detach().reshape(1, -1)
            d = inputs.shape[-1]
            covar = model.covar_module
            start = torch.cat([
                covar.lengthscale.detach().reshape(-1).log(),
                model.likelihood.noise.detach().reshape(1).log(),
                model.mean_module.constant.detach().reshape(1),
            ])
            ls_prior = getattr(covar, "lengthscale_prior", None)
            noise_prior = getattr(model.likelihood.noise_covar, "noise_prior", None)
            ls_floor = float(covar.raw_lengthscale_constraint.lower_bound)
            kernel_module = _batched_kernel(kernel, torch.ones(n_samples, d, dtype=DTYPE))

            def log_posterior(theta):
                log_ls, log_noise, constant = theta[:, :d], theta[:, d], theta[:, d + 1]
                ls, noise = log_ls.exp(), log_noise.exp()
                kernel_module.lengthscale = ls.unsqueeze(-2)
                L, info, alpha = _solve_gp(kernel_module, inputs, targets, noise, constant)
                value = -0.5 * ((targets - constant[:, None]) * alpha.squeeze(-1)).sum(-1)
                value = value - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
                # priors on positive values, as densities of their logs
                if ls_prior is not None:
                    value = value + (ls_prior.log_prob(ls) + log_ls).sum(-1)
                if noise_prior is not None:
                    value = value + noise_prior.log_prob(noise) + log_noise
                bad = (info > 0) | (ls < ls_floor).any(-1) | (noise < 1e-6) | ~torch.isfinite(value)
                return value.masked_fill(bad, -torch.inf)

            theta = start.expand(n_samples, -1).clone()
            current = log_posterior(theta)
            if not torch.isfinite(current).all():
                return None
            for _ in range(_SAMPLER_STEPS):
                step = torch.randn(theta.shape, generator=generator, dtype=DTYPE)
                proposal = theta + _SAMPLER_STEP * step
                proposed = log_posterior(proposal)
                u = torch.rand(n_samples, generator=generator, dtype=DTYPE)
                accept = u.log() < proposed - current
                theta = torch.where(accept[:, None], proposal, theta)
                current = torch.where(accept, proposed, current)
        return cls(
            model.input_transform,
            model.outcome_transform.means.reshape(()).detach(),
            model.outcome_transform.stdvs.reshape(()).detach(),
            inputs, targets.expand(n_samples, -1).clone(), kernel,
            theta[:, :d].exp(), theta[:, d].exp(), theta[:, d + 1],
        )

    def _standardized(self, U: torch.Tensor, observation_noise: bool):
        """Each component's mean and std at already transformed inputs U, standardized scale."""
        with torch.no_grad():
            cross = self._kernel_module(self.inputs, U).to_dense()  # (S, n, m)
            mean = self.constant[:, None] + (cross * self._alpha).sum(-2)
            v = torch.linalg.solve_triangular(self._cholesky, cross, upper=False)
            var = (1.0 - (v**2).sum(-2)).clamp_min(1e-12)
            if observation_noise:
                var = var + self.noise[:, None]
        return mean, var.sqrt()

    def moments(self, X: torch.Tensor, observation_noise: bool = False):
        """Each component's posterior mean and std at X : (m, n_features), two (S, m) tensors,
        in the MAP model's scale; ``observation_noise`` adds each component's noise."""
        with torch.no_grad():
            U = self._input_transform(X)
        mean, std = self._standardized(U, observation_noise)
        return self._shift + self._scale * mean, self._scale * std

    def condition_on_mean(self, X: torch.Tensor) -> HyperparameterMixture:
        """The mixture with each component's own posterior mean at X : (m, n_features)
        added to its data (a "kriging believer" per component)."""
        with torch.no_grad():
            U = self._input_transform(X)
        mean, _ = self._standardized(U, False)
        return HyperparameterMixture(
            self._input_transform, self._shift, self._scale,
            torch.cat([self.inputs, U]), torch.cat([self.targets, mean], dim=-1),
            self.kernel, self.lengthscale, self.noise, self.constant,
        )


def _solve_gp(kernel_module, inputs, targets, noise, constant):
    """Cholesky factor of K + noise I, its failure flags and (K + noise I)^-1 (targets - constant),
    one per component: shapes (S, n, n), (S,), (S, n, 1)."""
    K = kernel_module(inputs, inputs).to_dense()
    K = K + noise[:, None, None] * torch.eye(len(inputs), dtype=DTYPE)
    L, info = torch.linalg.cholesky_ex(K)
    alpha = torch.cholesky_solve((targets - constant[:, None]).unsqueeze(-1), L)
    return L, info, alpha


def _batched_kernel(kind: str, lengthscale: torch.Tensor):
    """A Matérn-5/2 or RBF kernel with one set of ARD length scales per batch member."""
    S, d = lengthscale.shape
    cls = MaternKernel if kind == "matern" else RBFKernel
    kwargs = {"nu": 2.5} if kind == "matern" else {}
    module = cls(ard_num_dims=d, batch_shape=torch.Size([S]), **kwargs).to(DTYPE)
    module.lengthscale = lengthscale.unsqueeze(-2)
    return module


def _copy_hyperparameters(source, target) -> None:
    """Start ``target``'s fit from ``source``'s kernel, noise and mean hyperparameters."""
    names = ("covar_module", "likelihood", "mean_module")
    state = {k: v for k, v in source.state_dict().items() if k.split(".")[0] in names}
    target.load_state_dict(state, strict=False)
