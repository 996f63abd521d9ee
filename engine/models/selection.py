"""Pick a surrogate by how well its uncertainty predicts held-out data.

``make_surrogate`` builds any registered surrogate by name; ``AutoSurrogate``
cross-validates several and keeps the one with the lowest out-of-fold Gaussian
negative log likelihood, which rewards an accurate mean and an honest std
together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from matforge.engine.models.ensemble import DeepEnsembleSurrogate
from matforge.engine.models.forest import RandomForestSurrogate, RidgeSurrogate
from matforge.engine.models.gp import GPSurrogate
from matforge.engine.models.metrics import (
    RecalibratedSurrogate,
    StdRecalibrator,
    check_training_data,
    cross_validate,
    gaussian_nll,
)

SURROGATES: dict[str, type] = {
    "gp": GPSurrogate,
    "ensemble": DeepEnsembleSurrogate,
    "forest": RandomForestSurrogate,
    "ridge": RidgeSurrogate,
}
"""Surrogate classes by the name a campaign configuration uses."""

MIN_CV_ROWS = 3
"""Fewest rows for cross-validation: leave-one-out on 3 rows trains on 2."""


def make_surrogate(kind: str, random_state: int | None = None, **params):
    """A new, unfitted surrogate of the registered ``kind``.

    Parameters
    ----------
    kind : one of ``SURROGATES``, or "auto" for :class:`AutoSurrogate`
    random_state : seed passed to the surrogate
    **params : further constructor arguments of that surrogate
    """
    if kind == "auto":
        return AutoSurrogate(random_state=random_state, **params)
    try:
        cls = SURROGATES[kind]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown surrogate kind {kind!r}; known kinds: auto, {', '.join(sorted(SURROGATES))}"
        ) from None
    return cls(random_state=random_state, **params)


class AutoSurrogate:
    """The surrogate kind with the lowest cross-validated NLL, refitted on all data.

    Each kind in ``kinds`` is scored by ``cross_validate``; the winner is refitted
    on every row and ``predict`` and ``model_`` delegate to it. With fewer rows
    than ``n_splits`` the folds are leave-one-out; with fewer than 3 rows there is
    nothing to validate and "gp" (or the first kind) is used unscored.
    ``reason_`` says which of these happened and why the winner won.

    Parameters
    ----------
    kinds : names from ``SURROGATES`` to compare
    n_splits : cross-validation folds
    random_state : seed for the folds and every candidate surrogate
    recalibrate : if True, each kind's std is rescaled by a ``StdRecalibrator``
        fitted to its out-of-fold predictions, kinds are compared by the NLL after
        rescaling, and the winner's ``predict`` std carries its factor
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("gp", "forest", "ensemble", "ridge"),
        n_splits: int = 5,
        random_state: int | None = None,
        recalibrate: bool = False,
    ):
        self.kinds = kinds
        self.n_splits = n_splits
        self.random_state = random_state
        self.recalibrate = recalibrate

    def fit(self, X: np.ndarray, y: np.ndarray) -> AutoSurrogate:
        """Fit to X : array of shape (n_samples, n_features), y : shape (n_samples,).

        Sets ``chosen_`` (the winning kind), ``cv_scores_`` ({kind: metrics dict
        from ``uncertainty_metrics``, plus ``nll_recalibrated`` and ``std_scale``
        when recalibrating}), ``reason_`` and ``surrogate_`` (the refitted winner).
        """
        kinds = list(self.kinds)
        if not kinds:
            raise ValueError("kinds is empty; name at least one of " + ", ".join(SURROGATES))
        for kind in kinds:
            make_surrogate(kind)  # unknown names fail here, before any fitting
        if self.n_splits < 2:
            raise ValueError(f"n_splits must be at least 2, got {self.n_splits}")
        X, y = check_training_data(X, y, min_rows=2)

        def make(kind):
            return lambda: make_surrogate(kind, random_state=self.random_state)

        self.cv_scores_: dict[str, dict[str, float]] = {}
        scale = {}
        if len(y) < MIN_CV_ROWS:
            chosen = "gp" if "gp" in kinds else kinds[0]
            self.reason_ = (
                f"only {len(y)} rows, too few to cross-validate (need {MIN_CV_ROWS}); "
                f"using {chosen!r} unscored"
            )
        else:
            n_splits = min(self.n_splits, len(y))
            scheme = (
                f"leave-one-out ({len(y)} rows < n_splits={self.n_splits})"
                if n_splits < self.n_splits
                else f"{n_splits}-fold"
            )
            key = "nll_recalibrated" if self.recalibrate else "nll"
            for kind in kinds:
                metrics, mean, std = cross_validate(
                    make(kind), X, y, n_splits=n_splits, random_state=self.random_state
                )
                if self.recalibrate:
                    scale[kind] = StdRecalibrator().fit(y, mean, std).scale_
                    metrics["std_scale"] = scale[kind]
                    metrics["nll_recalibrated"] = gaussian_nll(y, mean, std * scale[kind])
                self.cv_scores_[kind] = metrics
            chosen = min(kinds, key=lambda k: self.cv_scores_[k][key])
            others = ", ".join(
                f"{k} {self.cv_scores_[k][key]:.3g}" for k in kinds if k != chosen
            )
            self.reason_ = (
                f"{chosen!r} has the lowest {scheme} cross-validated {key} "
                f"{self.cv_scores_[chosen][key]:.3g}" + (f" (others: {others})" if others else "")
            )
        surrogate = make(chosen)().fit(X, y)
        if chosen in scale:
            surrogate = RecalibratedSurrogate(surrogate, scale[chosen])
        self.chosen_ = chosen
        self.surrogate_ = surrogate
        self.n_features_in_ = X.shape[1]
        return self

    @property
    def model_(self):
        """The chosen surrogate's BoTorch model."""
        return self.surrogate_.model_

    def predict(self, X: np.ndarray, return_std: bool = False):
        """The chosen surrogate's mean (and std) at X : (n, n_features); shape (n,)."""
        return self.surrogate_.predict(X, return_std=return_std)
