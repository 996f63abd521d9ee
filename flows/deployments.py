"""Entry points for scheduled campaigns (Prefect deployments, work pools)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from matforge.engine.config import load_config
from matforge.flows.campaign import campaign_flow


@flow(name="campaign-from-file")
def campaign_file_flow(config_path: str, budget: int | None = None) -> dict[str, Any]:
    """Run (or continue) the campaign described by a YAML file on the worker's disk.

    Each scheduled run continues the same campaign from its store; raising
    ``budget`` lets a schedule add evaluations over time.
    """
    config = load_config(config_path)
    if budget is not None:
        config = config.model_copy(update={"budget": budget})
    return campaign_flow(config)
