"""The stages of one campaign round as pure functions; :mod:`.round` runs them in order.

Every random choice in round ``r`` draws from ``numpy.random.default_rng([seed, r, stage])``,
so re-running an interrupted round proposes and selects the same candidates.
Generators, the featurizer, the surrogate and the acquisition are the plug-ins the
campaign file names (``matforge plugins`` lists what is installed).
"""

from __future__ import annotations

import inspect
import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np

from matforge.engine import plugins
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
from matforge.engine.acquisition.strategy import MIN_TRAINING, Selection, Strategy
from matforge.engine.config import SHARED_GENERATOR_SETTINGS, CampaignConfig
from matforge.engine.loop.anomaly import flag_anomalies, residual_scores
from matforge.engine.materials.dedup import StructureIndex
from matforge.engine.materials.featurize import Featurizer, standardize
from matforge.engine.materials.generate import (
    Candidate,
    DecorationGenerator,
    Generator,
    draw_candidates,
)
from matforge.engine.materials.structures import composition_of
from matforge.engine.materials.validity import Filters, filter_candidates
from matforge.engine.models.forest import FeasibilityClassifier
from matforge.engine.models.gp import GPSurrogate
from matforge.engine.models.held_out import gp_held_out
from matforge.engine.models.metrics import uncertainty_metrics
from matforge.engine.store.sql import Evaluation

__all__ = ["MIN_TRAINING", "Selection"]

PROPOSE, SELECT, INVERSE = 0, 1, 2


def round_rng(seed: int, round: int, stage: int) -> np.random.Generator:
    return np.random.default_rng([seed, round, stage])


def make_generator(config: CampaignConfig, kind: str, parameters: dict | None = None) -> Generator:
    """The installed generator ``kind`` for this campaign's elements; the ``generator``
    section's lattices, max_atoms and max_species go to it where it takes them."""
    cls = plugins.load("generators", kind, Generator)
    accepted = inspect.signature(cls.__init__).parameters
    shared = {k: getattr(config.generator, k) for k in SHARED_GENERATOR_SETTINGS
              if k in accepted}
    if "candidates" in accepted:
        shared["candidates"] = config.candidates
    return cls(config.elements, **shared, **(parameters or {}))


def basic_generators(config: CampaignConfig) -> tuple[str, str]:
    """The generators that fill a round's pool and mutate its best results: decoration and
    mutation of structures, or in a campaign of compositions their composition kin."""
    if config.candidates == "composition":
        return "compositions", "composition-mutation"
    return "decoration", "mutation"


class Pool(list):
    """A round's candidates, with what each generator contributed (``generated``, by the
    generator's name), what the validity filters refused (``refused``, by reason) and,
    where made with the pool, the candidates' raw features (``features``)."""

    def __init__(self, candidates=(), generated=None, refused=None, features=None):
        super().__init__(candidates)
        self.generated = dict(generated or {})
        self.refused = dict(refused or {})
        self.features = features


def filters(config: CampaignConfig) -> Filters:
    """The campaign's validity filters (its ``generator`` section)."""
    g = config.generator
    return Filters(frozenset(config.elements), g.max_atoms, g.min_distance,
                   tuple(g.volume_per_atom), g.charge_balanced)


def propose(
    config: CampaignConfig, round: int, parents: Sequence[Evaluation],
    exclude: set[str] | StructureIndex,
) -> Pool:
    """The round's candidate pool: inverse-designed compositions, the plug-in generators'
    shares (``generator.sources``), mutations of the best results and decorations, each
    through the validity filters (:func:`filters`).

    ``parents`` are accepted evaluations, best first: the best ``n_parents`` are mutated,
    and a generator that learns (``trainable``, e.g. ``learned``) is fitted on all of
    them first. Candidates seen in ``exclude`` (fingerprints, or a
    :class:`~matforge.engine.materials.dedup.StructureIndex` of the campaign's history)
    are never proposed, nor two that ``StructureMatcher`` calls the same.
    """
    g = config.generator
    rng = round_rng(config.seed, round, PROPOSE)
    valid, refused = filters(config), Counter()
    fill_kind, mutation_kind = basic_generators(config)
    filler = make_generator(config, fill_kind)
    seen = exclude if isinstance(exclude, StructureIndex) else StructureIndex(exclude)
    designed, _ = filter_candidates(
        inverse_designed(config, round, parents, filler, seen), valid)
    parent_candidates = [
        Candidate(e.input_structure(), e.generator, fingerprint=e.fingerprint)
        for e in parents[: g.n_parents]
    ]
    n = g.pool_size - len(designed)
    quotas = []
    for source in g.sources:
        generator = make_generator(config, source.kind, source.parameters)
        if getattr(generator, "trainable", False):
            generator = generator.fit([e.input_structure() for e in parents],
                                      [e.objective for e in parents],
                                      config.objective.is_maximized(), seed=config.seed + round)
        quotas.append((generator, _nearest_int(source.share * g.pool_size)))
    extra = min(n, sum(q for _, q in quotas))
    n_mut = _nearest_int(g.mutation_fraction * (n - extra)) if parent_candidates else 0
    quotas.append((make_generator(config, mutation_kind), n_mut))
    drawn = draw_candidates(quotas, rng, parent_candidates, seen, filters=valid,
                            refused=refused)
    # decorations (compositions) fill what the others left, so the pool is full wherever
    # the space allows
    fill = draw_candidates([(filler, n - len(drawn) if g.fill else 0)], rng,
                           parent_candidates, seen, filters=valid, refused=refused)
    pool = designed + drawn + fill
    return Pool(pool, Counter(c.generator.split(":")[0] for c in pool), refused)


def _nearest_int(x: float) -> int:
    """The builtin ``round`` (``propose``'s argument named ``round`` hides it)."""
    return int(round(x))


def inverse_designed(
    config: CampaignConfig,
    round: int,
    results: Sequence[Evaluation],
    decorator: Generator,
    exclude: set[str] | StructureIndex,
) -> list[Candidate]:
    """Up to ``generator.inverse_design`` candidates whose compositions a GP on element
    fractions rates best: the acquisition is maximized over the continuous composition
    simplex, snapped to whole-number stoichiometries the decorator can place (in a campaign
    of compositions, where ``decorator`` makes compositions, the compositions themselves).
    """
    n = config.generator.inverse_design
    if n == 0 or len(results) < MIN_TRAINING:
        return []
    fractions = np.array([
        [composition_of(e.input_structure()).get_atomic_fraction(el) for el in config.elements]
        for e in results
    ])
    y = np.array([e.objective for e in results])
    seed = int(round_rng(config.seed, round, INVERSE).integers(2**31))
    model = GPSurrogate(random_state=seed).fit(fractions, y, bounds=_unit_box(len(config.elements)))
    compositions = optimize_composition(
        model, config.elements, y, n, maximize=config.objective.is_maximized(),
        max_atoms=config.generator.max_atoms, seed=seed,
        totals=supported_totals(decorator) if isinstance(decorator, DecorationGenerator) else None,
        max_species=config.generator.max_species,
    )
    return composition_candidates(
        compositions, decorator if isinstance(decorator, DecorationGenerator) else None,
        round_rng(config.seed, round, INVERSE), exclude)


def _unit_box(d: int) -> np.ndarray:
    return np.stack([np.zeros(d), np.ones(d)])


def rank_by_objective(evaluations: Sequence[Evaluation], maximize: bool) -> list[Evaluation]:
    """Evaluations with an objective value, best first."""
    scored = [e for e in evaluations if e.objective is not None and np.isfinite(e.objective)]
    return sorted(scored, key=lambda e: -e.objective if maximize else e.objective)


def featurize(config: CampaignConfig, structures: Sequence) -> np.ndarray:
    """Raw features of the configured featurizer, array of shape (n_structures, n_features)."""
    kind = config.featurizer.kind
    cls = plugins.load("featurizers", kind, Featurizer)
    return cls(config.elements, **config.featurizer.parameters).transform(list(structures))


class ResultFeatures:
    """A campaign run's raw feature rows of its results, by evaluation id: a result's row
    is its candidate's (:meth:`add` at the claim), read from the store's structure only
    for results claimed before the run began. A result's input never changes, and the
    featurizers describe one material per row, so a row is the row of a fresh
    featurization. Shared with the proposal thread."""

    def __init__(self, config: CampaignConfig):
        self.config = config
        self._rows: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def add(self, evaluation_id: int, row: np.ndarray) -> None:
        with self._lock:
            self._rows[evaluation_id] = row

    def rows(self, results: Sequence[Evaluation]) -> np.ndarray:
        """Rows of ``results``, array (len(results), n_features)."""
        with self._lock:
            missing = [e for e in results if e.id not in self._rows]
        if missing or not results:  # (no results: the featurizer's empty array)
            made = featurize(self.config, [e.input_structure() for e in missing])
            if not results:
                return made
            for e, row in zip(missing, made):
                self.add(e.id, row)
        with self._lock:
            return np.vstack([self._rows[e.id] for e in results])


def featurize_round(config: CampaignConfig, training: Sequence[Evaluation], pool: Sequence,
                    features: ResultFeatures | None = None,
                    X_pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw features of the training results and of the pool's structures (``X_pool`` where
    they were made already), from ``features`` where it has them."""
    if X_pool is None:
        X_pool = featurize(config, pool)
    if not len(training):
        return X_pool[:0], X_pool
    if features is None:
        return featurize(config, [e.input_structure() for e in training]), X_pool
    return features.rows(training), X_pool


def strategy(config: CampaignConfig) -> Strategy:
    """The configured surrogate and acquisition."""
    return Strategy(
        surrogate=config.surrogate.kind,
        acquisition=config.acquisition.kind,
        beta=config.acquisition.beta,
        top_share=config.acquisition.top_share,
        surrogate_params=dict(config.surrogate.parameters),
        budget=config.budget,
        acquisition_params=dict(config.acquisition.parameters),
        find=config.find,
    )


def needs_model(config: CampaignConfig) -> bool:
    """Whether the campaign's acquisition picks with a surrogate (not the random baseline)."""
    return strategy(config).acquisition_.needs_model


KFOLD_MAX = 1000
"""Most results a surrogate without closed-form held-out predictions is cross-validated on
each round (five refits); above it a round reports no held-out quality."""


def model_quality(config: CampaignConfig, model, X: np.ndarray,
                  y: np.ndarray) -> dict[str, float] | None:
    """Held-out quality of the ``model`` that picks a round, fitted to X : (n, n_features),
    y : (n,): read from the exact GP's leave-one-out predictions
    (:func:`~matforge.engine.models.held_out.gp_held_out`, no refit), else K-fold
    cross-validation of the configured surrogate (:func:`surrogate_metrics`) up to
    :data:`KFOLD_MAX` results; None with fewer than 3 results or above that."""
    metrics = gp_held_out(model, y) if model is not None else None
    if metrics is None and 3 <= len(y) <= KFOLD_MAX:
        metrics = surrogate_metrics(config, X, y)
    return metrics


def surrogate_metrics(config: CampaignConfig, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Held-out quality of the configured surrogate on X : (n, n_features), y : (n,).

    K-fold cross-validation (5 folds, leave-one-out below 5 results): RMSE, MAE,
    Gaussian NLL, share of points inside the 90 % predictive interval and the
    miscalibration area, all for a new measurement (noise included). Each fold's
    model is fitted as a round fits it, inputs normalized over its training rows
    and the rows it is asked about.
    """
    from sklearn.model_selection import KFold

    s = strategy(config)
    seed = config.seed + len(y)
    mean, std = np.empty(len(y)), np.empty(len(y))
    inside = np.zeros(len(y), dtype=bool)
    for train, test in KFold(min(5, len(y)), shuffle=True, random_state=seed).split(X):
        model = s.fit(X[train], y[train], seed, X[test], maximize=config.objective.is_maximized())
        mean[test], std[test] = model.predict(X[test], return_std=True, observation_noise=True)
        lo, hi = model.predict_interval(X[test], level=0.9)
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
) -> Selection:
    """Pick ``n`` rows by qLogNEHVI over all objectives (rows of Y_train : (n_train, m)
    with a missing value are left out of the fit); one surrogate per objective."""
    seed = int(round_rng(config.seed, round, SELECT).integers(2**31))
    keep = np.isfinite(Y_train).all(axis=1)
    X, Y = X_train[keep], Y_train[keep]
    s = strategy(config)
    flags = maximize_flags(config)
    surrogates = [s.fit(X, Y[:, j], seed, X_pool, maximize=flags[j]) for j in range(Y.shape[1])]
    idx, acq = select_pareto_batch(
        surrogates, X_pool, Y, X, min(n, len(X_pool)), maximize=flags, seed=seed,
    )
    mean, std = surrogates[0].predict(X_pool[idx], return_std=True)
    return Selection(np.asarray(idx), mean, std, np.asarray(acq),
                     f"{config.surrogate.kind}-nehvi-n{len(Y)}", surrogates[0],
                     model_quality(config, surrogates[0], X, Y[:, 0]))


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


def select(
    config: CampaignConfig,
    round: int,
    X_pool: np.ndarray,
    X_train: np.ndarray,
    training: Sequence[Evaluation],
    n: int,
) -> Selection:
    """Pick ``n`` rows of the pool X_pool : (n_pool, n_features) given the training
    results and their features X_train : (n_train, n_features).

    With several objectives (and enough results reporting all of them), by
    qLogNEHVI; otherwise by the configured strategy, its acquisition weighted by
    P(feasible) under the outcome constraints. Without enough data the pick is
    spread over feature space; ``acquisition.kind: random`` picks uniformly.
    """
    y_train = np.array([e.objective for e in training], dtype=float)
    results = [e.result for e in training]
    if config.objectives and needs_model(config):
        Y_train = objective_matrix(config, y_train, results)
        if np.isfinite(Y_train).all(axis=1).sum() >= MIN_TRAINING:
            return select_pareto(config, round, X_pool, X_train, Y_train, n)
    seed = int(round_rng(config.seed, round, SELECT).integers(2**31))
    constraint = feasibility(config, X_train, results) if len(y_train) >= MIN_TRAINING else None
    selection = strategy(config).select(
        X_train, y_train, X_pool, n, maximize=config.objective.is_maximized(), seed=seed,
        constraint=constraint,
    )
    if selection.model is not None:
        selection.metrics = model_quality(config, selection.model, X_train, y_train)
    return selection


def anomaly_inputs(config: CampaignConfig, results: Sequence[Evaluation],
                   features: ResultFeatures | None = None):
    """What DBSCAN clusters: the results' standardized features (from ``features`` where it
    has them) and the surrogate's standardized residual at claim time (0 where there was
    no prediction)."""
    X = features.rows(results) if features is not None else featurize(
        config, [e.input_structure() for e in results])
    (X,) = standardize(X)
    residuals = residual_scores(
        np.array([e.objective for e in results], dtype=float),
        np.array([np.nan if e.predicted_mean is None else e.predicted_mean for e in results]),
        np.array([np.nan if e.predicted_std is None else e.predicted_std for e in results]),
    )
    return X, residuals


def anomaly_settings(config: CampaignConfig) -> dict:
    s = config.anomaly
    return dict(eps=s.eps, min_samples=s.min_samples, eps_quantile=s.eps_quantile,
                n_components=s.n_components, residual_weight=s.residual_weight)


def flag(config: CampaignConfig, results: Sequence[Evaluation], round: int,
         features: ResultFeatures | None = None) -> list[int]:
    """Ids of this round's accepted results that DBSCAN marks as anomalous.

    ``results`` are the campaign's accepted and needs-review results; they are
    featurized, standardized and clustered with the surrogate's standardized
    residual at claim time (:func:`~matforge.engine.loop.anomaly.flag_anomalies`).
    """
    if not config.anomaly.enabled or len(results) < config.anomaly.min_results:
        return []
    flagged = flag_anomalies(*anomaly_inputs(config, results, features),
                             **anomaly_settings(config))
    return [e.id for e, f in zip(results, flagged)
            if f and e.round == round and e.status == "accepted"]
