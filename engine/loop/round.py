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

import contextvars
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pymatgen.core import Structure

from matforge.engine.config import (
    CampaignConfig,
    ConfigError,
    check_elements,
    check_properties,
    check_screen,
    parse_config,
)
from matforge.engine.loop import campaign as stages
from matforge.engine.loop import screen as screening
from matforge.engine.loop.lease import Lease
from matforge.engine.loop.results import evaluate_isolated, read_result
from matforge.engine.materials.dedup import MatchMemo, StructureIndex, space_group
from matforge.engine.materials.structures import (
    StructureError,
    check_material,
    composition_of,
    n_atoms,
)
from matforge.engine.settings import get_settings
from matforge.engine.store.records import RoundRecord, RoundResult
from matforge.engine.store.sql import STATUSES, CampaignStore, Evaluation, Owner, Pick
from matforge.engine.validation import ResultError, validate_result

EXHAUSTED = "search space exhausted"


@dataclass(frozen=True)
class Work:
    """One claimed evaluation to run: the structure, the directory it gets, the run that
    owns its claim and the seconds it may take (None: no limit)."""

    evaluation_id: int
    structure: Structure
    fingerprint: str
    workdir: str
    key: str = ""
    owner: str | None = None
    timeout: float | None = None

    @property
    def label(self) -> str:
        """``<id>-<reduced formula>-<fingerprint prefix>``, unique within a campaign."""
        formula = composition_of(self.structure).reduced_formula
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
"""``run_stage(name, function, *args, round=r) -> function(*args)``: stage ``name`` of round
``r`` (the flow names its task run after both)."""


def call_stage(name: str, function: Callable, *args, round: int | None = None):
    return function(*args)


def record_result(
    store: CampaignStore, evaluation_id: int, objective: str, n_atoms: int, result: dict,
    owner: str | None = None,
) -> str:
    """Validate one adapter result and store it as ``accepted`` or ``failed`` with the
    reason; returns the evaluation's status."""
    try:
        value = validate_result(result, n_atoms, objective)
    except ResultError as error:
        store.complete(evaluation_id, "failed", result=result, error=f"invalid result: {error}",
                       owner=owner)
    else:
        store.complete(evaluation_id, "accepted", objective=value, result=result,
                       wall_time=result.get("wall_time"), owner=owner)
    return store.status(evaluation_id)


_in_flight = 0
_in_flight_lock = threading.Lock()


def in_flight() -> int:
    """Evaluations this process has started and not yet committed to the store."""
    return _in_flight


@contextmanager
def _counted():
    global _in_flight
    with _in_flight_lock:
        _in_flight += 1
    try:
        yield
    finally:
        with _in_flight_lock:
            _in_flight -= 1


def evaluate_claimed(
    store: CampaignStore, work: Work, objective: str, make_evaluator: Callable[[], Evaluator],
    env: dict[str, str] | None = None,
) -> str:
    """Run the adapter on one claimed structure and store the outcome; returns its status.

    The adapter runs in a child process (:func:`~matforge.engine.loop.isolate.run_isolated`)
    that is killed with everything it started at ``work.timeout``, and that writes the
    result to the evaluation's directory before the store commits it. A result found
    there (the run that paid for it died before its commit) is collected, not paid for
    again. ``env`` is added to the child's environment (its slot's GPU devices and thread
    count). ``make_evaluator`` builds the adapter in the child, so it must pickle (e.g.
    ``functools.partial(load_evaluator, name, parameters)``). Exceptions from the adapter
    propagate, so a dispatcher's retry policy can act on them; work whose result is
    already committed is not run again.
    """
    status = store.status(work.evaluation_id)
    if status != "running":
        return status
    with _counted():
        result = read_result(work.workdir, work.key)
        if result is None:
            try:
                check_material(work.structure)
            except StructureError as error:
                store.complete(work.evaluation_id, "failed", owner=work.owner,
                               error=f"candidate {work.label}: rejected input: {error}")
                return store.status(work.evaluation_id)
            result = evaluate_isolated(make_evaluator, work.structure, work.workdir, work.key,
                                       work.timeout, work.label, env)
        return record_result(store, work.evaluation_id, objective, n_atoms(work.structure), result,
                             work.owner)


def _itself(value):
    return value


def describe_error(error: BaseException) -> str:
    """The one-line ``Type: message`` of an exception."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()


class SerialDispatcher:
    """Evaluates claimed work one item after another; an evaluation that raises is stored
    as ``failed`` with the error, and the campaign goes on. ``evaluator`` is pickled into
    each evaluation's child process."""

    def __init__(self, store: CampaignStore, evaluator: Evaluator, objective: str):
        self.store = store
        self.make_evaluator = partial(_itself, evaluator)
        self.objective = objective

    def __call__(self, work: Sequence[Work]) -> None:
        for item in work:
            try:
                evaluate_claimed(self.store, item, self.objective, self.make_evaluator)
            except Exception as error:
                self.store.complete(item.evaluation_id, "failed", error=describe_error(error),
                                    owner=item.owner)


def training_set(store: CampaignStore, campaign_id: int, before_round: int,
                 maximize: bool) -> list[Evaluation]:
    """Accepted results of rounds before ``before_round``, best first."""
    return ranked_training(store.evaluations(campaign_id, statuses=("accepted",)),
                           before_round, maximize)


def ranked_training(evaluations: Sequence[Evaluation], before_round: int,
                    maximize: bool) -> list[Evaluation]:
    """The accepted ones of ``evaluations`` from rounds before ``before_round``, best first:
    :func:`training_set` from evaluations already read."""
    return stages.rank_by_objective(
        [e for e in evaluations if e.status == "accepted" and e.round < before_round], maximize)


class EvaluationCache:
    """A campaign's evaluations as :meth:`CampaignStore.evaluations` returns them, read
    again only where they changed: each :meth:`read` asks the store for every evaluation's
    status (one small query) and reads whole rows only for new evaluations, those whose
    status changed and those still running (whose job may have changed). A round reads
    its campaign three times; without this each read decoded every stored structure and
    result again, work that grows with the campaign."""

    def __init__(self, store: CampaignStore, campaign_id: int):
        self.store, self.campaign_id = store, campaign_id
        self._by_id: dict[int, Evaluation] = {}

    def read(self) -> list[Evaluation]:
        """The campaign's evaluations now, in the order they were claimed."""
        statuses = self.store.statuses(self.campaign_id)
        stale = [i for i, status in statuses.items()
                 if status == "running" or getattr(self._by_id.get(i), "status", None) != status]
        if stale:
            # one plain read where most rows changed, or more than a query should list
            whole = len(stale) > min(10_000, max(100, len(statuses) // 2))
            fresh = self.store.evaluations(self.campaign_id, ids=None if whole else stale)
            self._by_id.update((e.id, e) for e in fresh)
        self._by_id = {i: self._by_id[i] for i in statuses if i in self._by_id}
        return list(self._by_id.values())


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _pick(candidate, selection: stages.Selection, k: int, memo: MatchMemo | None) -> Pick:
    """The claim of the selection's ``k``-th pick, ``candidate``, with what the model said;
    its space group is the one deduplication found (``memo``) when it looked."""
    structure = candidate.structure
    group = None
    if isinstance(structure, Structure):
        group = (memo.group(candidate.fingerprint, structure) if memo is not None
                 else space_group(structure))
    return Pick(structure, candidate.fingerprint, candidate.generator, candidate.parent,
                selection.model_version, _finite(selection.mean[k]), _finite(selection.std[k]),
                _finite(selection.acquisition[k]), group)


def _workdir(config: CampaignConfig, evaluation_id: int, fingerprint: str) -> str:
    return str(Path(config.workdir) / config.name / f"{evaluation_id:06d}-{fingerprint[:10]}")


def history(store: CampaignStore, campaign_id: int, round: int,
            memo: MatchMemo | None = None) -> StructureIndex:
    """The candidates dispatched before ``round``, for deduplication: fingerprints and
    formulas now, stored structures of a formula and space group when a candidate asks;
    ``memo``: what the matcher learned in earlier rounds (a campaign's run keeps one)."""
    return StructureIndex(
        store.fingerprints(campaign_id, before_round=round),
        store.formulas(campaign_id, before_round=round),
        lambda formula, group: store.structures_like(campaign_id, formula, group,
                                                     before_round=round),
        memo=memo or MatchMemo())


class ProposalAhead:
    """The next round's pool, proposed and featurized in a thread while this round's
    evaluations run (``generator.ahead``). The thread runs in a copy of the caller's
    context, so a flow's stage tasks show there as the next round's ``propose`` and
    ``featurize``."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="matforge-propose")
        self._next: tuple[int, tuple[int, ...], Future] | None = None

    def start(self, round: int, parents: tuple[int, ...], propose: Callable[[], Any]) -> None:
        """Start ``propose()``, the pool of ``round`` from the results ``parents`` (ids)."""
        self.discard()
        future = self._executor.submit(contextvars.copy_context().run, propose)
        self._next = (round, parents, future)

    def take(self, round: int, parents: tuple[int, ...]):
        """The pool started for ``round`` from the same parents, or None (not started,
        or the parents changed since: a review decided, a restarted run)."""
        if self._next is None or self._next[:2] != (round, parents):
            self.discard()
            return None
        future, self._next = self._next[2], None
        return future.result()

    def discard(self) -> None:
        """Forget a proposal that will not be used, once it has stopped."""
        if self._next is not None:
            future, self._next = self._next[2], None
            future.exception()  # waits; an unused pool's error is nobody's

    def close(self) -> None:
        self.discard()
        self._executor.shutdown(wait=True)


def _ids(evaluations: Sequence[Evaluation]) -> tuple[int, ...]:
    return tuple(e.id for e in evaluations)


def proposal_parents(config: CampaignConfig, round: int,
                     training: list[Evaluation]) -> list[Evaluation]:
    """The results round ``round`` mutates and learns from, best first: its training set
    (``training``), or with ``generator.ahead`` those of the rounds before the previous
    one (its pool was proposed while the previous round's evaluations ran)."""
    if not config.generator.ahead:
        return training
    return [e for e in training if e.round < round - 1]


def _proposal(config: CampaignConfig, store: CampaignStore, campaign_id: int, round: int,
              parents: list[Evaluation], run_stage: StageRunner, memo: MatchMemo | None,
              featurized: bool = False) -> stages.Pool:
    """Round ``round``'s pool; ``featurized``: with its candidates' features."""
    pool = run_stage("propose", stages.propose, config, round, parents,
                     history(store, campaign_id, round, memo), round=round)
    if featurized and pool:
        pool.features = run_stage("featurize", stages.featurize, config,
                                  [c.structure for c in pool], round=round)
    return pool


def run_round(
    config: CampaignConfig,
    store: CampaignStore,
    campaign_id: int,
    round: int,
    evaluator: Evaluator,
    dispatch: Dispatcher,
    run_stage: StageRunner = call_stage,
    owner: str | None = None,
    screener: Evaluator | None = None,
    features: stages.ResultFeatures | None = None,
    ahead: ProposalAhead | None = None,
    evaluations: EvaluationCache | None = None,
    memo: MatchMemo | None = None,
) -> RoundResult:
    """Run (or finish) round ``round`` of a campaign and return what it did.

    What the round picks depends only on earlier rounds, so a round interrupted
    halfway picks the same candidates when it runs again and claims only those
    still missing. If the training set changed in between (a review accepted a
    flagged result), the picks may differ: the round then claims new candidates
    only up to ``batch_size`` in all, and never past the campaign's ``budget``.
    Evaluations still running from earlier, interrupted rounds are dispatched too.
    ``owner`` is the run holding the campaign's lease (:class:`Lease`); its claims
    carry it, and claims another live run owns are never dispatched. ``screener``
    (the campaign's ``screen`` adapter) screens the pool before selection
    (:mod:`~matforge.engine.loop.screen`). ``features`` keeps the run's feature rows;
    ``ahead`` (with ``generator.ahead``) holds the pool proposed for this round while the
    last one's evaluations ran, and starts the next round's. ``evaluations`` reads the
    campaign's evaluations and ``memo`` keeps what deduplication's matcher learned (a
    campaign's run keeps one of each from round to round).
    """
    started = time.perf_counter()
    stage = partial(run_stage, round=round)
    maximize = config.objective.is_maximized()
    evaluations = evaluations or EvaluationCache(store, campaign_id)
    everything = evaluations.read()  # what the round starts from
    training = ranked_training(everything, round, maximize)
    in_round = [e for e in everything if e.round == round]
    counted = [e for e in everything if e.status in STATUSES]
    claimed_total, claimed_before = len(counted), sum(e.round < round for e in counted)
    # the pick's size depends on earlier rounds only (a resumed round picks the same
    # rows); what may still be claimed is capped by this round's and the campaign's claims
    n_pick = max(0, min(config.batch_size, config.budget - claimed_before))
    slots = max(0, min(config.batch_size - len(in_round), config.budget - claimed_total))

    pool = []
    if slots:
        parents = proposal_parents(config, round, training)
        pool = ahead.take(round, _ids(parents)) if ahead is not None else None
        if pool is None:
            pool = _proposal(config, store, campaign_id, round, parents, run_stage, memo)
    generated, refused = dict(getattr(pool, "generated", {})), dict(getattr(pool, "refused", {}))
    store.start_round(campaign_id, round, len(pool), None)
    claimed: list[int] = []
    # a round resumed with its claims complete keeps the model that picked them
    model_version = in_round[0].model_version if in_round else None
    if pool:
        made = getattr(pool, "features", None)
        # a pool proposed ahead was featurized then, in a task of its own; what is left
        # (the training rows, kept in ``features``) is not worth a task run
        X_train, X_pool = (stage if made is None else call_stage)(
            "featurize", stages.featurize_round, config, training, [c.structure for c in pool],
            features, made)
        X_raw = X_pool  # the featurizer's rows, before a screen value is appended
        if screener is not None and getattr(screener, "trainable", False):
            screener = stage("train_screen", screening.train_screener, screener, training)
        if screener is not None:
            structures = [e.input_structure() for e in training] + [c.structure for c in pool]
            fingerprints = [e.fingerprint for e in training] + [c.fingerprint for c in pool]
            values = stage("screen", screening.screen_values, config,
                               partial(_itself, screener), structures, fingerprints)
            s_train, s_pool = values[:len(training)], values[len(training):]
            kept = screening.keep_best(config, s_pool,
                                       drop_failed=not getattr(screener, "trainable", False))
            pool, X_pool, s_pool = [pool[i] for i in kept], X_pool[kept], s_pool[kept]
            X_raw = X_pool
            if config.screen.as_feature:
                X_train = screening.with_screen(X_train, s_train)
                X_pool = screening.with_screen(X_pool, s_pool)
    metrics = None  # the held-out quality of the model that picked this round
    if pool:
        selection = stage("select", stages.select, config, round, X_pool, X_train, training,
                              n_pick)
        model_version, metrics = selection.model_version, selection.metrics
        taken = {e.fingerprint for e in in_round}
        parameters = evaluator.parameters()
        # in the selection's order, those not claimed before an interruption (still running
        # ones of those are dispatched below), up to the round's free slots
        picked = [(k, int(i)) for k, i in enumerate(selection.indices)
                  if pool[int(i)].fingerprint not in taken][:slots]
        picks = [_pick(pool[i], selection, k, memo) for k, i in picked]
        claims = store.claim_all(campaign_id, round, picks, config.evaluator.adapter, parameters,
                                 owner)
        for (_, i), claim in zip(picked, claims):
            claimed.append(claim.id)
            if features is not None and claim.new:  # an evaluation this claim made
                features.add(claim.id, X_raw[i])
    running = [e for e in evaluations.read()
               if e.status == "running" and e.owner in (None, owner)]
    if slots and not pool and not running:
        result = RoundResult(round=round, note=EXHAUSTED,
                             seconds=time.perf_counter() - started)
        store.finish_round(campaign_id, result)
        return result

    if ahead is not None and claimed_total + len(claimed) < config.budget:
        # round + 1's parents: the results before this round, its training set
        ahead.start(round + 1, _ids(training),
                    partial(_proposal, config, store, campaign_id, round + 1, training,
                            run_stage, memo, featurized=True))
    dispatch([Work(e.id, e.input_structure(), e.fingerprint,
                   _workdir(config, e.id, e.fingerprint), e.key or "", owner,
                   config.evaluator.timeout) for e in running])

    results = [e for e in evaluations.read() if e.status in ("accepted", "needs_review")]
    flagged = stage("flag", stages.flag, config, results, round, features)
    if flagged:
        store.set_status(flagged, "needs_review", note=f"flagged by DBSCAN in round {round}")

    training = ranked_training([e for e in results if e.id not in flagged], round + 1, maximize)
    result = RoundResult(
        round=round, n_pool=len(pool), model_version=model_version, claimed=claimed,
        evaluated=len(running), flagged=flagged,
        best=training[0].objective if training else None, surrogate=config.surrogate.kind,
        surrogate_metrics=metrics, pareto=stages.pareto_summary(config, training),
        seconds=time.perf_counter() - started, generated=generated, refused=refused,
    )
    store.finish_round(campaign_id, result)
    return result


IDENTITY = ("objective", "objectives", "candidates", "elements", "evaluator.adapter",
            "evaluator.parameters")
"""What makes a campaign the campaign it is; budget, batch size, acquisition and the rest
may change between runs (each run's settings are recorded with it)."""

FIXED = ("objective", "objectives", "candidates")
"""Changes refused even with ``new_config``: the stored results rank by the objective, and
structures and compositions do not share one history."""


def _field(config: dict, path: str):
    for part in path.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def campaign_changes(stored: dict[str, Any], config: CampaignConfig) -> list[tuple[str, Any, Any]]:
    """The fields of :data:`IDENTITY` that differ between a stored configuration and
    ``config``, as ``(field, stored value, new value)``; secrets compare redacted."""
    try:
        stored = parse_config(stored).model_dump(mode="json")  # fill in defaults
    except ConfigError:
        pass
    new = config.model_dump(mode="json")
    return [(f, _field(stored, f), _field(new, f)) for f in IDENTITY
            if _field(stored, f) != _field(new, f)]


def check_same_campaign(store: CampaignStore, config: CampaignConfig, new_config: bool = False,
                        source: str = "campaign") -> None:
    """Refuse a configuration that would make campaign ``config.name`` another campaign.

    A changed objective or kind of candidate is always refused (a new name starts another
    campaign); a changed element set or evaluator only without ``new_config``. Raises
    :class:`ConfigError` saying what changed.
    """
    try:
        stored = store.campaign_config(config.name)
    except KeyError:
        return
    changes = campaign_changes(stored, config)
    if not changes:
        return
    field, old, now = next((c for c in changes if c[0] in FIXED), changes[0])
    fixed = field in FIXED
    remedy = ("give the campaign a new name to start another" if fixed
              else "run with --new-config to continue it with this change, or give the "
                   "campaign a new name to start another")
    more = f" (and {len(changes) - 1} more change(s))" if len(changes) > 1 else ""
    if fixed or not new_config:
        raise ConfigError(
            f"{source}: field '{field}': campaign {config.name!r} was run with {_show(old)}, "
            f"this file has {_show(now)}{more}; {remedy}"
        )


def _show(value: Any) -> str:
    """An objective as ``property (direction)``; anything else as its repr."""
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict) and set(value) == {"property", "direction"}:
        return f"{value['property']} ({value['direction']})"
    return repr(value)


def run_campaign(
    config: CampaignConfig,
    store: CampaignStore,
    evaluator: Evaluator,
    dispatch: Dispatcher | None = None,
    run_stage: StageRunner = call_stage,
    on_round: Callable[[RoundResult], None] | None = None,
    *,
    new_config: bool = False,
    wait: bool = True,
    on_wait: Callable[[Owner], None] | None = None,
    lease_seconds: float | None = None,
    screener: Evaluator | None = None,
    before_round: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run rounds until the campaign's budget is spent; returns :func:`summarize`'s summary.

    Running the same campaign again continues where it stopped. Before anything is
    written, the campaign's objectives, constraints and elements are checked against
    what ``evaluator`` reports and supports, and ``config`` against the campaign's stored
    configuration (:func:`check_same_campaign`); both raise
    :class:`~matforge.engine.config.ConfigError`.

    The run holds the campaign's lease (:class:`Lease`, ``lease_seconds``, by default
    ``MATFORGE_LEASE``) while it works. A second run of the same campaign waits until
    the first ends, or until its lease expires if it died (``on_wait`` hears of the
    holder once), then continues the campaign; with ``wait=False`` it raises
    :class:`~matforge.engine.loop.lease.CampaignBusy` instead. ``dispatch`` defaults
    to a :class:`SerialDispatcher`. ``before_round(campaign_id, round)`` runs before each
    round, holding the lease (the flow pauses there for a person's review).
    """
    check_properties(config, config.evaluator.adapter, evaluator.implemented_properties)
    check_elements(config, config.evaluator.adapter, getattr(evaluator, "supported_elements", None))
    if config.screen is not None:
        if screener is None:
            raise ConfigError(f"campaign {config.name!r} has a screen but no screener was given")
        check_screen(config, screener)
    check_same_campaign(store, config, new_config)
    if dispatch is None:
        dispatch = SerialDispatcher(store, evaluator, config.objective.property)
    settings = config.model_dump(mode="json")
    campaign_id = store.campaign_id(config.name, settings)
    lease = Lease(store, campaign_id, lease_seconds or get_settings().lease, settings)
    lease.acquire(wait, on_wait, config.name)
    features = stages.ResultFeatures(config)
    evaluations, memo = EvaluationCache(store, campaign_id), MatchMemo()
    ahead = ProposalAhead() if config.generator.ahead else None
    with lease, closing(ahead) if ahead is not None else nullcontext():
        rounds = store.rounds(campaign_id)
        round = rounds[-1].round if rounds and not rounds[-1].finished else len(rounds)
        while True:
            lease.check()
            rounds = store.rounds(campaign_id)
            unfinished = any(r.round == round and not r.finished for r in rounds)
            spent = store.count(campaign_id, statuses=STATUSES) >= config.budget
            stopped = stop_reason(config, rounds)
            if (spent or stopped) and not unfinished and not store.count(
                    campaign_id, statuses=("running",)):
                break
            if before_round is not None:
                before_round(campaign_id, round)
            result = run_round(config, store, campaign_id, round, evaluator, dispatch,
                               run_stage, lease.id, screener if config.screen else None,
                               features, ahead, evaluations, memo)
            if on_round is not None:
                on_round(result)
            if result.note == EXHAUSTED:
                break
            round += 1
    summary = summarize(store, campaign_id, config.objective.is_maximized())
    summary["stopped"] = stop_reason(config, store.rounds(campaign_id))
    return summary


@dataclass
class ReviewDecisions:
    """A person's decisions on results waiting for review, by evaluation id."""

    accept: Sequence[int] = ()
    reject: Sequence[int] = ()
    reevaluate: Sequence[int] = ()
    by: str = "unknown"
    note: str | None = None


def apply_review(store: CampaignStore, campaign_id: int, decisions: ReviewDecisions,
                 round: int) -> dict[str, list[int]]:
    """Store the decisions (who, when, why): accepted results enter training from the next
    round on, rejected ones are kept out, and each one to evaluate again is claimed anew in
    ``round``. Ids that do not wait for review are refused before anything changes
    (ValueError naming them). Returns the ids by decision (``reevaluated``: the new ones)."""
    pending = {e.id for e in store.evaluations(campaign_id, statuses=("needs_review",))}
    named = [*decisions.accept, *decisions.reject, *decisions.reevaluate]
    twice = sorted({i for i in named if named.count(i) > 1})
    if twice:
        raise ValueError(f"evaluation(s) {twice} are given more than one decision")
    unknown = sorted(set(named) - pending)
    if unknown:
        raise ValueError(f"evaluation(s) {unknown} are not awaiting review")
    store.decide(list(decisions.accept), "accepted", decisions.by, decisions.note)
    store.decide(list(decisions.reject), "rejected", decisions.by, decisions.note)
    again = [store.requeue(i, round, decisions.by, decisions.note) for i in decisions.reevaluate]
    return {"accepted": list(decisions.accept), "rejected": list(decisions.reject),
            "reevaluated": again}


def stop_reason(config: CampaignConfig, rounds: Sequence[RoundRecord]) -> str | None:
    """Why the campaign has found enough (its ``stop`` settings), or None: the best reached
    ``stop.target``, or ``stop.patience`` finished rounds in a row brought no better best."""
    maximize = config.objective.is_maximized()
    bests = [r.result.best for r in rounds if r.finished and r.result is not None]
    bests = [b for b in bests if b is not None]
    if not bests:
        return None
    best = max(bests) if maximize else min(bests)
    target = config.stop.target
    if target is not None and (best >= target if maximize else best <= target):
        return (f"the best {config.objective.property} {best:.4g} reached the target "
                f"{target:g} (stop.target)")
    patience = config.stop.patience
    if patience is not None and len(bests) > patience:
        before = bests[:-patience]
        earlier = max(before) if maximize else min(before)
        if not any((b > earlier if maximize else b < earlier) for b in bests[-patience:]):
            return (f"{patience} round(s) in a row without a better "
                    f"{config.objective.property} than {earlier:.4g} (stop.patience)")
    return None


def summarize(
    store: CampaignStore, campaign_id: int, maximize: bool, top: int = 5
) -> dict[str, Any]:
    """Counts by status, the best accepted results, flagged, failed and running evaluations
    (with the run that owns each and whether it is alive)."""
    evaluations = store.evaluations(campaign_id)
    owners = {o.id: o for o in store.owners(campaign_id)}
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
        "running": [
            {"evaluation": e.id, "formula": e.formula, "round": e.round,
             "owner": owners[e.owner].describe() if e.owner in owners else "no owner",
             "alive": e.owner in owners and owners[e.owner].alive(), "job": e.job}
            for e in evaluations
            if e.status == "running"
        ],
    }
