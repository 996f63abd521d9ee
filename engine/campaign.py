"""One round of a campaign as pure functions; the Prefect flow wraps each in a task.

Every random choice in round ``r`` draws from ``numpy.random.default_rng([seed, r, stage])``,
so re-running an interrupted round proposes and selects the same candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matforge.engine.acquisition import diverse_random_batch, select_batch
from matforge.engine.config import CampaignConfig
from matforge.engine.featurize import MaterialFeaturizer, standardize
from matforge.engine.generate import (
    Candidate,
    DecorationGenerator,
    MutationGenerator,
    propose_candidates,
)
from matforge.engine.store import Evaluation
from matforge.engine.surrogate import GPSurrogate

PROPOSE, SELECT = 0, 1
MIN_TRAINING = 3
"""Fewest accepted results before the surrogate takes over from diverse random picks."""


def round_rng(seed: int, round: int, stage: int) -> np.random.Generator:
    return np.random.default_rng([seed, round, stage])


def propose(
    config: CampaignConfig, round: int, parents: Sequence[Evaluation], exclude: set[str]
) -> list[Candidate]:
    """The round's candidate pool: decorations plus mutations of the best results.

    ``parents`` are accepted evaluations, best first; candidates whose
    fingerprint is in ``exclude`` are never proposed.
    """
    g = config.generator
    decorator = DecorationGenerator(config.elements, g.lattices, g.max_atoms, g.max_species)
    mutator = MutationGenerator(config.elements, g.max_species)
    parent_candidates = [
        Candidate(e.input_structure(), e.generator, fingerprint=e.fingerprint)
        for e in parents[: g.n_parents]
    ]
    return propose_candidates(
        g.pool_size,
        round_rng(config.seed, round, PROPOSE),
        decorator,
        mutator,
        parent_candidates,
        g.mutation_fraction,
        exclude,
    )


def rank_by_objective(evaluations: Sequence[Evaluation], maximize: bool) -> list[Evaluation]:
    """Evaluations with an objective value, best first."""
    scored = [e for e in evaluations if e.objective is not None and np.isfinite(e.objective)]
    return sorted(scored, key=lambda e: -e.objective if maximize else e.objective)


def featurize(elements: Sequence[str], structures: Sequence) -> np.ndarray:
    """Raw composition and structure features, array of shape (n_structures, n_features)."""
    return MaterialFeaturizer(elements).transform(list(structures))


def fit_surrogate(config: CampaignConfig, X: np.ndarray, y: np.ndarray) -> GPSurrogate:
    """Fit the configured surrogate on X : (n_train, n_features), y : (n_train,).

    The seed depends on the training size only, so a refit after a restart
    reproduces the model the interrupted run had.
    """
    return GPSurrogate(random_state=config.seed + len(y)).fit(X, y)


def model_version(config: CampaignConfig, n_train: int) -> str:
    return f"{config.surrogate.kind}-n{n_train}"


@dataclass
class Selection:
    """The candidates picked in a round with what the surrogate said of them.

    Arrays have shape (n_picked,); mean, std and acquisition are NaN where no
    model was used.
    """

    indices: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    acquisition: np.ndarray
    model_version: str | None


def select(
    config: CampaignConfig,
    round: int,
    X_pool: np.ndarray,
    y_train: np.ndarray,
    n: int,
    model: GPSurrogate | None = None,
) -> Selection:
    """Pick ``n`` rows of the pool X_pool : (n_pool, n_features).

    Without a model (too little data) the pick is spread over feature space;
    with ``acquisition.kind: random`` it is uniform (the random baseline);
    otherwise qLogEI on ``model`` chooses the batch.
    """
    rng = round_rng(config.seed, round, SELECT)
    n = min(n, len(X_pool))
    if config.acquisition.kind == "random" or model is None:
        if config.acquisition.kind == "random":
            idx = rng.choice(len(X_pool), size=n, replace=False)
        else:
            (scaled,) = standardize(X_pool)
            idx = diverse_random_batch(scaled, n, rng)
        nan = np.full(len(idx), np.nan)
        return Selection(np.asarray(idx), nan, nan, nan, None)
    maximize = config.objective.is_maximized()
    idx, acq = select_batch(model, X_pool, y_train, n, maximize=maximize, seed=config.seed + round)
    mean, std = model.predict(X_pool[idx], return_std=True)
    version = model_version(config, len(y_train))
    return Selection(np.asarray(idx), mean, std, np.asarray(acq), version)
