"""A sparse GP for training sets above the exact GP's limit (SGPR, Titsias 2009).

The exact GP costs O(n^3) to fit and O(n^2) per prediction; with 2,000 training
points and a million candidates that is hours on two cores. The sparse GP
summarizes the data through m inducing inputs: O(n m^2) to fit, O(m^2) per
prediction. :func:`fit_sparse_gp` chooses the inducing inputs among the training
inputs by greedy variance reduction (a pivoted Cholesky factorization of the
kernel matrix, which Burt et al. 2020 show reaches the exact posterior with few
points), at the hyperparameters of an exact GP fitted to a random subset, and
then fits the hyperparameters by Titsias's collapsed variational bound (with
the exact GP's priors) at those inducing inputs.

:class:`SparseGP` is the fitted model, a BoTorch ``Model``: ``posterior`` gives
the joint Gaussian of ``batch x q x d`` inputs for BoTorch's acquisitions,
:meth:`SparseGP.moments` the marginal mean and standard deviation of a whole pool
in chunks, and :meth:`SparseGP.condition_on_observations` conditions the
posterior process on a few more observations exactly (a batch's "kriging
believer"). The predictive covariance is the variational one, k(x, x') - k_x^T
(K_mm^-1 - Sigma) k_x' (Titsias 2009; "DTC" in Quiñonero-Candela & Rasmussen 2005),
which returns to the prior far from the inducing inputs.

Why not GPyTorch's ``InducingPointKernel`` in a ``SingleTaskGP`` (what
``GPSurrogate`` used before): measured here, its fit took 75 s on 2,000 points
and 13 GB on 20,000, and its predictive variance (the Nyström kernel's, "SoR")
vanishes away from the inducing inputs, so candidates far from the data look
certain.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.models.model import Model
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal
from torch import Tensor

DTYPE = torch.float64
JITTER = 1e-6
"""Added to the diagonal of the inducing inputs' (unit-variance) kernel matrix."""
SUBSET = 500
"""Training points of the exact GP whose hyperparameters choose the inducing inputs and
start the sparse fit (its MAP fit took 3 s for 26 features on 2 cores)."""
FIT_MAX = 4000
"""Training rows the sparse GP's hyperparameters are fitted to (all rows enter its
posterior): a few thousand pin down a few dozen hyperparameters, and the bound's cost
grows with the rows (0.9 s an evaluation at 20,000 rows and 256 inducing inputs)."""
_FIT_ITERATIONS = 200
"""Most L-BFGS iterations of a fit."""
CHUNK_ELEMENTS = 1 << 23
"""Kernel entries (8 bytes each) per chunk of an exact GP's predictions: 64 MiB a block."""
SPARSE_CHUNK_ELEMENTS = 1 << 21
"""Kernel entries per chunk of the sparse GP's predictions: 16 MiB blocks stay in cache
(4,096 rows at 512 inducing inputs predict 2x faster than 16,384 on 2 cores)."""


def _kernel(kind: str, lengthscale: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """Unit-variance Matérn-5/2 or RBF kernel between A (..., n, d) and B (..., m, d) with ARD
    length scales (d,): shape (..., n, m). Differentiable in the length scales."""
    a, b = A / lengthscale, B / lengthscale
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        distance = torch.cdist(a, b)
        if kind == "rbf":
            return torch.exp(-0.5 * distance**2)
        r = 5**0.5 * distance
        return (1 + r + r**2 / 3) * torch.exp(-r)
    # the same in place, a few passes over the block (a pool's chunk is the largest array)
    square = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2)
    if a.dim() == b.dim() == 2:
        square = square.addmm_(a, b.T, alpha=-2)
    else:
        square = square - 2 * (a @ b.transpose(-1, -2))
    square.clamp_min_(0.0)
    if kind == "rbf":
        return square.mul_(-0.5).exp_()
    r = square.mul_(5.0).sqrt_()
    decay = torch.neg(r).exp_()
    return r.div(3).add_(1).mul_(r).add_(1).mul_(decay)  # (1 + r + r^2 / 3) e^-r


def greedy_inducing(kind: str, lengthscale: Tensor, U: Tensor, m: int,
                    tolerance: float = 1e-6) -> np.ndarray:
    """Indices of up to ``m`` rows of U : (n, d) chosen by greedy variance reduction.

    Each next row is the one the rows chosen so far explain worst (the largest
    diagonal of the residual kernel matrix): a pivoted Cholesky factorization
    of the unit-variance kernel matrix (Burt et al. 2020). Stops early where
    every row's residual variance is below ``tolerance`` (duplicates and rows
    the others already determine are never chosen). O(n m^2).
    """
    n = len(U)
    m = min(int(m), n)
    factor = torch.zeros(m, n, dtype=DTYPE)
    residual = torch.ones(n, dtype=DTYPE)
    chosen: list[int] = []
    with torch.no_grad():
        for j in range(m):
            best = int(torch.argmax(residual))
            if residual[best] <= tolerance:
                break
            chosen.append(best)
            column = _kernel(kind, lengthscale, U[best : best + 1], U)[0]
            column = (column - factor[:j, best] @ factor[:j]) / residual[best].sqrt()
            factor[j] = column
            residual = (residual - column**2).clamp_min(0.0)
            residual[best] = 0.0
    return np.asarray(chosen, dtype=int)


class SparseGP(Model):
    """The sparse GP (SGPR) posterior at fixed hyperparameters and inducing inputs.

    Works in the standardized scale of the training targets, with a
    unit-variance kernel (as BoTorch's default GP on standardized outcomes) and
    reports in the scale ``shift + scale * standardized`` (the surrogate's model
    scale). Training observations i, at inputs with kernel column k_i = k(Z, x_i),
    targets r_i (standardized, less ``constant``) and noise variance s_i^2, enter
    through ``precision`` = sum_i k_i k_i^T / s_i^2, (m, m), and ``projection`` =
    sum_i k_i r_i / s_i^2, (m,): the posterior of f is the Gaussian process with
    mean constant + k_x^T Sigma projection and covariance k(x, x') - k_x^T (K_mm^-1
    - Sigma) k_x' with Sigma = (K_mm + precision)^-1 (Titsias 2009).

    Observations added later (:meth:`condition_on_observations`, a batch's
    "kriging believer") condition that process exactly, ``observed`` =
    (inputs (j, d), standardized targets (j,), noise variances (j,)): a
    pretend measurement far from every inducing input still takes the spread
    out of its neighbourhood, which adding it to ``precision`` would not.

    Parameters
    ----------
    input_transform : maps raw inputs to the kernel's inputs (``... x d_raw`` to ``... x d``)
    shift, scale : the standardization of the training targets (model scale = shift +
        scale * standardized)
    kernel : "matern" or "rbf"
    lengthscale : (d,) ARD length scales
    noise : noise variance of a measurement, standardized scale
    constant : the prior mean, standardized scale
    inducing : (m, d) inducing inputs (already transformed)
    precision, projection : the training observations' summary, as above
    factors : (L^-1, K_mm^-1 - Sigma) where already known, L the Cholesky factor of K_mm
    observed : the observations added after the fit, as above, or None
    """

    def __init__(self, input_transform, shift: float, scale: float, kernel: str,
                 lengthscale: Tensor, noise: float, constant: float, inducing: Tensor,
                 precision: Tensor, projection: Tensor, factors: tuple | None = None,
                 observed: tuple | None = None):
        super().__init__()
        self.input_transform = input_transform
        self.shift, self.scale = float(shift), float(scale)
        self.kernel = kernel
        self.lengthscale = lengthscale.detach().reshape(-1)
        self.noise, self.constant = float(noise), float(constant)
        self.inducing = inducing.detach()
        self.precision = precision.detach()
        self.projection = projection.detach()
        self.observed = observed
        self._num_outputs = 1
        with torch.no_grad():
            if factors is None:
                m = len(self.inducing)
                eye = torch.eye(m, dtype=DTYPE)
                K = _kernel(kernel, self.lengthscale, self.inducing, self.inducing)
                l_inv = torch.linalg.solve_triangular(
                    torch.linalg.cholesky(K + JITTER * eye), eye, upper=False)
                B = eye + l_inv @ self.precision @ l_inv.T
                b_inv = torch.cholesky_inverse(torch.linalg.cholesky(0.5 * (B + B.T)))
                reduction = l_inv.T @ (eye - b_inv) @ l_inv
                factors = l_inv, 0.5 * (reduction + reduction.T)
            self._l_inv, self._reduction = factors
            l_inv = self._l_inv
            B = torch.eye(len(l_inv), dtype=DTYPE) + l_inv @ self.precision @ l_inv.T
            self._weights = l_inv.T @ torch.linalg.solve(0.5 * (B + B.T), l_inv @ self.projection)
            self._added = None
            if observed is not None:
                inputs, targets, noises = observed
                cross = _kernel(kernel, self.lengthscale, self.inducing, inputs)  # (m, j)
                reduced = self._reduction @ cross
                C = _kernel(kernel, self.lengthscale, inputs, inputs) - cross.T @ reduced
                C = 0.5 * (C + C.T) + torch.diag(noises)
                chol = torch.linalg.cholesky(C)
                base = self.constant + self._weights @ cross
                alpha = torch.cholesky_solve((targets - base).unsqueeze(-1), chol).squeeze(-1)
                self._added = inputs, reduced, chol, alpha
        self.train(False)

    def train(self, mode: bool = True) -> SparseGP:
        # BoTorch's Model.train would look for training inputs to transform; there are none
        return torch.nn.Module.train(self, mode)

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    @property
    def n_inducing(self) -> int:
        return len(self.inducing)

    @property
    def covar_module(self):
        """The fitted kernel as GPyTorch's object, for inspection: an ``InducingPointKernel``
        over the Matérn-5/2 (or RBF) kernel with the fitted length scales, at the
        inducing inputs."""
        from gpytorch.kernels import InducingPointKernel, MaternKernel, RBFKernel
        from gpytorch.likelihoods import GaussianLikelihood

        d = len(self.lengthscale)
        base = RBFKernel(ard_num_dims=d) if self.kernel == "rbf" else MaternKernel(
            nu=2.5, ard_num_dims=d)
        base = base.to(DTYPE)
        base.lengthscale = self.lengthscale.reshape(1, -1)
        likelihood = GaussianLikelihood().to(DTYPE)
        likelihood.noise = self.noise
        return InducingPointKernel(base, inducing_points=self.inducing.clone(),
                                   likelihood=likelihood)

    def _transform(self, X: Tensor) -> Tensor:
        return self.input_transform(X.to(DTYPE))

    def _marginal(self, U: Tensor, observation_noise: bool) -> tuple[Tensor, Tensor]:
        """Standardized mean and variance at transformed inputs U : (n, d), each (n,)."""
        cross = _kernel(self.kernel, self.lengthscale, self.inducing, U)  # (m, n)
        mean = self.constant + self._weights @ cross
        var = 1.0 - (self._reduction @ cross).mul_(cross).sum(0)
        if self._added is not None:
            inputs, added_reduced, chol, alpha = self._added
            # the process's covariance between the added inputs and U, (j, n)
            between = _kernel(self.kernel, self.lengthscale, inputs, U) - added_reduced.T @ cross
            mean = mean + alpha @ between
            var = var - (torch.linalg.solve_triangular(chol, between, upper=False) ** 2).sum(0)
        var = var.clamp_min(1e-12)
        if observation_noise:
            var = var + self.noise
        return mean, var

    def moments(self, X: Tensor, observation_noise: bool = False) -> tuple[Tensor, Tensor]:
        """Marginal mean and standard deviation at X : (n, d_raw), two (n,) tensors in the model
        scale, computed in chunks of rows (memory bounded by :data:`SPARSE_CHUNK_ELEMENTS`).

        ``observation_noise`` adds the noise of a new measurement.
        """
        rows = max(1, SPARSE_CHUNK_ELEMENTS // max(1, self.n_inducing))
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(X), rows):
                mean, var = self._marginal(self._transform(X[start : start + rows]),
                                           observation_noise)
                means.append(self.shift + self.scale * mean)
                stds.append(self.scale * var.sqrt())
        if not means:
            return torch.zeros(0, dtype=DTYPE), torch.zeros(0, dtype=DTYPE)
        return torch.cat(means), torch.cat(stds)

    def posterior(self, X: Tensor, output_indices=None, observation_noise: bool | Tensor = False,
                  posterior_transform=None, **kwargs) -> GPyTorchPosterior:
        """Joint Gaussian posterior of f (of a new measurement with ``observation_noise``) at
        ``batch x q x d_raw`` inputs, in the model scale."""
        U = self._transform(X)
        cross = _kernel(self.kernel, self.lengthscale, U, self.inducing)  # (..., q, m)
        mean = self.constant + cross @ self._weights
        cov = _kernel(self.kernel, self.lengthscale, U, U)
        cov = cov - cross @ self._reduction @ cross.transpose(-1, -2)
        if self._added is not None:
            inputs, added_reduced, chol, alpha = self._added
            between = _kernel(self.kernel, self.lengthscale, U, inputs) - cross @ added_reduced
            mean = mean + between @ alpha
            v = torch.linalg.solve_triangular(chol, between.transpose(-1, -2), upper=False)
            cov = cov - v.transpose(-1, -2) @ v
        eye = torch.eye(U.shape[-2], dtype=DTYPE)
        cov = cov + (self.noise if observation_noise is True else 1e-10) * eye
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        posterior = GPyTorchPosterior(
            MultivariateNormal(self.shift + self.scale * mean, self.scale**2 * cov)
        )
        if posterior_transform is not None:
            return posterior_transform(posterior)
        return posterior

    def condition_on_observations(self, X: Tensor, Y: Tensor, noise: Tensor | None = None,
                                  **kwargs) -> SparseGP:
        """The model with observations Y (``n x 1`` or ``n``, model scale) at X : (n, d_raw)
        added, each with noise variance ``noise`` (model scale; default the fit's)."""
        with torch.no_grad():
            U = self._transform(X.reshape(-1, X.shape[-1]))
            y = (Y.reshape(-1).to(DTYPE) - self.shift) / self.scale
            s2 = torch.full((len(U),), self.noise, dtype=DTYPE)
            if noise is not None:
                s2 = noise.reshape(-1).to(DTYPE) / self.scale**2 * torch.ones_like(s2)
            if self.observed is not None:
                inputs, targets, noises = self.observed
                U, y, s2 = torch.cat([inputs, U]), torch.cat([targets, y]), torch.cat([noises, s2])
            return SparseGP(
                self.input_transform, self.shift, self.scale, self.kernel, self.lengthscale,
                self.noise, self.constant, self.inducing, self.precision, self.projection,
                factors=(self._l_inv, self._reduction), observed=(U, y, s2),
            )

    def condition_on_mean(self, X: Tensor) -> SparseGP:
        """The model with its own posterior mean at X : (n, d_raw) observed at the fit's noise
        (a "kriging believer": the mean stays, the variance near X shrinks)."""
        mean, _ = self.moments(X.reshape(-1, X.shape[-1]))
        return self.condition_on_observations(X, mean)


def sparse_bound(theta: Tensor, U: Tensor, targets: Tensor, inducing: Tensor, kind: str,
                 priors) -> Tensor:
    """Titsias's collapsed lower bound on the log marginal likelihood plus the log priors.

    theta : (d + 2,) = (log length scales, log noise, constant mean); U : (n, d)
    inputs; targets : (n,) standardized; inducing : (m, d). ``priors`` =
    (length-scale prior, noise prior, length-scale floor, noise floor), as
    :class:`~matforge.engine.models.gp.LogPosterior` reads them from a BoTorch GP.
    -inf outside the floors or where a factorization fails.
    """
    ls_prior, noise_prior, ls_floor, noise_floor = priors
    d, n, m = U.shape[-1], len(U), len(inducing)
    log_ls, log_noise, constant = theta[:d], theta[d], theta[d + 1]
    ls, noise = log_ls.exp(), log_noise.exp()
    eye = torch.eye(m, dtype=DTYPE)
    K_mm = _kernel(kind, ls, inducing, inducing) + JITTER * eye
    K_mn = _kernel(kind, ls, inducing, U)
    L, info = torch.linalg.cholesky_ex(K_mm)
    r = targets - constant
    # B = I + L^-1 K_mn K_nm L^-T / noise: the m x m matrix the bound needs
    M = torch.linalg.solve_triangular(L, K_mn @ K_mn.T, upper=False)
    M = torch.linalg.solve_triangular(L, M.T, upper=False)
    B = eye + 0.5 * (M + M.T) / noise
    LB, info_b = torch.linalg.cholesky_ex(B)
    c = torch.linalg.solve_triangular(
        LB, torch.linalg.solve_triangular(L, (K_mn @ r).unsqueeze(-1), upper=False), upper=False
    ).squeeze(-1) / noise
    value = (-0.5 * n * np.log(2 * np.pi) - LB.diagonal().log().sum() - 0.5 * n * log_noise
             - 0.5 * (r @ r) / noise + 0.5 * (c @ c)
             - 0.5 * (n - M.diagonal().sum()) / noise)
    if ls_prior is not None:
        value = value + (ls_prior.log_prob(ls) + log_ls).sum()
    if noise_prior is not None:
        value = value + noise_prior.log_prob(noise) + log_noise
    bad = (info > 0) | (info_b > 0) | (ls < ls_floor).any() | (noise < noise_floor)
    if bad or not torch.isfinite(value):
        return torch.tensor(-torch.inf, dtype=DTYPE)
    return value


def _maximize(objective, theta: Tensor, lower: np.ndarray, scale: float,
              iterations: int = _FIT_ITERATIONS) -> np.ndarray:
    """L-BFGS-B on ``objective(theta) -> scalar tensor`` (autograd) from ``theta``, with lower
    bounds ``lower``; ``scale`` divides the objective (per data point) for the tolerances."""
    from scipy.optimize import minimize

    def loss(x):
        t = torch.as_tensor(x, dtype=DTYPE).requires_grad_(True)
        value = -objective(t)
        if not torch.isfinite(value):
            return 1e300, np.zeros_like(x)
        value.backward()
        return float(value.detach()) / scale, t.grad.numpy().copy() / scale

    x0 = np.maximum(theta.detach().numpy(), lower + 1e-9)
    result = minimize(loss, x0, jac=True, method="L-BFGS-B",
                      bounds=list(zip(lower, [None] * len(x0))), options={"maxiter": iterations})
    return result.x if np.isfinite(result.fun) and result.fun <= loss(x0)[0] else x0


def fit_sparse_gp(train_X: Tensor, z: np.ndarray, input_transform, kernel: str,
                  n_inducing: int, rng: np.random.Generator, previous: SparseGP | None = None,
                  subset: int = SUBSET, fit_max: int = FIT_MAX) -> SparseGP:
    """Fit a :class:`SparseGP` to train_X : (n, d_raw) and targets z : (n,).

    1. An exact GP with the same kernel, priors and input transform (BoTorch's
       ``SingleTaskGP`` defaults) is fitted by MAP to ``subset`` random rows
       (skipped with ``previous``, a warm start from its hyperparameters).
    2. At those hyperparameters ``n_inducing`` inducing inputs are chosen among
       all training inputs by :func:`greedy_inducing`.
    3. The hyperparameters are fitted by L-BFGS to :func:`sparse_bound` on
       ``fit_max`` random rows (a few thousand rows pin down the few dozen
       hyperparameters; more only cost time), inducing inputs fixed.
    4. Every row enters the posterior (``precision``, ``projection``).
    """
    from botorch.models import SingleTaskGP
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior

    from matforge.engine.models.gp import LogPosterior

    z = np.asarray(z, dtype=float)
    n = len(z)
    shift = float(z.mean())
    scale = float(z.std(ddof=1)) if n > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    targets = torch.as_tensor((z - shift) / scale, dtype=DTYPE)
    with torch.no_grad():
        U = input_transform(train_X)
    d = U.shape[-1]

    order = rng.permutation(n)
    rows = np.sort(order[:subset])
    covar = get_covar_module_with_dim_scaled_prior(ard_num_dims=d, use_rbf_kernel=kernel == "rbf")
    small = SingleTaskGP(train_X[rows], targets[rows].unsqueeze(-1), covar_module=covar,
                         input_transform=input_transform, outcome_transform=None)
    log_posterior = LogPosterior(small, train_X[rows], kernel)
    priors = (log_posterior.ls_prior, log_posterior.noise_prior, log_posterior.ls_floor,
              log_posterior.noise_floor)
    lower = np.full(d + 2, -np.inf)
    lower[:d] = np.log(priors[2]) + 1e-9
    lower[d] = np.log(priors[3]) + 1e-9
    if previous is not None and previous.lengthscale.shape == (d,):
        theta = torch.cat([previous.lengthscale.log(),
                           torch.tensor([np.log(previous.noise), previous.constant], dtype=DTYPE)])
    else:
        theta = torch.as_tensor(_maximize(lambda t: log_posterior(t.unsqueeze(0))[0],
                                          log_posterior.start, lower, len(rows)), dtype=DTYPE)

    inducing = U[greedy_inducing(kernel, theta[:d].exp(), U, n_inducing)]
    fit_rows = torch.as_tensor(np.sort(order[:fit_max]))
    x = _maximize(lambda t: sparse_bound(t, U[fit_rows], targets[fit_rows], inducing, kernel,
                                         priors),
                  theta, lower, len(fit_rows))
    ls = torch.as_tensor(np.exp(x[:d]), dtype=DTYPE)
    noise, constant = float(np.exp(x[d])), float(x[d + 1])
    m = len(inducing)
    precision, projection = torch.zeros(m, m, dtype=DTYPE), torch.zeros(m, dtype=DTYPE)
    step = max(1, SPARSE_CHUNK_ELEMENTS // m)
    with torch.no_grad():
        for start in range(0, n, step):
            cross = _kernel(kernel, ls, inducing, U[start : start + step])
            precision += cross @ cross.T / noise
            projection += cross @ (targets[start : start + step] - constant) / noise
    return SparseGP(input_transform, shift, scale, kernel, ls, noise, constant, inducing,
                    precision, projection)
