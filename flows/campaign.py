"""The campaign flow: the engine's rounds, with each stage and evaluation a Prefect task.

The round's science, budget and resume rules live in
:func:`matforge.engine.loop.round.run_campaign`; this module only gives it a
dispatcher that runs each evaluation as a task where the campaign's ``executor``
says (:mod:`matforge.flows.executors`: local processes, Dask, Slurm jobs), runs
each stage as a task named by stage and round so it shows in the UI, names the flow
run by campaign, run and rounds, logs what each round did in the science, and publishes
the round's artifacts (:mod:`matforge.flows.artifacts`).
"""

from __future__ import annotations

import contextvars
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from prefect import Flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from matforge.adapters.base import check_resources
from matforge.adapters.registry import build_evaluators
from matforge.engine.config import CampaignConfig
from matforge.engine.loop.report import round_lines
from matforge.engine.loop.round import run_campaign
from matforge.engine.settings import limit_threads
from matforge.engine.store.records import RoundResult
from matforge.engine.store.sql import CampaignStore, Owner
from matforge.flows.artifacts import (
    publish_review,
    publish_round,
    rename_flow_run,
    run_name,
    run_number,
)
from matforge.flows.executors import dispatcher
from matforge.flows.review import ask_review

TASK = dict(cache_policy=NO_CACHE, persist_result=False)


def stage_task(name: str, function, *args, round: int | None = None):
    """Run one round stage as a Prefect task named after it, its run after the round too.

    The arguments are quoted: Prefect would otherwise walk every element of every
    collection passed (looking for futures to resolve), which took 2.3 s for a list of
    20,000 small dicts and most of a stage's overhead in ``benchmarks/orchestration.py``.
    """
    run = name if round is None else f"{name} · round {round}"
    return task(function, name=name, task_run_name=run, **TASK)(*map(quote, args))


class _QuietStates(logging.Filter):
    """Drops the task engine's "Finished in state Completed()" lines, which would bury what
    the campaign logs; failures, retries and crashes still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Finished in state Completed")


def _quiet_task_states() -> None:
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _QuietStates) for f in logger.filters):
        logger.addFilter(_QuietStates())


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


class _CampaignFlow(Flow):
    """A flow whose run records what a viewer needs of its ``config`` (its ``summary()``:
    what the campaign is and what it may spend, not its generator settings, evaluator
    parameters, paths and hosts; the store's password never leaves) in the Prefect API.
    Its runs start in the process that holds the configuration (``matforge run``, or a
    deployment's ``campaign_file_flow``, whose parameter is the campaign file), so the API's
    copy is only ever read by people."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        config = parameters.get("config")
        if isinstance(config, CampaignConfig):
            parameters = {**config.summary(),
                          **{k: v for k, v in parameters.items() if k != "config"}}
        return super().serialize_parameters(parameters)


def _campaign_flow(config: CampaignConfig, new_config: bool = False) -> dict[str, Any]:
    """Run rounds until the campaign's budget of evaluations is spent.

    A second run of a campaign waits for the first (or, if it died, for its lease to
    expire) and then continues it. ``new_config`` accepts a changed element set or
    evaluator for an existing campaign. Returns a summary: evaluations by status and
    the best result.
    """
    logger = get_run_logger()
    _quiet_task_states()
    limit_threads()  # a deployment's worker does not pass through the CLI
    store = _store(config.store)
    # before the evaluations' fork server starts, which keeps the environment it started with
    export_secrets(config.evaluator.env_from_blocks)
    # a deployment's run is checked like the command line's: adapters, properties, resources
    config, evaluator, screener = build_evaluators(config, source=f"campaign {config.name!r}")
    unit = evaluator.implemented_properties.get(config.objective.property, "")
    number = run_number(store, config.name)
    rename_flow_run(run_name(config.name, number))
    rounds: list[int] = []

    def publish(result: RoundResult) -> None:
        campaign_id = store.campaign_id(config.name)
        try:
            report = publish_round(config, store, campaign_id, unit)
            publish_review(config, store, campaign_id)
        except Exception as error:  # noqa: BLE001 - a plot never stops a campaign
            logger.warning("round %d: artifacts not published: %s: %s", result.round,
                           type(error).__name__, error)
            report = None
        for line in round_lines(config, result, unit, report):
            logger.info("%s", line)

    # a round's plots and log lines are made while the next round works, one round at a time
    publisher = ThreadPoolExecutor(1, thread_name_prefix="matforge-artifacts")
    published: list[Future] = []

    def on_round(result: RoundResult) -> None:
        rounds.append(result.round)
        published.append(publisher.submit(contextvars.copy_context().run, publish, result))

    def before_round(campaign_id: int, round: int) -> None:
        if config.review.pause:
            wait(published)  # the review table the pause shows is the newest
            ask_review(config, store, campaign_id, round, logger)

    def on_wait(owner: Owner) -> None:
        logger.warning("campaign %s is being run by %s; waiting until it ends or its "
                       "lease expires", config.name, owner.describe())

    resources = check_resources(config, type(evaluator), f"campaign {config.name!r}")
    try:
        with dispatcher(config, store, resources) as dispatch:
            return run_campaign(config, store, evaluator, dispatch, stage_task, on_round,
                                new_config=new_config, on_wait=on_wait, screener=screener,
                                before_round=before_round)
    finally:
        publisher.shutdown(wait=True)  # every round's artifacts are there when the run ends
        if rounds:
            rename_flow_run(run_name(config.name, number, min(rounds), max(rounds)))


campaign_flow = _CampaignFlow(_campaign_flow, name="campaign", log_prints=True)
