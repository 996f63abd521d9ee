"""Pick a surrogate by how well its uncertainty predicts held-out data.

``make_surrogate`` builds any registered surrogate by name; ``AutoSurrogate``
cross-validates several and keeps the one with the lowest out-of-fold Gaussian
negative log likelihood, which rewards an accurate mean and an honest std
together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from matforge.engine import plugins
from matforge.engine.models.base import Surrogate, WrappedSurrogate
from matforge.engine.models.metrics import (
    RecalibratedSurrogate,
    StdRecalibrator,
    check_training_data,
    cross_validate,
    gaussian_nll,
)

MIN_CV_ROWS = 3
"""Fewest rows for cross-validation: leave-one-out on 3 rows trains on 2."""


def surrogate_class(kind: str) -> type[Surrogate]:
    """The surrogate class installed as ``kind`` (entry-point group ``matforge.surrogates``)."""
    return plugins.load("surrogates", kind, Surrogate)


def make_surrogate(kind: str, random_state: int | None = None, **params) -> Surrogate:
    """A new, unfitted surrogate of the installed ``kind``.

    Parameters
    ----------
    kind : a name in the ``matforge.surrogates`` entry-point group ("gp", "ensemble",
        "forest", "ridge", "auto" and any plug-in)
    random_state : seed passed to the surrogate
    **params : further constructor arguments of that surrogate
    """
    return surrogate_class(kind)(random_state=random_state, **params)


class AutoSurrogate(WrappedSurrogate):
    """The surrogate kind with the lowest cross-validated NLL, refitted on all data.

    Each kind in ``kinds`` is scored by ``cross_validate``; the winner is refitted
    on every row and ``predict`` and the acquisitions' view delegate to it. With fewer rows
    than ``n_splits`` the folds are leave-one-out; with fewer than 3 rows there is
    nothing to validate and "gp" (or the first kind) is used unscored.
    ``reason_`` says which of these happened and why the winner won.

    Parameters
    ----------
    kinds : installed surrogate kinds to compare
    n_splits : cross-validation folds
    random_state : seed for the folds and every candidate surrogate
    recalibrate : if True, each kind's std is rescaled by a ``StdRecalibrator``
        fitted to its out-of-fold predictions, kinds are compared by the NLL after
        rescaling, and the winner's ``predict`` std carries its factor
    parameters : constructor arguments per kind, e.g. ``{"gp": {"likelihood": "student_t"}}``,
        so a kind chosen here is the same model a campaign fits under that kind's name
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("gp", "forest", "ensemble", "ridge"),
        n_splits: int = 5,
        random_state: int | None = None,
        recalibrate: bool = False,
        parameters: dict[str, dict] | None = None,
    ):
        self.parameters = parameters
        self.kinds = kinds
        self.n_splits = n_splits
        self.random_state = random_state
        self.recalibrate = recalibrate

    def fit(self, X: np.ndarray, y: np.ndarray, bounds: np.ndarray | None = None) -> AutoSurrogate:
        """Fit to X : array of shape (n_samples, n_features), y : shape (n_samples,).

        Sets ``chosen_`` (the winning kind), ``cv_scores_`` ({kind: metrics dict
        from ``uncertainty_metrics``, plus ``nll_recalibrated`` and ``std_scale``
        when recalibrating}), ``reason_`` and ``surrogate_`` (the refitted winner).
        """
        kinds = list(self.kinds)
        if not kinds:
            raise ValueError("kinds is empty; name at least one installed surrogate kind")
        parameters = dict(self.parameters or {})
        for kind in kinds:
            # unknown names and parameters fail here, before any fitting
            make_surrogate(kind, **parameters.get(kind, {}))
        if self.n_splits < 2:
            raise ValueError(f"n_splits must be at least 2, got {self.n_splits}")
        X, y = check_training_data(X, y, min_rows=2)

        def make(kind):
            return lambda: make_surrogate(
                kind, random_state=self.random_state, **parameters.get(kind, {})
            )

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
        surrogate = make(chosen)().fit(X, y, bounds)
        if chosen in scale:
            surrogate = RecalibratedSurrogate(surrogate, scale[chosen])
        self.chosen_ = chosen
        self.surrogate_ = surrogate
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray, return_std: bool = False, observation_noise: bool = False):
        """The chosen surrogate's mean (and std) at X : (n, n_features); shape (n,)."""
        return self.surrogate_.predict(
            X, return_std=return_std, observation_noise=observation_noise
        )

    def predict_interval(self, X: np.ndarray, level: float = 0.9):
        return self.surrogate_.predict_interval(X, level)
