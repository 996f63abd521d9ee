"""The acquisition contract: choose a batch of candidates given a fitted surrogate.

Plug-ins register a subclass under the entry-point group ``matforge.acquisitions``;
matforge's own kinds (``ptop``, ``pucb``, ``qlogei``, ...) register the same way.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from matforge.engine.models.base import Surrogate


class Acquisition(abc.ABC):
    """Picks rows of a candidate pool; settings go in the constructor.

    ``needs_model = False`` marks an acquisition that picks without a surrogate
    (the random baseline): it is called with ``surrogate=None`` from the first round.
    """

    needs_model: ClassVar[bool] = True

    @abc.abstractmethod
    def select(
        self,
        surrogate: Surrogate | None,
        X_pool: np.ndarray,
        y_train: np.ndarray,
        n: int,
        *,
        maximize: bool = True,
        seed: int | None = None,
        X_train: np.ndarray | None = None,
        pending: np.ndarray | None = None,
        constraint=None,
        budget: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pick ``n`` distinct rows of X_pool : (n_pool, n_features).

        Parameters
        ----------
        surrogate : fitted to X_train : (n_train, n_features), y_train : (n_train,)
        pending : (n_pending, n_features), rows still being evaluated; never picked
        constraint : callable giving P(feasible) per row, or None
        budget : evaluations the campaign may spend in all, or None

        Returns
        -------
        indices : array of shape (n,), rows of X_pool in the order picked
        values : array of shape (n,), each pick's acquisition value (larger is better)
        """
