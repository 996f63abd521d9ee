"""The campaign flow: the engine's rounds, with each stage and evaluation a Prefect task.

The round's science, budget and resume rules live in
:func:`matforge.engine.loop.round.run_campaign`; this module only gives it a
dispatcher that runs each evaluation as a task (with the adapter's timeout and
retries), runs each stage as a task so it shows in the UI, logs each round and
publishes the needs-review table.
"""

from __future__ import annotations

import os
import re
from functools import partial
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from matforge.adapters import load_evaluator
from matforge.adapters.registry import build_evaluators
from matforge.engine.config import CampaignConfig, EvaluatorSettings
from matforge.engine.loop.round import Work, describe_error, evaluate_claimed, run_campaign
from matforge.engine.settings import get_settings, limit_threads
from matforge.engine.store.records import RoundResult
from matforge.engine.store.sql import CampaignStore, Owner

TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(**TASK, task_run_name="evaluate-{label}")
def evaluate_task(
    store_url: str, work: Work, objective: str, adapter: str, parameters: dict, label: str
) -> str:
    """Run the adapter on one claimed structure and store the outcome; returns its status.

    Exceptions propagate so the task's retry policy can act on them; the
    dispatcher records what is left after the last retry.
    """
    return evaluate_claimed(_store(store_url), work, objective,
                            partial(load_evaluator, adapter, parameters))


def retry_policy(settings: EvaluatorSettings) -> dict[str, Any]:
    """Prefect task options for an adapter's retries.

    Retries wait ``retry_backoff`` seconds, doubling each time, and happen only
    for exceptions whose class or a base class is named in ``retry_on``. The
    timeout is not Prefect's (a thread cannot be stopped): the evaluation's own
    process is killed at its deadline and raises ``TimeoutError``.
    """
    retryable = set(settings.retry_on)

    def should_retry(task, task_run, state) -> bool:
        try:
            state.result()
        except Exception as error:
            return any(cls.__name__ in retryable for cls in type(error).__mro__)
        return False

    options: dict[str, Any] = {"retries": settings.retries}
    if settings.retries:
        options["retry_delay_seconds"] = [
            settings.retry_backoff * 2**i for i in range(settings.retries)
        ]
        options["retry_condition_fn"] = should_retry
    return options


def task_dispatcher(config: CampaignConfig, store: CampaignStore):
    """A dispatcher that evaluates claimed work concurrently, one task per evaluation.

    An evaluation that still fails after its retries is stored as ``failed``
    with the error, and the campaign goes on.
    """
    ev = config.evaluator
    evaluate = evaluate_task.with_options(**retry_policy(ev))

    def dispatch(work: list[Work]) -> None:
        logger = get_run_logger()
        futures = {
            evaluate.submit(config.store, item, config.objective.property, ev.adapter,
                            ev.parameters, item.label): item
            for item in work
        }
        for future in as_completed(list(futures)):
            item = futures[future]
            future.wait()
            if future.state.is_completed():
                continue
            try:
                future.result()
                error = future.state.message or "evaluation failed"
            except Exception as exc:
                error = describe_error(exc)
            store.complete(item.evaluation_id, "failed", error=error, owner=item.owner)
            logger.warning("evaluation %s failed: %s", item.evaluation_id, error)

    return dispatch


def stage_task(name: str, function, *args):
    """Run one round stage as a Prefect task named after it."""
    return task(function, name=f"{name}_task", **TASK)(*args)


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


def export_secrets(env_from_blocks) -> None:
    """Fill each environment variable of ``evaluator.env_from_blocks`` that is unset from the
    Prefect Secret block it names, so adapters (which never import Prefect) read their tokens from
    the environment; the value is never stored or logged. Raises ValueError naming a block
    that cannot be read."""
    from prefect.blocks.system import Secret

    for entry in env_from_blocks:
        variable, block = entry.variable, entry.block
        if os.environ.get(variable):
            continue
        try:
            value = Secret.load(block).get()
        except Exception as error:  # a missing block is a ValueError; a lost server others
            raise ValueError(f"evaluator.env_from_blocks: {variable}: cannot read the "
                             f"Prefect Secret block {block!r} ({type(error).__name__})"
                             ) from None
        os.environ[variable] = str(value)


def _store(url: str) -> CampaignStore:
    # a URL whose password came back redacted from the Prefect API gets it from the environment
    from matforge.engine.store.sql import runtime_url

    url = runtime_url(url)
    if url not in _stores:
        _stores[url] = CampaignStore(url)
    return _stores[url]


@flow(name="campaign", log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=get_settings().workers))
def campaign_flow(config: CampaignConfig, new_config: bool = False) -> dict[str, Any]:
    """Run rounds until the campaign's budget of evaluations is spent.

    A second run of a campaign waits for the first (or, if it died, for its lease to
    expire) and then continues it. ``new_config`` accepts a changed element set or
    evaluator for an existing campaign. Returns a summary: evaluations by status and
    the best result.
    """
    logger = get_run_logger()
    limit_threads()  # a deployment's worker does not pass through the CLI
    store = _store(config.store)
    # before the evaluations' fork server starts, which keeps the environment it started with
    export_secrets(config.evaluator.env_from_blocks)
    # a deployment's run is checked like the command line's: adapters, properties, resources
    config, evaluator, screener = build_evaluators(config, source=f"campaign {config.name!r}")
    campaign_id = None

    def on_round(result: RoundResult) -> None:
        nonlocal campaign_id
        logger.info(
            "round %d: %d claimed, %d evaluated, %d flagged, best %s = %s%s",
            result.round, len(result.claimed), result.evaluated, len(result.flagged),
            config.objective.property, result.best,
            f" ({result.note})" if result.note else "",
        )
        if result.flagged:
            campaign_id = campaign_id or store.campaign_id(config.name)
            review_artifact_task(config, campaign_id)

    def on_wait(owner: Owner) -> None:
        logger.warning("campaign %s is being run by %s; waiting until it ends or its "
                       "lease expires", config.name, owner.describe())

    return run_campaign(config, store, evaluator, task_dispatcher(config, store), stage_task,
                        on_round, new_config=new_config, on_wait=on_wait, screener=screener)
