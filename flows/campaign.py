"""The campaign flow: the engine's rounds, with each stage and evaluation a Prefect task.

The round's science, budget and resume rules live in
:func:`matforge.engine.loop.round.run_campaign`; this module only gives it a
dispatcher that runs each evaluation as a task where the campaign's ``executor``
says (:mod:`matforge.flows.executors`: local processes, Dask, Slurm jobs), runs
each stage as a task so it shows in the UI, logs each round and publishes the
needs-review table.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from matforge.adapters.base import check_resources
from matforge.adapters.registry import build_evaluators
from matforge.engine.config import CampaignConfig
from matforge.engine.loop.round import run_campaign
from matforge.engine.settings import limit_threads
from matforge.engine.store.records import RoundResult
from matforge.engine.store.sql import CampaignStore, Owner
from matforge.flows.executors import dispatcher

TASK = dict(cache_policy=NO_CACHE, persist_result=False)


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


@flow(name="campaign", log_prints=True)
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
        if result.generated or result.refused:
            logger.info("round %d pool: %s; refused: %s", result.round,
                        ", ".join(f"{k} {v}" for k, v in sorted(result.generated.items())),
                        ", ".join(f"{k} {v}" for k, v in sorted(result.refused.items()))
                        or "none")
        if result.flagged:
            campaign_id = campaign_id or store.campaign_id(config.name)
            review_artifact_task(config, campaign_id)

    def on_wait(owner: Owner) -> None:
        logger.warning("campaign %s is being run by %s; waiting until it ends or its "
                       "lease expires", config.name, owner.describe())

    resources = check_resources(config, type(evaluator), f"campaign {config.name!r}")
    with dispatcher(config, store, resources) as dispatch:
        return run_campaign(config, store, evaluator, dispatch, stage_task, on_round,
                            new_config=new_config, on_wait=on_wait, screener=screener)
