"""Entry points for scheduled campaigns (Prefect deployments, work pools)."""

from __future__ import annotations

from contextlib import closing
from typing import Any

from prefect import flow, get_run_logger

from matforge.engine.config import load_config
from matforge.engine.loop.round import stop_reason
from matforge.engine.store.sql import STATUSES, CampaignStore, runtime_url
from matforge.flows.campaign import campaign_flow


@flow(name="campaign-from-file")
def campaign_file_flow(config_path: str, budget: int | None = None,
                       per_run: int | None = None) -> dict[str, Any]:
    """Run (or continue) the campaign described by a YAML file on the worker's disk.

    Each scheduled run continues the same campaign from its store. ``per_run`` evaluations
    at most are added by one run, up to the campaign's total ``budget`` (the file's, unless
    given); once the budget is spent or the file's ``stop`` criteria hold, a run says so in
    one line and evaluates nothing.
    """
    logger = get_run_logger()
    config = load_config(config_path)
    if budget is not None:
        config = config.model_copy(update={"budget": budget})
    with closing(CampaignStore(runtime_url(config.store))) as store:
        try:
            campaign_id = store.campaign_id(config.name)
        except KeyError:
            claimed, stopped = 0, None
        else:
            claimed = store.count(campaign_id, statuses=STATUSES)
            stopped = stop_reason(config, store.rounds(campaign_id))
    why = None
    if claimed >= config.budget:
        why = (f"its budget of {config.budget} evaluations is spent; raise 'budget' in "
               f"{config_path} (or the deployment's 'budget') to go on")
    elif stopped:
        why = f"it has found enough: {stopped}"
    if why:
        logger.info("campaign %s: nothing to do, %s", config.name, why)
        return {"evaluations": claimed, "stopped": why}
    if per_run is not None:
        config = config.model_copy(update={"budget": min(config.budget, claimed + per_run)})
        logger.info("campaign %s: this run adds up to %d evaluations (%d of %d so far)",
                    config.name, config.budget - claimed, claimed, config.budget)
    return campaign_flow(config)
