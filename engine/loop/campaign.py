"""One round of a campaign as pure functions; the Prefect flow wraps each in a task.

Every random choice in round ``r`` draws from ``numpy.random.default_rng([seed, r, stage])``,
so re-running an interrupted round proposes and selects the same candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from matforge.engine.acquisition.inverse import (
    composition_candidates,
    optimize_composition,
    supported_totals,
)
from matforge.engine.acquisition.multiobjective import (
    default_ref_point,
    hypervolume,
    pareto_mask,
    select_pareto_batch,
)
from matforge.engine.acquisition.strategy import MIN_TRAINING, Selection, Strategy  # noqa: F401 (re-exported)
from matforge.engine.config import CampaignConfig
from matforge.engine.materials.featurize import MaterialFeaturizer
from matforge.engine.materials.generate import (
    Candidate,
    DecorationGenerator,
    MutationGenerator,
    propose_candidates,
)
from matforge.engine.models.forest import FeasibilityClassifier
from matforge.engine.models.gp import GPSurrogate
from matforge.engine.models.metrics import uncertainty_metrics
from matforge.engine.store.sql import Evaluation

PROPOSE, SELECT, INVERSE = 0, 1, 2


def round_rng(seed: int, round: int, stage: int) -> np.random.Generator:
    return np.random.default_rng([seed, round, stage])


def propose(
    config: CampaignConfig, round: int, parents: Sequence[Evaluation], exclude: set[str]
) -> list[Candidate]:
    """The round's candidate pool: inverse-designed compositions, mutations of the best
    results and decorations.

    ``parents`` are accepted evaluations, best first; candidates whose
    fingerprint is in ``exclude`` are never proposed.
    """
    g = config.generator
    rng = round_rng(config.seed, round, PROPOSE)
    decorator = DecorationGenerator(config.elements, g.lattices, g.max_atoms, g.max_species)
    mutator = MutationGenerator(config.elements, g.max_species)
    designed = inverse_designed(config, round, parents, decorator, exclude)
    parent_candidates = [
        Candidate(e.input_structure(), e.generator, fingerprint=e.fingerprint)
        for e in parents[: g.n_parents]
    ]
    return designed + propose_candidates(
        g.pool_size - len(designed),
        rng,
        decorator,
        mutator,
        parent_candidates,
        g.mutation_fraction,
        set(exclude) | {c.fingerprint for c in designed},
    )


def inverse_designed(
    config: CampaignConfig,
    round: int,
    results: Sequence[Evaluation],
    decorator: DecorationGenerator,
    exclude: set[str],
) -> list[Candidate]:
    """Up to ``generator.inverse_design`` candidates whose compositions a GP on element
    fractions rates best: the acquisition is maximized over the continuous composition
    simplex, snapped to whole-number stoichiometries the decorator can place.
    """
    n = config.generator.inverse_design
    if n == 0 or len(results) < MIN_TRAINING:
        return []
    fractions = np.array([
        [e.input_structure().composition.get_atomic_fraction(el) for el in config.elements]
        for e in results
    ])
    y = np.array([e.objective for e in results])
    seed = int(round_rng(config.seed, round, INVERSE).integers(2**31))
    model = GPSurrogate(random_state=seed).fit(fractions, y, bounds=_unit_box(len(config.elements)))
    compositions = optimize_composition(
        model, config.elements, y, n, maximize=config.objective.is_maximized(),
        max_atoms=config.generator.max_atoms, seed=seed, totals=supported_totals(decorator),
        max_species=config.generator.max_species,
    )
    return composition_candidates(compositions, decorator, round_rng(config.seed, round, INVERSE),
                                  exclude)


def _unit_box(d: int) -> np.ndarray:
    return np.stack([np.zeros(d), np.ones(d)])


def rank_by_objective(evaluations: Sequence[Evaluation], maximize: bool) -> list[Evaluation]:
    """Evaluations with an objective value, best first."""
    scored = [e for e in evaluations if e.objective is not None and np.isfinite(e.objective)]
    return sorted(scored, key=lambda e: -e.objective if maximize else e.objective)


def featurize(elements: Sequence[str], structures: Sequence) -> np.ndarray:
    """Raw composition and structure features, array of shape (n_structures, n_features)."""
    return MaterialFeaturizer(elements).transform(list(structures))


def strategy(config: CampaignConfig) -> Strategy:
    """The configured surrogate and acquisition."""
    return Strategy(
        surrogate=config.surrogate.kind,
        acquisition=config.acquisition.kind,
        beta=config.acquisition.beta,
        top_share=config.acquisition.top_share,
        surrogate_params=dict(config.surrogate.parameters),
        budget=config.budget,
    )


def fit_surrogate(config: CampaignConfig, X: np.ndarray, y: np.ndarray):
    """Fit the configured surrogate on X : (n_train, n_features), y : (n_train,).

    The seed depends on the training size only, so a refit after a restart
    reproduces the model the interrupted run had.
    """
    return strategy(config).fit(
        X, y, seed=config.seed + len(y), maximize=config.objective.is_maximized()
    )


def surrogate_metrics(config: CampaignConfig, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Held-out quality of the configured surrogate on X : (n, n_features), y : (n,).

    K-fold cross-validation (5 folds, leave-one-out below 5 results): RMSE, MAE,
    Gaussian NLL, share of points inside the 90 % predictive interval and the
    miscalibration area, all for a new measurement (noise included).
    """
    from sklearn.model_selection import KFold

    s = strategy(config)
    seed = config.seed + len(y)
    mean, std = np.empty(len(y)), np.empty(len(y))
    inside = np.zeros(len(y), dtype=bool)
    for train, test in KFold(min(5, len(y)), shuffle=True, random_state=seed).split(X):
        model = s.fit(X[train], y[train], seed, maximize=config.objective.is_maximized())
        if isinstance(model, GPSurrogate):
            mean[test], std[test] = model.predict(X[test], return_std=True, observation_noise=True)
            lo, hi = model.predict_interval(X[test], level=0.9)
        else:
            mean[test], std[test] = model.predict(X[test], return_std=True)
            lo, hi = mean[test] - 1.6449 * std[test], mean[test] + 1.6449 * std[test]
        inside[test] = (y[test] >= lo) & (y[test] <= hi)
    metrics = uncertainty_metrics(y, mean, np.maximum(std, 1e-12))
    metrics["coverage90"] = float(inside.mean())
    return {k: float(v) for k, v in metrics.items()}


def result_value(result: dict | None, name: str) -> float | None:
    """A scalar of a stored result dict: a field or an entry of its ``properties``."""
    if not result:
        return None
    value = result.get(name, (result.get("properties") or {}).get(name))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    return float(value)


def feasibility(config: CampaignConfig, X_train: np.ndarray, results: Sequence[dict | None]):
    """P(all outcome constraints hold) as ``p(X) -> array (n,)``, or None without constraints.

    One :class:`~matforge.engine.models.forest.FeasibilityClassifier` per constraint is
    fitted on the training results that report the property; the probabilities
    multiply (constraints treated as independent).
    """
    if not config.constraints or len(X_train) == 0:
        return None
    classifiers = []
    for c in config.constraints:
        values = np.array([result_value(r, c.property) for r in results], dtype=float)
        known = np.isfinite(values)
        if not known.any():
            continue
        threshold, below = (c.below, True) if c.below is not None else (c.above, False)
        clf = FeasibilityClassifier(threshold, below=below, random_state=config.seed)
        classifiers.append(clf.fit(X_train[known], values[known]))
    if not classifiers:
        return None

    def probability(X: np.ndarray) -> np.ndarray:
        return np.prod([clf.predict_proba(X) for clf in classifiers], axis=0)

    return probability


def objective_matrix(config: CampaignConfig, y: np.ndarray, results: Sequence[dict | None]):
    """Every objective's values, array (n, 1 + len(config.objectives)); NaN where unreported."""
    columns = [np.asarray(y, dtype=float)]
    for o in config.objectives:
        columns.append(np.array([result_value(r, o.property) for r in results], dtype=float))
    return np.column_stack(columns)


def maximize_flags(config: CampaignConfig) -> tuple[bool, ...]:
    return tuple(o.is_maximized() for o in [config.objective, *config.objectives])


def select_pareto(
    config: CampaignConfig,
    round: int,
    X_pool: np.ndarray,
    X_train: np.ndarray,
    Y_train: np.ndarray,
    n: int,
    model,
) -> Selection:
    """Pick ``n`` rows by qLogNEHVI over all objectives (rows of Y_train : (n_train, m)
    with a missing value are left out of the fit). ``model`` is the primary objective's
    surrogate; one more is fitted per further objective."""
    seed = int(round_rng(config.seed, round, SELECT).integers(2**31))
    keep = np.isfinite(Y_train).all(axis=1)
    X, Y = X_train[keep], Y_train[keep]
    s = strategy(config)
    flags = maximize_flags(config)
    surrogates = [s.fit(X, Y[:, j], seed, maximize=flags[j]) for j in range(Y.shape[1])]
    idx, acq = select_pareto_batch(
        surrogates, X_pool, Y, X, min(n, len(X_pool)), maximize=flags, seed=seed,
    )
    mean, std = model.predict(X_pool[idx], return_std=True)
    return Selection(np.asarray(idx), mean, std, np.asarray(acq),
                     f"{config.surrogate.kind}-nehvi-n{len(Y)}")


def pareto_summary(config: CampaignConfig, evaluations: Sequence[Evaluation]) -> dict | None:
    """The Pareto front of the accepted results and its hypervolume, or None if single-objective."""
    if not config.objectives:
        return None
    Y = objective_matrix(config, [e.objective for e in evaluations],
                         [e.result for e in evaluations])
    keep = np.isfinite(Y).all(axis=1)
    if keep.sum() < 2:
        return None
    done = [e for e, k in zip(evaluations, keep) if k]
    Y = Y[keep]
    flags = maximize_flags(config)
    front = pareto_mask(Y, flags)
    names = [o.property for o in [config.objective, *config.objectives]]
    ref = default_ref_point(Y, flags)
    return {
        "front": [{"evaluation": e.id, "formula": e.formula, **dict(zip(names, map(float, y)))}
                  for e, y, f in zip(done, Y, front) if f],
        "reference_point": [float(r) for r in ref],
        "hypervolume": float(hypervolume(Y, ref, flags)),
    }


def model_version(config: CampaignConfig, n_train: int) -> str:
    return strategy(config).model_version(n_train)


def select(
    config: CampaignConfig,
    round: int,
    X_pool: np.ndarray,
    X_train: np.ndarray,
    y_train: np.ndarray,
    n: int,
    model=None,
    constraint=None,
) -> Selection:
    """Pick ``n`` rows of the pool X_pool : (n_pool, n_features).

    Without a model (too little data) the pick is spread over feature space;
    with ``acquisition.kind: random`` it is uniform (the random baseline);
    otherwise the configured acquisition on ``model`` chooses the batch.
    """
    seed = int(round_rng(config.seed, round, SELECT).integers(2**31))
    if model is None and config.acquisition.kind != "random":
        y_train = y_train[:0]  # spread-out random picks until a model is fitted
        X_train = X_train[:0]
    return strategy(config).select(
        X_train, y_train, X_pool, n, maximize=config.objective.is_maximized(), seed=seed,
        model=model, constraint=constraint,
    )
