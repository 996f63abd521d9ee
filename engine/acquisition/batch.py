"""Batch selection over a discrete candidate pool by Bayesian optimization.

:func:`select_batch` picks a batch of rows from a candidate pool with one of the
acquisitions in :data:`ACQUISITIONS`. The BoTorch acquisitions (``qlogei``,
``qlognei``, ``ucb``) are maximized over the pool by ``optimize_acqf_discrete``
with sequential greedy conditioning, so later picks of a batch know about the
earlier ones and about evaluations still running (``pending``). ``thompson``,
``greedy`` and ``explore`` read the posterior directly. A pool of any length is
predicted in chunks; above :data:`LARGE_POOL` rows the posterior kinds condition
the model only at a shortlist (:func:`select_batch`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.monte_carlo import qUpperConfidenceBound
from botorch.acquisition.objective import GenericMCObjective
from botorch.optim import optimize_acqf_discrete
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood
from torch import Tensor

from matforge.engine.acquisition.base import Acquisition
from matforge.engine.models.gp import DTYPE, HyperparameterMixture, as_tensor
from matforge.engine.models.sparse import SparseGP
from matforge.engine.validation import positive_int

ACQUISITIONS = ("ptop", "pucb", "qlogei", "qlognei", "ucb", "thompson", "greedy", "explore")
"""Acquisition kinds :func:`select_batch` knows."""

_LOG_KINDS = ("qlogei", "qlognei")
TOP_SHARE = 0.05
"""Default share of candidates that ``ptop`` counts as the top (a discovery campaign's goal)."""
_MIN_PROBABILITY = 1e-300
"""Floor on a feasibility probability before its log: P = 0 scores far below any real log-EI."""
LARGE_POOL = 10_000
"""Pools with more rows than this are selected from in two stages by ``ptop``, ``pucb``,
``explore`` and ``greedy`` (:func:`select_batch`): one pass predicts every row in chunks,
then the batch's sequential greedy conditions the model only at the :data:`SHORTLIST`
rows the first pick ranks best, plus any row whose score could still beat a pick.
Up to this size the whole pool is conditioned at every pick, as always."""
SHORTLIST = 2048
"""Rows of a large pool that the batch's later picks are conditioned over."""
_POSTERIOR_ROWS = 4096
"""Rows per chunk when a BoTorch model predicts a long pool (memory stays bounded)."""
_BLOCK_ELEMENTS = 1 << 21
"""Normals per block when a large pool's stored predictions are scored."""
_CACHED_NORMALS = 1 << 24
"""Most normals (16 bytes each) a large pool's predictions are kept expanded as."""


def diverse_random_batch(X: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``batch_size`` rows of X spread over feature space.

    The first row is uniform at random; each next one is drawn with probability
    proportional to its squared distance to the rows already picked (k-means++
    seeding), so the batch is random but not clumped.

    Parameters
    ----------
    X : array of shape (n_candidates, n_features)
    """
    n = len(X)
    batch_size = min(batch_size, n)
    picked = [int(rng.integers(n))]
    d2 = ((X - X[picked[0]]) ** 2).sum(axis=1)
    while len(picked) < batch_size:
        total = d2.sum()
        if total <= 0:
            rest = np.setdiff1d(np.arange(n), picked)
            picked.append(int(rng.choice(rest)))
        else:
            picked.append(int(rng.choice(n, p=d2 / total)))
        d2 = np.minimum(d2, ((X - X[picked[-1]]) ** 2).sum(axis=1))
    return np.asarray(picked)


class FeasibilityWeighted(AcquisitionFunction):
    """An acquisition weighted by the probability that the candidates are feasible.

    Log-acquisitions get ``log p`` added (the log of ``acq * p``); others are
    shifted by ``floor`` (their smallest value over the pool) and multiplied by
    ``p``, so an infeasible candidate scores no better than the pool's worst.
    The q points of a batch are taken as independently feasible.

    Parameters
    ----------
    acqf : the BoTorch acquisition to weight
    feasibility : maps a ``batch x q x d`` tensor to a ``batch x q`` tensor of probabilities
    log : whether ``acqf`` returns log-values
    floor : value subtracted from a non-log acquisition before weighting
    """

    def __init__(
        self,
        acqf: AcquisitionFunction,
        feasibility: Callable[[Tensor], Tensor],
        log: bool,
        floor: float = 0.0,
    ):
        super().__init__(model=acqf.model)
        self.acqf = acqf
        self.feasibility = feasibility
        self.log = log
        self.floor = floor

    @property
    def X_pending(self) -> Tensor | None:
        return self.acqf.X_pending

    def set_X_pending(self, X_pending: Tensor | None = None) -> None:
        self.acqf.set_X_pending(X_pending)

    def forward(self, X: Tensor) -> Tensor:
        value = self.acqf(X)
        p = self.feasibility(X)
        if self.log:
            return value + p.clamp_min(_MIN_PROBABILITY).log().sum(dim=-1)
        return (value - self.floor).clamp_min(0.0) * p.prod(dim=-1)


def _as_2d(name: str, X, n_features: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_rows, n_features), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features but X_pool has {n_features}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _feasibility_function(constraint, model) -> Callable[[Tensor], Tensor] | None:
    """Turn ``constraint`` into a map from ``... x d`` tensors to ``...`` probabilities."""
    if constraint is None:
        return None
    if callable(constraint):

        def feasibility(X: Tensor) -> Tensor:
            rows = X.detach().reshape(-1, X.shape[-1]).numpy()
            p = np.asarray(constraint(rows), dtype=float)
            if p.ndim == 2:
                p = p[:, -1]
            if p.shape != (len(rows),):
                raise ValueError(
                    f"constraint returned shape {p.shape} for {len(rows)} rows; "
                    "expected (n_rows,) or (n_rows, 2) probabilities"
                )
            if not np.isfinite(p).all():
                raise ValueError("constraint returned NaN or infinite probabilities")
            return torch.as_tensor(np.clip(p, 0.0, 1.0), dtype=DTYPE).reshape(X.shape[:-1])

        return feasibility
    if isinstance(constraint, (int, float)) and not isinstance(constraint, bool):
        if model.num_outputs < 2:
            raise ValueError(
                "a numeric constraint bounds the model's second output, but the model has "
                f"{model.num_outputs} output; pass a callable giving P(feasible) instead"
            )
        threshold = float(constraint)
        normal = torch.distributions.Normal(0.0, 1.0)

        def feasibility(X: Tensor) -> Tensor:
            with torch.no_grad():
                post = model.posterior(X.reshape(-1, X.shape[-1]))
                mean = post.mean[..., 1]
                std = post.variance[..., 1].clamp_min(1e-18).sqrt()
            return normal.cdf((threshold - mean) / std).reshape(X.shape[:-1])

        return feasibility
    raise ValueError(
        f"constraint must be None, a callable giving P(feasible) per row, or a number "
        f"bounding the model's second output; got {type(constraint).__name__}"
    )


def _best_observed(y_train, maximize: bool, constraint) -> float:
    """Best objective value seen, among feasible rows when y_train carries the constraint column."""
    y = np.asarray(y_train, dtype=float)
    if y.size == 0:
        raise ValueError("y_train is empty; qlogei needs the observed objective values")
    if y.ndim == 2 and y.shape[1] >= 2 and isinstance(constraint, (int, float)):
        feasible = y[:, 1] <= float(constraint)
        objective = y[feasible, 0] if feasible.any() else y[:, 0]
    else:
        objective = y if y.ndim == 1 else y[:, 0]
    objective = objective[np.isfinite(objective)]
    if objective.size == 0:
        raise ValueError("y_train holds no finite objective value")
    return float(objective.max() if maximize else objective.min())


def _posterior_objective(
    model, X: Tensor, observation_noise: bool = False
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the model's first output at ``n x d`` X, each ``n``.

    ``observation_noise`` gives the spread of a new measurement (learned noise
    included) where the model has a noise model, of the function elsewhere. A
    :class:`HyperparameterMixture` gives each component's, each ``S x n``. Long
    X is predicted in chunks of rows.
    """
    if isinstance(model, (HyperparameterMixture, SparseGP)):
        return model.moments(X, observation_noise)
    if len(X) > _POSTERIOR_ROWS:
        parts = [_posterior_objective(model, X[start : start + _POSTERIOR_ROWS], observation_noise)
                 for start in range(0, len(X), _POSTERIOR_ROWS)]
        return torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts])
    with torch.no_grad():
        post = None
        if observation_noise:
            try:
                post = model.posterior(X, observation_noise=True)
            except (NotImplementedError, TypeError):  # models without a noise model
                pass
        if post is None:
            post = model.posterior(X)
        return post.mean[..., 0], post.variance[..., 0].clamp_min(0).sqrt()


def _condition_on_mean(model, X: Tensor):
    """The model conditioned on observing its own posterior mean at X (a "kriging believer").

    A :class:`HyperparameterMixture` conditions each component on its own mean, a
    :class:`SparseGP` its inducing-input posterior. Models that cannot be conditioned
    (ensembles, forests) are returned as they are.
    """
    if isinstance(model, (HyperparameterMixture, SparseGP)):
        return model.condition_on_mean(X)
    with torch.no_grad():
        try:
            post = model.posterior(X)
            kwargs = {}
            if isinstance(getattr(model, "likelihood", None), FixedNoiseGaussianLikelihood):
                # per-point noise (a Student-t fit): the pretend observation gets the
                # noise BoTorch gives a new measurement
                noisy = model.posterior(X, observation_noise=True)
                kwargs["noise"] = (noisy.variance - post.variance).clamp_min(1e-12)
            return model.condition_on_observations(X, post.mean, **kwargs)
        except NotImplementedError:
            return model


def decreasing_root(excess: Callable[[float], tuple[float, float]], lo: float, hi: float,
                    start: float, xtol: float = 1e-9) -> float:
    """The root of a decreasing ``excess(tau) -> (value, slope)`` in [lo, hi], where
    excess(lo) > 0 > excess(hi) is known, by Newton steps from ``start`` kept inside the
    bracket (a bisection where a step would leave it).

    A threshold's count is smooth in tau but for the steps of the results it counts,
    so Newton converges in a few evaluations (each a pass over every prediction of the
    pool) where it is smooth, and the bracket still closes on a step.
    """
    a, b = lo, hi
    tau = min(max(start, a), b)
    for _ in range(200):
        value, slope = excess(tau)
        if value == 0:
            return tau
        a, b = (tau, b) if value > 0 else (a, tau)
        step = -value / slope if slope < 0 else np.inf
        if abs(step) <= xtol or b - a <= xtol:
            return tau + step if a <= tau + step <= b else tau
        tau = tau + step if a < tau + step < b else 0.5 * (a + b)
    return tau


def tail_count(mean: np.ndarray, std: np.ndarray, weights: np.ndarray, tau: float):
    """sum_i weights_i P_i(above tau) for rows whose prediction is an equal mixture of the
    normals (mean, std) : (S, n), and its slope in tau."""
    from scipy.special import ndtr

    z = (mean - tau) / std
    density = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    return (weights * ndtr(z).mean(0)).sum(), -(weights * (density / std).mean(0)).sum()


def _start(mean: np.ndarray, observed: np.ndarray, count: float) -> float:
    """A first guess at the threshold of ``count`` rows: where ``count`` of the candidates'
    mean predictions (mean : (S, n), averaged over S) and the results lie above it."""
    values = np.concatenate([mean.mean(0), observed])
    above = min(len(values), max(1, int(round(count))))
    return float(np.partition(values, len(values) - above)[len(values) - above])


def top_threshold(
    mean: np.ndarray,
    std: np.ndarray,
    observed: np.ndarray,
    count: float,
    weights: np.ndarray | None = None,
    observed_weights: np.ndarray | None = None,
) -> float:
    """The value tau above which ``count`` rows are expected, among the candidates and the results.

    Candidates contribute P(y > tau) = Φ((mean - tau) / std) each, results 1 if
    they lie above tau, each times its weight (e.g. its probability of being
    feasible; default 1); the sum falls monotonically in tau, so tau is its root
    (:func:`decreasing_root`). ``mean`` and ``std`` have shape (n,), or (S, n) for
    candidates whose prediction is an equal mixture of S normals.
    """
    mean = np.atleast_2d(mean).astype(float)
    std = np.maximum(np.atleast_2d(std).astype(float), 1e-12)
    observed = np.asarray(observed, float)
    w = np.ones(mean.shape[-1]) if weights is None else np.asarray(weights, float)
    w_obs = (
        np.ones_like(observed) if observed_weights is None else np.asarray(observed_weights, float)
    )

    def excess(tau):
        above, slope = tail_count(mean, std, w, tau)
        return above + w_obs[observed > tau].sum() - count, slope

    values = np.concatenate([(mean - 12 * std).ravel(), (mean + 12 * std).ravel(), observed])
    lo, hi = values.min() - 1.0, values.max() + 1.0
    if w.sum() + w_obs.sum() <= count:  # asked for (nearly) every row
        return lo
    return decreasing_root(excess, lo, hi, _start(mean, observed, count))


def _aim(share: float, total: float, budget: int | None, observed: np.ndarray,
         w_obs: np.ndarray | None) -> tuple[float, np.ndarray, np.ndarray | None]:
    """How many rows ``ptop``'s top holds, and the results that count towards it.

    The top is ``share`` of all ``total`` rows (candidates, pending and results), or,
    where they outnumber ``budget``, the best ``share * budget`` of the rows not yet
    measured: the results leave the count, since a result in hand cannot be found
    again. Were they counted, the bar would become the ``share * budget``-th best
    result once those are measured, a candidate's chance of beating it small
    everywhere, and the picks would go to rows that might exceed it instead of rows
    likely to be among the best left (the late collapse in ``benchmarks/README.md``).
    """
    if budget is None or total <= budget:
        return share * total, observed, w_obs
    return share * budget, observed[:0], None if w_obs is None else w_obs[:0]


def _log_probability_of_top(
    conditioned, choices, extra, observed, share, sign, p=None, p_observed=None, budget=None
):
    """log P(a new measurement at each choice lands in the top ``share`` of all rows).

    The rows are the choices, ``extra`` (pending evaluations, or None) and the
    ``observed`` objective values (already signed, in the model's scale). Where
    they outnumber ``budget``, the top is that share of as many rows as the
    budget can measure, counted among the rows still to measure (:func:`_aim`). With
    feasibility probabilities ``p`` (choices and extra) and ``p_observed``, the
    top is the top of the rows more likely feasible than not; the caller
    multiplies by P(feasible). (Counting every row by its probability instead
    lets a soft classifier's long tail of unlikely but excellent rows fill the
    top, and the picks drift into the infeasible region.)
    """
    from scipy.special import logsumexp
    from scipy.stats import norm

    rows = choices if extra is None else torch.cat([choices, extra])
    mean, std = _posterior_objective(conditioned, rows, observation_noise=True)
    mean, std = np.atleast_2d((sign * mean).numpy()), np.atleast_2d(std.clamp_min(1e-12).numpy())
    w = None if p is None else (p.numpy() >= 0.5).astype(float)
    w_obs = None if p_observed is None else (np.asarray(p_observed, float) >= 0.5).astype(float)
    total = (len(rows) if w is None else w.sum()) + (
        len(observed) if w_obs is None else w_obs.sum()
    )
    count, observed, w_obs = _aim(share, total, budget, observed, w_obs)
    tau = top_threshold(mean, std, observed, count, w, w_obs)
    # the log keeps far-off candidates ranked where P itself underflows to 0; a
    # mixture's P is the mean of its components'
    log_p = logsumexp(norm.logsf((tau - mean) / std), axis=0) - np.log(len(mean))
    return torch.as_tensor(log_p[: len(choices)], dtype=choices.dtype)


def _observed_feasibility(y_train, X_train, finite, constraint, feasibility) -> np.ndarray | None:
    """P(feasible) of the results with a finite objective: known where y_train carries the
    constrained output, the constraint's estimate at X_train otherwise (None without X_train)."""
    y = np.asarray(y_train, dtype=float)
    if y.ndim == 2 and y.shape[1] >= 2 and not callable(constraint):
        return (y[finite, 1] <= float(constraint)).astype(float)
    if X_train is not None and len(X_train) == len(y):
        return feasibility(as_tensor(np.asarray(X_train)[finite])).numpy()
    return None


def _sequential_greedy(model, pending_t, choices: Tensor, q: int, score_of):
    """Pick ``q`` rows of ``choices`` one at a time, each the best of ``score_of(model)``
    among rows not yet taken, with the model conditioned on its own mean at the
    pending rows and at every earlier pick (a "kriging believer"), so a batch spreads out.

    Returns the picked positions and their scores (a tensor of shape (q,)).
    """
    conditioned = model if pending_t is None else _condition_on_mean(model, pending_t)
    taken = torch.zeros(len(choices), dtype=torch.bool)
    picked, values = [], []
    for k in range(q):
        score = score_of(conditioned).masked_fill(taken, -torch.inf)
        best = int(torch.argmax(score))
        taken[best] = True
        picked.append(best)
        values.append(score[best])
        if k + 1 < q:
            conditioned = _condition_on_mean(conditioned, choices[best : best + 1])
    return picked, torch.stack(values)


def _shift_and_weight(score: Tensor, p: Tensor | None) -> Tensor:
    if p is None:
        return score
    return (score - score.min()) * p


def _botorch_batch(
    kind: str,
    surrogate,
    model,
    choices: Tensor,
    q: int,
    sign: float,
    y_train,
    maximize: bool,
    X_train,
    pending: Tensor | None,
    beta: float,
    constraint,
    feasibility,
) -> tuple[Tensor, Tensor]:
    objective = GenericMCObjective(lambda Y, X=None: sign * Y[..., 0])
    numeric = isinstance(constraint, (int, float)) and not isinstance(constraint, bool)
    native = numeric and kind in _LOG_KINDS
    constraints = [lambda Z: Z[..., 1] - float(constraint)] if native else None
    if kind == "qlogei":
        best_units = _best_observed(y_train, maximize, constraint)
        best = sign * float(surrogate.to_model_scale(np.array([best_units]))[0])
        acqf = qLogExpectedImprovement(
            model, best_f=best, objective=objective, constraints=constraints, X_pending=pending
        )
    elif kind == "qlognei":
        if X_train is None:
            raise ValueError("kind='qlognei' needs X_train, the evaluated rows, as its baseline")
        baseline = as_tensor(_as_2d("X_train", X_train, choices.shape[-1]))
        acqf = qLogNoisyExpectedImprovement(
            model,
            X_baseline=baseline,
            objective=objective,
            constraints=constraints,
            X_pending=pending,
        )
    else:
        acqf = qUpperConfidenceBound(model, beta=beta, objective=objective, X_pending=pending)
    if feasibility is not None and not native:
        floor = 0.0
        if kind not in _LOG_KINDS:
            with torch.no_grad():
                floor = float(acqf(choices.unsqueeze(-2)).min())
        acqf = FeasibilityWeighted(acqf, feasibility, log=kind in _LOG_KINDS, floor=floor)
    candidates, values = optimize_acqf_discrete(acqf, q=q, choices=choices, unique=True)
    return candidates, values.reshape(-1)


class _PoolNormals:
    """Every row's prediction of a new measurement over a large pool, kept compactly.

    The prediction at row i is the equal mixture of K normals (K = 1 for one
    Gaussian; S * G for a hyperparameter mixture with empirical noise). What is
    stored is what the model predicted, ``mean`` and ``std`` : (S, N) (each
    component's posterior of f for a mixture, 8 bytes a value), and
    :meth:`blocks` expands blocks of rows to their K normals, signed so that
    larger is better.
    """

    def __init__(self, model, choices: Tensor, sign: float):
        self.sign = sign
        if isinstance(model, HyperparameterMixture):
            mean, std = model.moments(choices)
            self._expand = model.with_measurement_noise
        else:
            mean, std = _posterior_objective(model, choices, observation_noise=True)
            self._expand = None
        self.mean, self.std = np.atleast_2d(mean.numpy()), np.atleast_2d(std.numpy())
        self.n_rows = self.mean.shape[1]
        self._expanded = None
        self.k = len(self.expanded(slice(0, 1))[0])
        if self.k * self.n_rows <= _CACHED_NORMALS:  # scored many times: expand once
            self._expanded = self.expanded(slice(None))

    def expanded(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """The K signed normals of ``rows`` (a slice or index array), each (K, n)."""
        if self._expanded is not None:
            return self._expanded[0][:, rows], self._expanded[1][:, rows]
        mean, std = self.mean[:, rows], self.std[:, rows]
        if self._expand is not None:
            mean, std = (t.numpy() for t in self._expand(torch.as_tensor(mean),
                                                         torch.as_tensor(std)))
        return self.sign * mean, np.maximum(std, 1e-12)

    def blocks(self):
        step = max(1, _BLOCK_ELEMENTS // self.k)
        for start in range(0, self.n_rows, step):
            rows = slice(start, min(start + step, self.n_rows))
            yield rows, *self.expanded(rows)

    def extent(self) -> tuple[float, float]:
        """Bounds of every normal's mean -/+ 12 std (where the threshold can lie)."""
        lo, hi = np.inf, -np.inf
        for _, mean, std in self.blocks():
            lo, hi = min(lo, (mean - 12 * std).min()), max(hi, (mean + 12 * std).max())
        return lo, hi

    def log_p(self, tau: float, rows=None) -> np.ndarray:
        """log P(a new measurement > tau) of every row (of ``rows``), shape (n,)."""
        from scipy.special import log_ndtr, logsumexp

        if rows is not None:
            mean, std = self.expanded(rows)
            return logsumexp(log_ndtr((mean - tau) / std), axis=0) - np.log(len(mean))
        out = np.empty(self.n_rows)
        for block, mean, std in self.blocks():
            out[block] = logsumexp(log_ndtr((mean - tau) / std), axis=0) - np.log(len(mean))
        return out

    def count(self, tau: float, w: np.ndarray | None, keep: np.ndarray | None = None,
              order: int = 0):
        """sum_i w_i P_i(new measurement > tau) over the rows (where ``keep``); with ``order``
        1 or 2, an array of it and its derivatives in tau up to that order."""
        from scipy.special import ndtr

        total = np.zeros(3)
        for block, mean, std in self.blocks():
            weight = np.ones(mean.shape[1]) if w is None else w[block]
            if keep is not None:
                weight = weight * keep[block]
            z = (mean - tau) / std
            total[0] += (weight * ndtr(z).mean(0)).sum()
            if order:
                density = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
                total[1] -= (weight * (density / std).mean(0)).sum()
            if order > 1:
                total[2] -= (weight * (z * density / std**2).mean(0)).sum()
        return total[: order + 1] if order else total[0]


def _signed_normals(model, X: Tensor, sign: float) -> tuple[np.ndarray, np.ndarray]:
    mean, std = _posterior_objective(model, X, observation_noise=True)
    return np.atleast_2d((sign * mean).numpy()), np.atleast_2d(std.clamp_min(1e-12).numpy())


def _shortlist(scores: np.ndarray, size: int) -> np.ndarray:
    """Positions of the ``size`` best scores, in increasing order (pool order breaks ties
    as the whole pool's argmax would)."""
    size = min(size, len(scores))
    return np.sort(np.argpartition(-scores, size - 1)[:size])


def _large_pool_ptop(model, pending_t, choices: Tensor, q: int, observed, share: float,
                     sign: float, p, p_pending, p_observed, budget):
    """``ptop``'s sequential greedy batch over a pool of more than :data:`LARGE_POOL` rows.

    The model conditioned on the pending rows predicts every row once, in
    chunks (:class:`_PoolNormals`); the threshold tau of the first pick comes
    from all rows, as for a small pool, and the :data:`SHORTLIST` rows with the
    best log P(top) at it are the ones the later picks condition the model at.
    A row outside the shortlist keeps its first prediction: its share of the
    threshold's count is its count at the first tau to second order in tau's
    shift (the shift is tiny: a batch moves a pool's count by a few rows out of
    thousands), and its own score is checked at every pick, exactly: a row
    outside that would beat the pick joins the shortlist and the pick is made
    again. The picks are then those of the whole pool's greedy but for the
    conditioning of the rows outside the shortlist on the batch's earlier
    picks, which would only lower their variance a little.

    Returns positions in ``choices`` and each pick's log P(top) (times P(feasible)).
    """
    from scipy.special import log_ndtr, logsumexp

    conditioned = model if pending_t is None else _condition_on_mean(model, pending_t)
    normals = _PoolNormals(conditioned, choices, sign)
    n = len(choices)
    w = None if p is None else (p.numpy() >= 0.5).astype(float)
    w_pending = None if p_pending is None else (p_pending.numpy() >= 0.5).astype(float)
    w_obs = (np.ones_like(observed) if p_observed is None
             else (np.asarray(p_observed, float) >= 0.5).astype(float))
    n_pending = 0 if pending_t is None else len(pending_t)
    total = ((n if w is None else w.sum()) + (n_pending if w_pending is None else w_pending.sum())
             + w_obs.sum())
    count, observed, w_obs = _aim(share, total, budget, observed, w_obs)
    log_feasible = np.zeros(n) if p is None else p.clamp_min(_MIN_PROBABILITY).log().numpy()

    def weighted(mean, std, weights):
        """tau -> (sum of weights * P(above tau), its slope) over normals (S, m)."""
        return partial(tail_count, mean, std,
                       np.ones(mean.shape[1]) if weights is None else weights)

    def observed_above(tau):
        return w_obs[observed > tau].sum()

    def root(excess, start, near=False):
        """The root of the decreasing ``excess(tau) -> (value, slope)`` in [lo, hi], from
        ``start``; with ``near``, bracketed outwards from it first (the rows outside the
        shortlist count only near tau0)."""
        a, b = lo, hi
        if near:
            a = b = start
            step = 1e-6 * (hi - lo)
            while excess(a)[0] < 0 and a > lo:
                a, step = max(lo, start - step), 2 * step
            step = 1e-6 * (hi - lo)
            while excess(b)[0] > 0 and b < hi:
                b, step = min(hi, start + step), 2 * step
            if excess(a)[0] <= 0 or excess(b)[0] >= 0:
                return a if excess(a)[0] <= 0 else b
        return decreasing_root(excess, a, b, start)

    lo, hi = normals.extent()
    in_pending = lambda tau: (0.0, 0.0)  # noqa: E731
    if n_pending:
        mean, std = _signed_normals(conditioned, pending_t, sign)
        lo, hi = min(lo, (mean - 12 * std).min()), max(hi, (mean + 12 * std).max())
        in_pending = weighted(mean, std, w_pending)
    if len(observed):
        lo, hi = min(lo, observed.min()), max(hi, observed.max())
    lo, hi = lo - 1.0, hi + 1.0

    def whole_pool(tau):
        pool, slope = normals.count(tau, w, order=1)
        pending, pending_slope = in_pending(tau)
        return pool + pending + observed_above(tau) - count, slope + pending_slope

    if total <= count:  # asked for (nearly) every row
        tau0 = lo
    else:
        tau0 = root(whole_pool, _start(normals.sign * normals.mean, observed, count))

    short = _shortlist(normals.log_p(tau0) + log_feasible, SHORTLIST)
    outside = np.ones(n, dtype=bool)
    outside[short] = False
    rest = normals.count(tau0, w, keep=outside, order=2)

    def rest_count(tau):
        shift = tau - tau0
        return rest[0] + rest[1] * shift + 0.5 * rest[2] * shift**2, rest[1] + rest[2] * shift

    checked_tau, checked_best = np.inf, -np.inf  # best score outside the shortlist at checked_tau
    tau = tau0
    picked, values = [], []
    for k in range(q):
        while True:
            rows = choices[short] if pending_t is None else torch.cat([choices[short], pending_t])
            mean, std = _signed_normals(conditioned, rows, sign)
            m = len(short)
            in_short = weighted(mean[:, :m], std[:, :m], None if w is None else w[short])
            in_pend = weighted(mean[:, m:], std[:, m:], w_pending) if n_pending else in_pending
            def excess(t):
                parts = (in_short(t), in_pend(t), rest_count(t))
                return (sum(v for v, _ in parts) + observed_above(t) - count,
                        sum(slope for _, slope in parts))

            tau = root(excess, tau, near=True)
            score = (logsumexp(log_ndtr((mean[:, :m] - tau) / std[:, :m]), axis=0)
                     - np.log(len(mean)) + log_feasible[short])
            score[np.isin(short, picked)] = -np.inf
            best = int(np.argmax(score))
            if tau < checked_tau:
                # outside scores fall as tau rises: check a little below tau, for later picks too
                checked_tau = tau - max(abs(tau - tau0), 1e-9)
                outside_scores = np.where(outside, normals.log_p(checked_tau) + log_feasible,
                                          -np.inf)
                checked_best = outside_scores.max()
            if checked_best <= score[best]:
                break
            outside_scores = np.where(outside, normals.log_p(tau) + log_feasible, -np.inf)
            joining = np.flatnonzero(outside_scores > score[best])
            if len(joining) == 0:
                checked_tau, checked_best = tau, outside_scores.max()
                break
            joining = joining[np.argsort(-outside_scores[joining], kind="stable")][:SHORTLIST]
            rest = rest - normals.count(tau0, w, keep=np.isin(np.arange(n), joining),
                                        order=2)
            outside[joining] = False
            short = np.sort(np.concatenate([short, joining]))
            checked_tau = np.inf
        picked.append(int(short[best]))
        values.append(score[best])
        if k + 1 < q:
            conditioned = _condition_on_mean(conditioned, choices[short[best] : short[best] + 1])
    return picked, torch.as_tensor(np.asarray(values), dtype=DTYPE)


def _large_pool_greedy(model, pending_t, choices: Tensor, q: int, score_of, p, shifted: bool):
    """The sequential greedy batch of ``pucb`` or ``explore`` over a pool of more than
    :data:`LARGE_POOL` rows, the same picks as over the whole pool.

    ``score_of(model, X)`` is the raw score of rows X : (n, d); conditioning on a
    pick (its own mean observed) leaves every mean and shrinks every variance, so
    a row's score under the conditioned model is at most its first one. One
    chunked pass scores every row; the picks condition the model at the
    :data:`SHORTLIST` best rows, and a row outside whose first score beats a pick
    joins them before the pick is made again. ``shifted``: feasibility-weighted
    as (score - the pool's least score) * p (``pucb``), else score * p.

    Returns positions in ``choices`` and each pick's score.
    """
    conditioned = model if pending_t is None else _condition_on_mean(model, pending_t)
    first = torch.cat([score_of(conditioned, choices[start : start + _POSTERIOR_ROWS])
                       for start in range(0, len(choices), _POSTERIOR_ROWS)]).numpy()
    weights = None if p is None else p.numpy()

    def weigh(raw, rows, floor):
        if weights is None:
            return raw
        return (raw - floor) * weights[rows] if shifted else raw * weights[rows]

    short = _shortlist(weigh(first, slice(None), first.min()), SHORTLIST)
    outside = np.ones(len(choices), dtype=bool)
    outside[short] = False
    picked, values = [], []
    for k in range(q):
        while True:
            raw = score_of(conditioned, choices[short]).numpy()
            floor = min(raw.min(), first[outside].min()) if outside.any() else raw.min()
            score = weigh(raw, short, floor)
            score[np.isin(short, picked)] = -np.inf
            best = int(np.argmax(score))
            outside_scores = np.where(outside, weigh(first, slice(None), floor), -np.inf)
            joining = np.flatnonzero(outside_scores > score[best])
            if len(joining) == 0:
                break
            joining = joining[np.argsort(-outside_scores[joining], kind="stable")][:SHORTLIST]
            outside[joining] = False
            short = np.sort(np.concatenate([short, joining]))
        picked.append(int(short[best]))
        values.append(score[best])
        if k + 1 < q:
            conditioned = _condition_on_mean(conditioned, choices[short[best] : short[best] + 1])
    return picked, torch.as_tensor(np.asarray(values), dtype=DTYPE)


def rows_not_pending(X_pool: np.ndarray, pending: np.ndarray | None) -> np.ndarray:
    """Indices of the rows of X_pool : (n, d) equal to no row of pending : (k, d).

    Compared in chunks of rows, so a long pool takes bounded memory. Raises
    ValueError when every row is pending.
    """
    available = np.ones(len(X_pool), dtype=bool)
    if pending is not None and len(pending):
        step = max(1, _BLOCK_ELEMENTS // (len(pending) * max(1, X_pool.shape[1])))
        for start in range(0, len(X_pool), step):
            block = X_pool[start : start + step]
            available[start : start + step] &= ~(
                (block[:, None, :] == pending[None, :, :]).all(axis=-1).any(axis=1)
            )
    if not available.any():
        raise ValueError("every row of X_pool is pending; nothing left to pick")
    return np.flatnonzero(available)


def _rows_to_indices(candidates: Tensor, choices: Tensor) -> list[int]:
    """Positions in ``choices`` of the picked rows, each position used once."""
    indices: list[int] = []
    for row in candidates:
        match = torch.where((choices == row).all(dim=-1))[0].tolist()
        indices.append(next(i for i in match if i not in indices))
    return indices


def select_batch(
    surrogate,
    X_pool: np.ndarray,
    y_train: np.ndarray,
    batch_size: int,
    maximize: bool = True,
    seed: int | None = None,
    *,
    kind: str = "qlogei",
    X_train: np.ndarray | None = None,
    pending: np.ndarray | None = None,
    beta: float = 2.0,
    constraint: Callable[[np.ndarray], np.ndarray] | float | None = None,
    top_share: float = TOP_SHARE,
    budget: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose a batch of distinct rows from the pool.

    Kinds (:data:`ACQUISITIONS`):

    - ``"qlogei"``: BoTorch ``qLogExpectedImprovement`` over the best of ``y_train``
      (mapped to the model's scale by the surrogate's ``to_model_scale``).
    - ``"qlognei"``: ``qLogNoisyExpectedImprovement`` with ``X_train`` as baseline,
      for noisy observations (no trust placed in the best observed value).
    - ``"ptop"``: probability that a new *measurement* lands in the top
      ``top_share`` (default 5 %) of all rows: the candidates, the pending rows
      and the results so far. The threshold is where the expected number of rows
      above it is that share (:func:`top_threshold`), so it comes from the
      model, not from one lucky result. This is the active-search goal of a
      discovery campaign, finding many good materials rather than polishing one
      (Garnett et al. 2012): it explores while nothing predicted clears the
      threshold and re-measures candidates that confidently do. Batches
      condition on each pick's mean before the next. matforge's default.
      Where the rows outnumber ``budget``, the evaluations the campaign may
      spend in all, the top is ``top_share`` of as many rows as the budget can
      measure, the best ``top_share * budget`` rows still to measure: a
      campaign that can measure a seventh of a pool and aims for 5 % of all of
      it counts rows just above that bar as wins and spends its budget
      re-measuring them; aiming higher makes it look for the candidates whose
      upside is large. The results leave that count, since a result in hand
      cannot be found again: counted, the best results would set the bar once
      measured, and the campaign would stop finding good rows late in the run
      (``benchmarks/README.md``).
    - ``"pucb"``: upper confidence bound of a new *measurement*: posterior mean
      plus ``sqrt(beta)`` times the predictive standard deviation, learned noise
      included. With noisy, replicated data this keeps re-measuring promising
      candidates worth more than chasing the model's uncertainty alone. Batches
      hallucinate each pick's outcome at its mean before the next (GP-BUCB,
      Desautels et al. 2014), so a batch spreads out.
    - ``"ucb"``: ``qUpperConfidenceBound`` with ``beta``.
    - ``"thompson"``: ``batch_size`` joint posterior samples over the pool; slot k
      takes the best row of sample k not already picked.
    - ``"greedy"``: the rows with the best posterior mean.
    - ``"explore"``: the row with the largest posterior standard deviation, then the
      model is conditioned on its own mean there and the next is picked, so the
      batch spreads out instead of clustering in one uncertain region.

    ``greedy``, ``explore`` and ``thompson`` read ``model_``'s posterior, in the
    scale the model predicts; a monotone target transform keeps the ranking.

    The BoTorch kinds build the batch by sequential greedy conditioning
    (``optimize_acqf_discrete``). With ``maximize=False`` every kind ranks by the
    negated objective.

    Large pools (more than :data:`LARGE_POOL` rows): ``ptop``, ``pucb``,
    ``explore`` and ``greedy`` predict every row once, in chunks, and condition
    the model for the batch's later picks only at the :data:`SHORTLIST` rows the
    first pick ranks best, so memory and time grow with the pool only through
    that one pass (16 of a million rows in about 6 s on 2 cores with the sparse
    GP, ``benchmarks/pool_scale.py``). For ``pucb`` and ``explore`` the picks are
    those of the whole pool (a row's score only falls as the batch is conditioned
    on; a row outside the shortlist that could still beat a pick joins it), and
    for ``greedy`` trivially; for ``ptop`` the first pick is, and the rows outside
    the shortlist keep their first prediction for the later ones
    (:func:`_large_pool_ptop`). The BoTorch kinds and ``thompson`` score the
    whole pool at every pick (``thompson`` samples it jointly: not for pools of
    more than a few thousand rows).

    Pending evaluations: pool rows equal to a ``pending`` row are never picked.
    BoTorch kinds get ``pending`` as ``X_pending``, so rows whose outcome the
    running evaluations will probably reveal lose value; ``explore`` conditions
    on them like on its own picks. ``greedy`` and ``thompson`` need nothing more:
    conditioning on a pending point leaves the posterior mean unchanged, and a
    joint sample over pool and pending rows has the same pool marginal.

    Constraint: a callable ``constraint(X) -> p`` gives the probability that each
    row of X : (n, n_features) is feasible, shape (n,) or (n, 2) as scikit-learn's
    ``predict_proba`` (the second column is read as P(feasible)). The log-kinds add
    ``log p`` to the log-acquisition, i.e. they maximize ``p * EI``. Other kinds
    multiply by ``p`` after shifting their value by its minimum over the pool, so
    an infeasible row scores like the worst one. A number ``c`` instead, for a
    model with two outputs (objective, constraint), requires the second output to
    be ``<= c``: the log-kinds pass it to BoTorch as a native outcome constraint
    (``best_f`` is then the best feasible row when ``y_train`` has both columns),
    the others weight by the posterior probability ``P(output_2 <= c)``; ``c`` is
    in the scale the model predicts.

    Parameters
    ----------
    surrogate : fitted :class:`~matforge.engine.models.base.Surrogate`; its BoTorch
        model's first output is the objective
    X_pool : array of shape (n_candidates, n_features)
    y_train : array of shape (n_train,) or (n_train, n_outputs), the observed
        values; only ``qlogei`` reads it
    batch_size : number of candidates to pick (fewer when fewer rows are available)
    maximize : whether larger objective values are better
    seed : seeds the Monte-Carlo samplers and Thompson samples; the global torch
        random state is left as it was
    kind : one of :data:`ACQUISITIONS`
    X_train : array of shape (n_train, n_features), needed by ``qlognei``
    pending : array of shape (n_pending, n_features), rows still being evaluated
    beta : exploration weight of ``ucb`` and ``pucb``
    top_share : share of all rows that ``ptop`` counts as the top, in (0, 1)
    budget : evaluations the campaign may spend in all (None: unlimited), which
        ``ptop`` aims by where the rows outnumber it (its top: the best
        ``top_share * budget`` rows still to measure)
    constraint : callable giving P(feasible) per row, a bound on the model's second
        output, or None

    Returns
    -------
    indices : array of shape (batch_size,), rows of X_pool in the order picked
    values : array of shape (batch_size,), the acquisition value of each pick as
        ranked (larger is better), given the earlier picks and the pending rows
    """
    if kind not in ACQUISITIONS:
        raise ValueError(
            f"unknown acquisition kind {kind!r}; known kinds: {', '.join(ACQUISITIONS)}"
        )
    positive_int("batch_size", batch_size)
    if budget is not None:
        positive_int("budget", budget)
    if not beta >= 0:
        raise ValueError(f"beta must be non-negative, got {beta!r}")
    if not 0 < top_share < 1:
        raise ValueError(f"top_share must be in (0, 1), got {top_share!r}")
    model = surrogate.botorch_model()
    X_pool = _as_2d("X_pool", X_pool)
    if len(X_pool) == 0:
        raise ValueError("X_pool is empty")
    pending_t = None
    if pending is not None:
        pending = _as_2d("pending", pending, X_pool.shape[1])
        if len(pending):
            pending_t = as_tensor(pending)
    rows = rows_not_pending(X_pool, pending)
    choices = as_tensor(X_pool[rows])
    q = min(int(batch_size), len(rows))
    sign = 1.0 if maximize else -1.0
    feasibility = _feasibility_function(constraint, model)

    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        if kind in ("qlogei", "qlognei", "ucb"):
            candidates, values = _botorch_batch(
                kind, surrogate, model, choices, q, sign, y_train, maximize, X_train,
                pending_t, beta, constraint, feasibility,
            )
            picked = _rows_to_indices(candidates, choices)
            values = values.detach()
        else:
            p = None if feasibility is None else feasibility(choices)
            large = len(choices) > LARGE_POOL
            if kind == "greedy":
                mean, _ = _posterior_objective(model, choices)
                score = _shift_and_weight(sign * mean, p)
                order = torch.argsort(score, descending=True)[:q]
                picked, values = order.tolist(), score[order]
            elif kind == "thompson":
                with torch.no_grad():
                    samples = model.posterior(choices).rsample(torch.Size([q]))[..., 0]
                picked, picked_values = [], []
                taken = torch.zeros(len(choices), dtype=torch.bool)
                for sample in samples:
                    score = _shift_and_weight(sign * sample, p).masked_fill(taken, -torch.inf)
                    best = int(torch.argmax(score))
                    taken[best] = True
                    picked.append(best)
                    picked_values.append(score[best])
                values = torch.stack(picked_values)
            elif kind == "ptop":
                objective = np.asarray(y_train, dtype=float)
                objective = objective if objective.ndim == 1 else objective[:, 0]
                finite = np.isfinite(objective)
                observed = sign * surrogate.to_model_scale(objective[finite])
                p_rows = p_observed = None
                if feasibility is not None:
                    p_rows = p if pending_t is None else torch.cat([p, feasibility(pending_t)])
                    p_observed = _observed_feasibility(
                        y_train, X_train, finite, constraint, feasibility
                    )
                log_p = 0.0 if p is None else p.clamp_min(_MIN_PROBABILITY).log()

                def score_of(conditioned):
                    return log_p + _log_probability_of_top(
                        conditioned, choices, pending_t, observed, top_share, sign, p_rows,
                        p_observed, budget,
                    )

                if large:
                    p_pending = None
                    if p_rows is not None and pending_t is not None:
                        p_pending = p_rows[len(choices):]
                    picked, values = _large_pool_ptop(
                        surrogate.acquisition_model(), pending_t, choices, q, observed,
                        top_share, sign, p, p_pending, p_observed, budget,
                    )
                else:
                    picked, values = _sequential_greedy(
                        surrogate.acquisition_model(), pending_t, choices, q, score_of
                    )
                values = values.exp()  # P(top), times P(feasible)
            elif kind == "pucb":

                def upper_bound(conditioned, X):
                    mean, std = _posterior_objective(conditioned, X, observation_noise=True)
                    return sign * mean + beta**0.5 * std

                def score_of(conditioned):
                    return _shift_and_weight(upper_bound(conditioned, choices), p)

                if large:
                    picked, values = _large_pool_greedy(model, pending_t, choices, q,
                                                        upper_bound, p, shifted=True)
                else:
                    picked, values = _sequential_greedy(model, pending_t, choices, q, score_of)
            else:

                def spread(conditioned, X):
                    return _posterior_objective(conditioned, X)[1]

                def score_of(conditioned):
                    std = spread(conditioned, choices)
                    return std if p is None else std * p

                if large:
                    picked, values = _large_pool_greedy(model, pending_t, choices, q, spread, p,
                                                        shifted=False)
                else:
                    picked, values = _sequential_greedy(model, pending_t, choices, q, score_of)
    return rows[np.asarray(picked, dtype=int)], values.numpy().astype(float)


class BatchAcquisition(Acquisition):
    """A built-in kind of :func:`select_batch`, registered under its ``kind`` name.

    Parameters
    ----------
    beta : exploration weight of ``ucb`` and ``pucb``
    top_share : share of all rows ``ptop`` aims for
    """

    kind: ClassVar[str] = ""

    def __init__(self, beta: float = 1.0, top_share: float = TOP_SHARE):
        self.beta = beta
        self.top_share = top_share

    def select(self, surrogate, X_pool, y_train, n, *, maximize=True, seed=None, X_train=None,
               pending=None, constraint=None, budget=None):
        return select_batch(
            surrogate, X_pool, y_train, n, maximize=maximize, seed=seed, kind=self.kind,
            X_train=X_train, pending=pending, beta=self.beta, constraint=constraint,
            top_share=self.top_share, budget=budget,
        )


class ProbabilityOfTop(BatchAcquisition):
    kind = "ptop"


class PredictiveUCB(BatchAcquisition):
    kind = "pucb"


class LogExpectedImprovement(BatchAcquisition):
    kind = "qlogei"


class LogNoisyExpectedImprovement(BatchAcquisition):
    kind = "qlognei"


class UpperConfidenceBound(BatchAcquisition):
    kind = "ucb"


class ThompsonSampling(BatchAcquisition):
    kind = "thompson"


class Greedy(BatchAcquisition):
    kind = "greedy"


class Explore(BatchAcquisition):
    kind = "explore"


class RandomAcquisition(Acquisition):
    """Uniform random picks: the baseline every campaign should beat."""

    needs_model = False

    def select(self, surrogate, X_pool, y_train, n, *, maximize=True, seed=None, X_train=None,
               pending=None, constraint=None, budget=None):
        rows = rows_not_pending(_as_2d("X_pool", X_pool), pending)
        rng = np.random.default_rng(seed)
        picked = rng.choice(rows, size=min(positive_int("n", n), len(rows)), replace=False)
        return picked, np.full(len(picked), np.nan)
