"""How a campaign chooses what to evaluate next: a surrogate plus an acquisition.

One :class:`Strategy` serves both a live campaign (``engine.loop.campaign.select``)
and a retrospective pool campaign (``engine.loop.pool.run_pool_campaign``), so a
benchmark on historical data measures exactly the code that will spend DFT time.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matforge.engine import plugins
from matforge.engine.acquisition.base import Acquisition
from matforge.engine.acquisition.batch import TOP_SHARE, diverse_random_batch
from matforge.engine.config import Find
from matforge.engine.models.base import Surrogate
from matforge.engine.models.selection import make_surrogate
from matforge.engine.validation import positive_int

MIN_TRAINING = 2
"""Fewest results before the surrogate takes over from spread-out random picks (a GP
needs two; the pool protocol of Liang et al. 2021 starts the model from two rows)."""

DEFAULT_SURROGATE = "gp"
DEFAULT_ACQUISITION = "ptop"
DEFAULT_BETA = 1.0
FINDS = typing.get_args(Find)
"""A campaign's goal: the best few the budget can measure, or the top share (``Strategy.find``)."""
GP_DEFAULTS = {"likelihood": "student_t", "df": 2.0}
"""Arguments of the default GP (:class:`~matforge.engine.models.gp.GPSurrogate`) a strategy fits,
under its ``surrogate_params``: Student-t noise with 2 degrees of freedom whose outliers
lie on the worse side of the goal only (``outliers`` follows ``maximize``).
Replicated lab data have failed samples that measure far worse than the material
is; a symmetric t would also discount the lucky replicates in the good direction
that a discovery campaign is looking for (``benchmarks/README.md``)."""


@dataclass
class Selection:
    """The rows picked from a pool with what the surrogate said of them.

    Arrays have shape (n_picked,); mean, std and acquisition are NaN where no
    model was used; ``model`` is the fitted surrogate that picked them (None where none)
    and ``metrics`` its held-out quality (``engine/loop/campaign.py:model_quality``).
    """

    indices: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    acquisition: np.ndarray
    model_version: str | None = None
    model: Surrogate | None = None
    metrics: dict[str, float] | None = None  # the model's held-out quality, where measured


def unit_scale(*blocks: np.ndarray) -> tuple[np.ndarray, ...]:
    """Min-max scale arrays with the same columns to [0, 1] over their union.

    Constant columns become 0.
    """
    stacked = np.vstack(blocks)
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return tuple((b - lo) / span for b in blocks)


def make_acquisition(kind: str, beta: float = DEFAULT_BETA, top_share: float = TOP_SHARE,
                     **parameters) -> Acquisition:
    """The installed acquisition ``kind`` (entry-point group ``matforge.acquisitions``).

    ``beta`` and ``top_share`` go to kinds whose constructor takes them (the built-in
    ones); ``parameters`` are further constructor arguments (a plug-in's).
    """
    cls = plugins.load("acquisitions", kind, Acquisition)
    accepted = inspect.signature(cls.__init__).parameters
    shared = {k: v for k, v in (("beta", beta), ("top_share", top_share)) if k in accepted}
    try:
        return cls(**shared, **parameters)
    except TypeError as error:
        raise ValueError(f"acquisition {kind!r}: bad parameters: {error}") from None


@dataclass
class Strategy:
    """Fit ``surrogate`` to the data so far and pick a batch by ``acquisition``.

    The default, a GP with an ARD Matérn-5/2 kernel on rank-transformed (Gaussian
    copula) targets and Student-t noise on the worse side of the goal
    (:data:`GP_DEFAULTS`), averaged over sampled hyperparameters while data are few,
    picking by the probability that a new measurement lands in the top 5 % of
    all candidates (``ptop``; of as many rows as ``budget`` can measure, where
    the campaign has a budget and the rows outnumber it), is the one benchmarked in
    ``benchmarks/liang2021.py``. ``acquisition='random'``
    picks uniformly (the baseline every campaign should beat).

    A live campaign (``engine/loop/campaign.py``) and a pool replay
    (``engine/loop/pool.py``) both pick through :meth:`select`, which fits the
    surrogate with inputs normalized over the training rows and the pool together,
    so the benchmark measures the code that spends DFT time.

    Parameters
    ----------
    surrogate : an installed surrogate kind
        (:func:`~matforge.engine.models.selection.make_surrogate`)
    acquisition : an installed acquisition kind (:func:`make_acquisition`), or "random"
    beta : exploration weight of the UCB kinds
    top_share : share of all candidates that ``ptop`` aims for
    surrogate_params : keyword arguments of the surrogate; for "gp" they update
        :data:`GP_DEFAULTS`, and "auto" fits its GP with those defaults too
    budget : evaluations the campaign may spend in all, or None. Where candidates,
        results and pending evaluations together outnumber it, ``ptop`` aims for
        the top ``top_share`` of as many rows as the budget can measure, the
        best ``top_share * budget`` rows still to measure (see ``select_batch``).
    acquisition_params : further keyword arguments of the acquisition (plug-ins)
    find : the campaign's goal, "best" (the default: where the rows outnumber the budget,
        ``ptop`` aims for the best ``top_share * budget`` rows still to measure) or
        "top_share" (``ptop`` aims for the top ``top_share`` of all rows, whatever the
        budget, results included)
    """

    surrogate: str = DEFAULT_SURROGATE
    acquisition: str = DEFAULT_ACQUISITION
    beta: float = DEFAULT_BETA
    top_share: float = TOP_SHARE
    surrogate_params: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None
    acquisition_params: dict[str, Any] = field(default_factory=dict)
    find: str = "best"

    def __post_init__(self):
        if self.find not in FINDS:
            raise ValueError(f"find must be one of {', '.join(FINDS)}, got {self.find!r}")
        self.acquisition_ = make_acquisition(
            self.acquisition, self.beta, self.top_share, **self.acquisition_params
        )
        make_surrogate(self.surrogate, **self.surrogate_arguments())  # fails early on a bad name
        if self.budget is not None:
            positive_int("budget", self.budget)

    @property
    def name(self) -> str:
        if not self.acquisition_.needs_model:
            return self.acquisition
        return f"{self.surrogate}-{self.acquisition}"

    def surrogate_arguments(self, maximize: bool = True) -> dict[str, Any]:
        """The surrogate's keyword arguments: ``surrogate_params``, over :data:`GP_DEFAULTS`
        (outliers on the worse side of the goal) for a GP, also inside "auto"."""
        gp = {**GP_DEFAULTS, "outliers": "below" if maximize else "above"}
        if self.surrogate == "gp":
            return {**gp, **self.surrogate_params}
        if self.surrogate == "auto":
            given = dict(self.surrogate_params.get("parameters") or {})
            given["gp"] = {**gp, **given.get("gp", {})}
            return {**self.surrogate_params, "parameters": given}
        return dict(self.surrogate_params)

    def fit(self, X: np.ndarray, y: np.ndarray, seed: int, X_pool: np.ndarray | None = None,
            maximize: bool = True) -> Surrogate:
        """The surrogate fitted to X : (n, n_features), y : (n,); inputs are normalized
        over X and X_pool : (n_pool, n_features) together, ``maximize`` is the goal (a
        GP's outliers lie on its worse side)."""
        bounds = np.stack([X.min(0), X.max(0)])
        if X_pool is not None and len(X_pool):  # without stacking a large pool under X
            bounds = np.stack([np.minimum(bounds[0], X_pool.min(0)),
                               np.maximum(bounds[1], X_pool.max(0))])
        model = make_surrogate(
            self.surrogate, random_state=seed, **self.surrogate_arguments(maximize)
        )
        return model.fit(X, y, bounds)

    def select(
        self,
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_pool: np.ndarray,
        n: int,
        maximize: bool = True,
        seed: int = 0,
        pending: np.ndarray | None = None,
        constraint=None,
    ) -> Selection:
        """Pick ``n`` rows of X_pool : (n_pool, n_features) given X_train, y_train.

        With fewer than ``MIN_TRAINING`` results the picks are spread over
        feature space; an acquisition that needs no model (``random``) picks on
        its own. Otherwise the surrogate is fitted here, its inputs normalized
        over training data and pool together. ``constraint(X) -> P(feasible)``
        weights the acquisition.
        """
        n = min(int(n), len(X_pool))
        if self.acquisition_.needs_model and len(y_train) >= MIN_TRAINING:
            model = self.fit(X_train, y_train, seed, X_pool, maximize)
            idx, acq = self.acquisition_.select(
                model, X_pool, y_train, n, maximize=maximize, seed=seed, X_train=X_train,
                pending=pending, constraint=constraint,
                budget=self.budget if self.find == "best" else None,
            )
            mean, std = model.predict(X_pool[idx], return_std=True)
            return Selection(np.asarray(idx), mean, std, np.asarray(acq),
                             self.model_version(len(y_train)), model)
        if self.acquisition_.needs_model:
            (scaled,) = unit_scale(X_pool)
            idx = diverse_random_batch(scaled, n, np.random.default_rng(seed))
        else:
            idx, _ = self.acquisition_.select(None, X_pool, y_train, n, seed=seed,
                                              pending=pending)
        nan = np.full(len(idx), np.nan)
        return Selection(np.asarray(idx), nan, nan, nan, None)

    def model_version(self, n_train: int) -> str:
        return f"{self.surrogate}-n{n_train}"

    def chooser(self):
        """A ``choose(X_train, y_train, X_pool, n, maximize, seed) -> indices`` for pool
        campaigns."""

        def choose(X_train, y_train, X_pool, n, maximize=True, seed=0):
            return self.select(X_train, y_train, X_pool, n, maximize=maximize, seed=seed).indices

        return choose
