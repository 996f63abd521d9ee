"""One campaign round, and a campaign as rounds until the budget is spent.

:func:`run_round` proposes, featurizes, screens and selects, claims the picks in
the store, hands the claimed work to a dispatcher, then flags anomalies,
measures the next round's model and records what it did. The budget and
resume arithmetic live here: whatever happens between runs (a kill, a review
that changes the training set, a lowered budget), a round never claims more
than ``batch_size`` evaluations and a campaign never more than ``budget``.

The dispatcher is handed in: :class:`SerialDispatcher` evaluates in this
process; the Prefect flow (``flows/campaign.py``) dispatches each evaluation as a
task. A ``run_stage(name, function, *args)`` hook lets the flow run each stage
as a task of its own; by default stages are plain calls.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pymatgen.core import Structure

from matforge.engine.config import CampaignConfig, check_properties
from matforge.engine.loop import campaign as stages
from matforge.engine.materials.structures import StructureError, check_structure
from matforge.engine.store.records import RoundResult
from matforge.engine.store.sql import STATUSES, CampaignStore, Evaluation
from matforge.engine.validation import ResultError, validate_result

EXHAUSTED = "search space exhausted"


@dataclass(frozen=True)
class Work:
    """One claimed evaluation to run: the structure, and the directory it gets."""

    evaluation_id: int
    structure: Structure
    fingerprint: str
    workdir: str

    @property
    def label(self) -> str:
        """``<id>-<reduced formula>-<fingerprint prefix>``, unique within a campaign."""
        formula = self.structure.composition.reduced_formula
        return f"{self.evaluation_id}-{formula}-{self.fingerprint[:10]}"


class Evaluator(Protocol):
    """What the loop needs of an adapter (``matforge.adapters.Evaluator``)."""

    implemented_properties: tuple[str, ...]

    def evaluate(self, structure: Structure, workdir: Path) -> Any: ...

    def parameters(self) -> dict[str, Any]: ...


Dispatcher = Callable[[Sequence[Work]], None]
"""Runs claimed work; by the time it returns, each item's outcome is in the store
(``accepted``, ``failed``) unless the process is stopped."""

StageRunner = Callable[..., Any]
"""``run_stage(name, function, *args) -> function(*args)``."""


def call_stage(name: str, function: Callable, *args):
    return function(*args)


def record_result(
    store: CampaignStore, evaluation_id: int, objective: str, n_atoms: int, result: dict
) -> str:
    """Validate one adapter result and store it as ``accepted`` or ``failed`` with the
    reason; returns the status."""
    try:
        value = validate_result(result, n_atoms, objective)
    except ResultError as error:
        store.complete(evaluation_id, "failed", result=result, error=f"invalid result: {error}")
        return "failed"
    store.complete(
        evaluation_id, "accepted", objective=value, result=result,
        wall_time=result.get("wall_time"),
    )
    return "accepted"


def evaluate_claimed(
    store: CampaignStore, work: Work, objective: str, make_evaluator: Callable[[], Evaluator]
) -> str:
    """Run the adapter on one claimed structure and store the outcome; returns its status.

    The result is validated and committed right after the adapter returns.
    Exceptions from the adapter propagate, so a dispatcher's retry policy can act
    on them; a work item whose result was already committed is not run again
    (nor is its adapter built, by ``make_evaluator``).
    """
    status = store.status(work.evaluation_id)
    if status != "running":
        return status
    try:
        check_structure(work.structure)
    except StructureError as error:
        store.complete(work.evaluation_id, "failed",
                       error=f"candidate {work.label}: rejected input: {error}")
        return "failed"
    result = make_evaluator().evaluate(work.structure, Path(work.workdir))
    return record_result(store, work.evaluation_id, objective, len(work.structure),
                         result.model_dump())


def describe_error(error: BaseException) -> str:
    """The one-line ``Type: message`` of an exception."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()


class SerialDispatcher:
    """Evaluates claimed work one item after another in this process; an evaluation
    that raises is stored as ``failed`` with the error, and the campaign goes on."""

    def __init__(self, store: CampaignStore, evaluator: Evaluator, objective: str):
        self.store = store
        self.evaluator = evaluator
        self.objective = objective

    def __call__(self, work: Sequence[Work]) -> None:
        for item in work:
            try:
                evaluate_claimed(self.store, item, self.objective, lambda: self.evaluator)
            except Exception as error:
                self.store.complete(item.evaluation_id, "failed", error=describe_error(error))


def training_set(store: CampaignStore, campaign_id: int, before_round: int,
                 maximize: bool) -> list[Evaluation]:
    """Accepted results of rounds before ``before_round``, best first."""
    accepted = store.evaluations(campaign_id, statuses=("accepted",))
    return stages.rank_by_objective([e for e in accepted if e.round < before_round], maximize)


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _workdir(config: CampaignConfig, evaluation_id: int, fingerprint: str) -> str:
    return str(Path(config.workdir) / config.name / f"{evaluation_id:06d}-{fingerprint[:10]}")


def run_round(
    config: CampaignConfig,
    store: CampaignStore,
    campaign_id: int,
    round: int,
    evaluator: Evaluator,
    dispatch: Dispatcher,
    run_stage: StageRunner = call_stage,
) -> RoundResult:
    """Run (or finish) round ``round`` of a campaign and return what it did.

    What the round picks depends only on earlier rounds, so a round interrupted
    halfway picks the same candidates when it runs again and claims only those
    still missing. If the training set changed in between (a review accepted a
    flagged result), the picks may differ: the round then claims new candidates
    only up to ``batch_size`` in all, and never past the campaign's ``budget``.
    Evaluations still running from earlier, interrupted rounds are dispatched too.
    """
    started = time.perf_counter()
    maximize = config.objective.is_maximized()
    training = training_set(store, campaign_id, round, maximize)
    in_round = store.evaluations(campaign_id, round=round)
    claimed_total = store.count(campaign_id, statuses=STATUSES)
    claimed_before = store.count(campaign_id, statuses=STATUSES, before_round=round)
    # the pick's size depends on earlier rounds only (a resumed round picks the same
    # rows); what may still be claimed is capped by this round's and the campaign's claims
    n_pick = max(0, min(config.batch_size, config.budget - claimed_before))
    slots = max(0, min(config.batch_size - len(in_round), config.budget - claimed_total))

    pool = []
    if slots:
        exclude = store.fingerprints(campaign_id, before_round=round)
        pool = run_stage("propose", stages.propose, config, round, training, exclude)
    store.start_round(campaign_id, round, len(pool), None)
    claimed: list[int] = []
    # a round resumed with its claims complete keeps the model that picked them
    model_version = in_round[0].model_version if in_round else None
    if pool:
        X_train = run_stage("featurize", stages.featurize, config,
                            [e.input_structure() for e in training])
        X_pool = run_stage("featurize", stages.featurize, config, [c.structure for c in pool])
        selection = run_stage("select", stages.select, config, round, X_pool, X_train, training,
                              n_pick)
        model_version = selection.model_version
        taken = {e.fingerprint for e in in_round}
        parameters = evaluator.parameters()
        for k, i in enumerate(selection.indices):
            cand = pool[int(i)]
            if cand.fingerprint in taken:
                continue  # claimed before an interruption: dispatched below if still running
            if len(claimed) == slots:
                break
            evaluation_id, _, _ = store.claim(
                campaign_id, round, cand.structure, cand.fingerprint, cand.generator,
                config.evaluator.adapter, parameters, parent=cand.parent,
                model_version=model_version,
                predicted_mean=_finite(selection.mean[k]),
                predicted_std=_finite(selection.std[k]),
                acquisition_value=_finite(selection.acquisition[k]),
            )
            claimed.append(evaluation_id)
    running = store.evaluations(campaign_id, statuses=("running",))
    if slots and not pool and not running:
        result = RoundResult(round=round, note=EXHAUSTED,
                             seconds=time.perf_counter() - started)
        store.finish_round(campaign_id, result)
        return result

    dispatch([Work(e.id, e.input_structure(), e.fingerprint,
                   _workdir(config, e.id, e.fingerprint)) for e in running])

    results = store.evaluations(campaign_id, statuses=("accepted", "needs_review"))
    flagged = run_stage("flag", stages.flag, config, results, round)
    if flagged:
        store.set_status(flagged, "needs_review", note=f"flagged by DBSCAN in round {round}")

    # held-out quality of the model that will pick the next round
    training = training_set(store, campaign_id, round + 1, maximize)
    metrics = None
    if len(training) >= 3 and stages.needs_model(config):  # every fold keeps two points to fit
        X = run_stage("featurize", stages.featurize, config,
                      [e.input_structure() for e in training])
        y = np.array([e.objective for e in training])
        metrics = run_stage("retrain", stages.surrogate_metrics, config, X, y)
    result = RoundResult(
        round=round, n_pool=len(pool), model_version=model_version, claimed=claimed,
        evaluated=len(running), flagged=flagged,
        best=training[0].objective if training else None, surrogate=config.surrogate.kind,
        surrogate_metrics=metrics, pareto=stages.pareto_summary(config, training),
        seconds=time.perf_counter() - started,
    )
    store.finish_round(campaign_id, result)
    return result


def run_campaign(
    config: CampaignConfig,
    store: CampaignStore,
    evaluator: Evaluator,
    dispatch: Dispatcher | None = None,
    run_stage: StageRunner = call_stage,
    on_round: Callable[[RoundResult], None] | None = None,
) -> dict[str, Any]:
    """Run rounds until the campaign's budget is spent; returns :func:`summarize`'s summary.

    Running the same campaign again continues where it stopped. The campaign's
    objectives and constraints are checked against what ``evaluator`` reports
    before anything is written (:class:`~matforge.engine.config.ConfigError`).
    ``dispatch`` defaults to a :class:`SerialDispatcher`.
    """
    check_properties(config, config.evaluator.adapter, evaluator.implemented_properties)
    if dispatch is None:
        dispatch = SerialDispatcher(store, evaluator, config.objective.property)
    campaign_id = store.campaign_id(config.name, config.model_dump(mode="json"))
    rounds = store.rounds(campaign_id)
    round = rounds[-1].round if rounds and not rounds[-1].finished else len(rounds)
    while True:
        unfinished = any(r.round == round and not r.finished for r in store.rounds(campaign_id))
        spent = store.count(campaign_id, statuses=STATUSES) >= config.budget
        if spent and not unfinished and not store.count(campaign_id, statuses=("running",)):
            break
        result = run_round(config, store, campaign_id, round, evaluator, dispatch, run_stage)
        if on_round is not None:
            on_round(result)
        if result.note == EXHAUSTED:
            break
        round += 1
    return summarize(store, campaign_id, config.objective.is_maximized())


def summarize(
    store: CampaignStore, campaign_id: int, maximize: bool, top: int = 5
) -> dict[str, Any]:
    """Counts by status, the best accepted results, flagged and failed evaluations."""
    evaluations = store.evaluations(campaign_id)
    counts: dict[str, int] = {}
    for e in evaluations:
        counts[e.status] = counts.get(e.status, 0) + 1
    ranked = stages.rank_by_objective([e for e in evaluations if e.status == "accepted"], maximize)
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
