"""The campaign flow: propose, featurize, screen, select, evaluate, record, retrain, flag.

Each task wraps one engine or adapter call; the store is the source of truth,
so running the flow again continues the campaign where it stopped.
"""

from __future__ import annotations

import re
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pymatgen.core import Structure

from matforge.adapters import load_evaluator
from matforge.engine.config import CampaignConfig, EvaluatorSettings
from matforge.engine.loop import campaign as engine
from matforge.engine.loop.anomaly import flag_anomalies, residual_scores
from matforge.engine.materials.featurize import standardize
from matforge.engine.materials.generate import Candidate
from matforge.engine.materials.structures import StructureError, check_structure
from matforge.engine.store.sql import STATUSES, CampaignStore, Evaluation
from matforge.engine.validation import ResultError, validate_result

TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(**TASK)
def propose_task(
    config: CampaignConfig, round: int, parents: list[Evaluation], exclude: set[str]
) -> list[Candidate]:
    return engine.propose(config, round, parents, exclude)


@task(**TASK)
def featurize_task(elements: list[str], structures: list[Structure]) -> np.ndarray:
    return engine.featurize(elements, structures)


@task(**TASK)
def retrain_task(config: CampaignConfig, X: np.ndarray, y: np.ndarray):
    return engine.fit_surrogate(config, X, y)


@task(**TASK)
def metrics_task(config: CampaignConfig, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return engine.surrogate_metrics(config, X, y)


@task(**TASK)
def select_task(config, round, X_pool, X_train, y_train, n, model, results) -> engine.Selection:
    if model is not None and config.objectives:
        Y_train = engine.objective_matrix(config, y_train, results)
        if np.isfinite(Y_train).all(axis=1).sum() >= engine.MIN_TRAINING:
            return engine.select_pareto(config, round, X_pool, X_train, Y_train, n, model)
    constraint = engine.feasibility(config, X_train, results) if model is not None else None
    return engine.select(config, round, X_pool, X_train, y_train, n, model, constraint)


@task(**TASK, task_run_name="evaluate-{label}")
def evaluate_task(
    store_url: str,
    evaluation_id: int,
    objective_name: str,
    adapter: str,
    parameters: dict,
    structure: Structure,
    workdir: str,
    label: str,
) -> str:
    """Run the adapter on one claimed structure and store the outcome; returns its status.

    The result is validated and committed in this same task, right after the
    adapter returns, so the window in which a crash loses a paid result is one
    function call wide. Exceptions propagate so the task's retry policy can
    act on them; the dispatcher records what is left after the last retry.
    """
    store = _store(store_url)
    status = store.status(evaluation_id)
    if status != "running":
        # a retry after the result was committed (a timeout that fired just after
        # the commit): the work is done and paid for
        return status
    try:
        check_structure(structure)
    except StructureError as error:
        reason = f"candidate {label}: rejected input: {error}"
        store.complete(evaluation_id, "failed", error=reason)
        return "failed"
    evaluator = load_evaluator(adapter, parameters)
    result = evaluator.evaluate(structure, Path(workdir)).model_dump()
    return record(store, evaluation_id, objective_name, len(structure), result)


def record(
    store: CampaignStore, evaluation_id: int, objective_name: str, n_atoms: int, result: dict
) -> str:
    """Validate one result and store it as ``accepted`` or ``failed`` with the reason."""
    try:
        value = validate_result(result, n_atoms, objective_name)
    except ResultError as error:
        store.complete(evaluation_id, "failed", result=result, error=f"invalid result: {error}")
        return "failed"
    store.complete(
        evaluation_id, "accepted", objective=value, result=result,
        wall_time=result.get("wall_time"),
    )
    return "accepted"


def retry_policy(settings: EvaluatorSettings) -> dict[str, Any]:
    """Prefect task options for an adapter's timeout and retries.

    Retries wait ``retry_backoff`` seconds, doubling each time, and happen only
    for exceptions whose class or a base class is named in ``retry_on``.
    """
    retryable = set(settings.retry_on)

    def should_retry(task, task_run, state) -> bool:
        try:
            state.result()
        except Exception as error:
            return any(cls.__name__ in retryable for cls in type(error).__mro__)
        return False

    options: dict[str, Any] = {"timeout_seconds": settings.timeout, "retries": settings.retries}
    if settings.retries:
        options["retry_delay_seconds"] = [
            settings.retry_backoff * 2**i for i in range(settings.retries)
        ]
        options["retry_condition_fn"] = should_retry
    return options


@task(**TASK)
def flag_task(config: CampaignConfig, campaign_id: int, round: int) -> list[int]:
    """Flag this round's anomalous results as ``needs_review``; returns their ids."""
    settings = config.anomaly
    store = _store(config.store)
    results = store.evaluations(campaign_id, statuses=("accepted", "needs_review"))
    if not settings.enabled or len(results) < settings.min_results:
        return []
    X = engine.featurize(config.elements, [e.input_structure() for e in results])
    (X,) = standardize(X)
    residuals = residual_scores(
        np.array([e.objective for e in results]),
        np.array([np.nan if e.predicted_mean is None else e.predicted_mean for e in results]),
        np.array([np.nan if e.predicted_std is None else e.predicted_std for e in results]),
    )
    flagged = flag_anomalies(
        X,
        residuals,
        eps=settings.eps,
        min_samples=settings.min_samples,
        eps_quantile=settings.eps_quantile,
        n_components=settings.n_components,
        residual_weight=settings.residual_weight,
    )
    ids = [e.id for e, f in zip(results, flagged) if f and e.round == round and e.status == "accepted"]
    if ids:
        store.set_status(ids, "needs_review", note=f"flagged by DBSCAN in round {round}")
    return ids


@task(**TASK)
def review_artifact_task(config: CampaignConfig, campaign_id: int) -> None:
    store = _store(config.store)
    pending = store.evaluations(campaign_id, statuses=("needs_review",))
    rows = [
        {
            "evaluation": e.id,
            "round": e.round,
            "formula": e.formula,
            config.objective.property: e.objective,
            "predicted": e.predicted_mean,
            "predicted_std": e.predicted_std,
        }
        for e in pending
    ]
    key = re.sub(r"[^a-z0-9-]+", "-", f"{config.name}-needs-review".lower()).strip("-")
    create_table_artifact(
        key=key,
        table=rows or [{"evaluation": None, "note": "nothing awaits review"}],
        description=f"Results of {config.name} held out of training until reviewed "
        f"(`matforge review`).",
    )


_stores: dict[str, CampaignStore] = {}


def _store(url: str) -> CampaignStore:
    if url not in _stores:
        _stores[url] = CampaignStore(url)
    return _stores[url]


def _training(store: CampaignStore, campaign_id: int, before_round: int, maximize: bool):
    accepted = [
        e for e in store.evaluations(campaign_id, statuses=("accepted",)) if e.round < before_round
    ]
    return engine.rank_by_objective(accepted, maximize)


def _dispatch(config: CampaignConfig, store: CampaignStore, work: list[tuple[int, Structure, str]]):
    """Evaluate claimed work concurrently; each task stores its own result.

    An evaluation that still fails after its retries is stored as ``failed``
    with the error, and the campaign goes on.
    """
    logger = get_run_logger()
    ev = config.evaluator
    root = Path(config.workdir) / config.name
    evaluate = evaluate_task.with_options(**retry_policy(ev))
    futures = {}
    for evaluation_id, structure, fp in work:
        label = f"{evaluation_id}-{structure.composition.reduced_formula}-{fp[:10]}"
        fut = evaluate.submit(
            config.store, evaluation_id, config.objective.property, ev.adapter, ev.parameters,
            structure, str(root / f"{evaluation_id:06d}-{fp[:10]}"), label,
        )
        futures[fut] = evaluation_id
    for fut in as_completed(list(futures)):
        evaluation_id = futures[fut]
        fut.wait()
        if fut.state.is_completed():
            continue
        try:
            fut.result()
            error = fut.state.message or "evaluation failed"
        except Exception as exc:
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        store.complete(evaluation_id, "failed", error=error)
        logger.warning("evaluation %s failed: %s", evaluation_id, error)


@flow(name="campaign", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def campaign_flow(config: CampaignConfig) -> dict[str, Any]:
    """Run rounds until the campaign's budget of evaluations is spent.

    Returns a summary: evaluations by status and the best result.
    """
    logger = get_run_logger()
    store = _store(config.store)
    campaign_id = store.campaign_id(config.name, config.model_dump(mode="json"))
    maximize = config.objective.is_maximized()
    adapter_parameters = load_evaluator(config.evaluator.adapter, config.evaluator.parameters).parameters()

    rounds = store.rounds(campaign_id)
    round = rounds[-1]["round"] if rounds and not rounds[-1]["finished"] else len(rounds)
    if round < len(rounds):
        logger.info("resuming unfinished round %d", round)
    model = None
    features: tuple[list[int], np.ndarray] = ([], np.empty((0, 0)))

    def training_features(training: list[Evaluation]) -> np.ndarray:
        # the end of a round and the start of the next see the same training set
        nonlocal features
        ids = [e.id for e in training]
        if ids != features[0]:
            structures = [e.input_structure() for e in training]
            features = (ids, featurize_task(config.elements, structures))
        return features[1]
    while True:
        claimed = store.count(campaign_id, statuses=STATUSES)
        running = store.evaluations(campaign_id, statuses=("running",))
        # a round stopped after its last evaluation still has flagging and bookkeeping to do
        unfinished = any(
            r["round"] == round and not r["finished"] for r in store.rounds(campaign_id)
        )
        if claimed >= config.budget and not running and not unfinished:
            break
        # what this round may claim depends only on earlier rounds, so a round
        # interrupted halfway claims the same candidates when it runs again
        claimed_before = store.count(campaign_id, statuses=STATUSES, before_round=round)
        started = time.perf_counter()
        training = _training(store, campaign_id, round, maximize)
        y_train = np.array([e.objective for e in training])
        X_train = training_features(training)
        if model is None and len(training) >= engine.MIN_TRAINING and config.acquisition.kind != "random":
            model = retrain_task(config, X_train, y_train)

        n_new = max(0, min(config.batch_size, config.budget - claimed_before))
        work = [(e.id, e.input_structure(), e.fingerprint) for e in running]
        pool: list[Candidate] = []
        if n_new:
            pool = propose_task(
                config, round, training, store.fingerprints(campaign_id, before_round=round)
            )
        store.start_round(campaign_id, round, len(pool), engine.model_version(config, len(training)) if model else None)
        if pool:
            X_pool = featurize_task(config.elements, [c.structure for c in pool])
            sel = select_task(
                config, round, X_pool, X_train, y_train, n_new, model,
                [e.result for e in training],
            )
            for k, i in enumerate(sel.indices):
                cand = pool[int(i)]
                evaluation_id, status, _ = store.claim(
                    campaign_id, round, cand.structure, cand.fingerprint, cand.generator,
                    config.evaluator.adapter, adapter_parameters, parent=cand.parent,
                    model_version=sel.model_version,
                    predicted_mean=_finite(sel.mean[k]),
                    predicted_std=_finite(sel.std[k]),
                    acquisition_value=_finite(sel.acquisition[k]),
                )
                if status == "running" and evaluation_id not in {w[0] for w in work}:
                    work.append((evaluation_id, cand.structure, cand.fingerprint))
        elif not work:
            logger.warning("the generator found no new candidates; stopping before the budget")
            store.finish_round(campaign_id, round, {"note": "search space exhausted"})
            break
        _dispatch(config, store, work)
        flagged = flag_task(config, campaign_id, round)
        if flagged:
            review_artifact_task(config, campaign_id)

        training = _training(store, campaign_id, round + 1, maximize)
        metrics = None
        if len(training) >= engine.MIN_TRAINING and config.acquisition.kind != "random":
            X_train = training_features(training)
            y_train = np.array([e.objective for e in training])
            model = retrain_task(config, X_train, y_train)
            # held-out quality of the model that will pick the next round
            if len(y_train) >= 3:  # every fold must keep two points to fit on
                metrics = metrics_task(config, X_train, y_train)
        best = training[0].objective if training else None
        store.finish_round(
            campaign_id,
            round,
            {"evaluated": len(work), "flagged": flagged, "best": best,
             "surrogate": config.surrogate.kind, "surrogate_metrics": metrics,
             "pareto": engine.pareto_summary(config, training),
             "seconds": time.perf_counter() - started},
        )
        logger.info(
            "round %d: %d evaluated, %d flagged, best %s = %s",
            round, len(work), len(flagged), config.objective.property, best,
        )
        round += 1
    return summarize(store, campaign_id, maximize)


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def summarize(store: CampaignStore, campaign_id: int, maximize: bool, top: int = 5) -> dict[str, Any]:
    """Counts by status and the best accepted results of a campaign."""
    evaluations = store.evaluations(campaign_id)
    counts: dict[str, int] = {}
    for e in evaluations:
        counts[e.status] = counts.get(e.status, 0) + 1
    ranked = engine.rank_by_objective([e for e in evaluations if e.status == "accepted"], maximize)
    return {
        "evaluations": len(evaluations),
        "by_status": counts,
        "rounds": len(store.rounds(campaign_id)),
        "best": [
            {"evaluation": e.id, "formula": e.formula, "objective": e.objective, "round": e.round,
             "generator": e.generator}
            for e in ranked[:top]
        ],
        "flagged": [
            {"evaluation": e.id, "formula": e.formula, "objective": e.objective, "round": e.round}
            for e in evaluations
            if e.status == "needs_review"
        ],
        "failed": [
            {"evaluation": e.id, "formula": e.formula, "error": e.error}
            for e in evaluations
            if e.status == "failed"
        ],
    }
