"""``matforge deploy``: a Prefect deployment that runs a campaign file on a schedule.

The deployment runs :func:`~matforge.flows.deployments.campaign_file_flow` from the installed
package (no checkout on the worker), in the campaign file's directory (so its relative store
and workdir paths mean what they mean for ``matforge run``), through a work pool's workers.
Each run continues the campaign from its store, adds at most ``per_run`` evaluations, and
does nothing, saying why in one line, once the budget is spent or the ``stop`` criteria hold.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

ENTRYPOINT = "matforge.flows.deployments:campaign_file_flow"
FLOW_NAME = "campaign-from-file"


class DeployError(ValueError):
    """A deployment that cannot be made; the message says why and what to set."""


def server_url() -> str:
    """The Prefect API the deployment goes to: ``PREFECT_API_URL``, which must answer.

    Without it Prefect would make the deployment on a temporary server that vanishes with
    this command, and a worker would find nothing."""
    from prefect.settings import PREFECT_API_URL

    from matforge.flows.server import api_healthy

    url = os.environ.get("MATFORGE_PREFECT_API_URL") or PREFECT_API_URL.value()
    if not url:
        raise DeployError(
            "PREFECT_API_URL is not set: a deployment needs the Prefect server your workers "
            "use (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api; `prefect server "
            "start` runs one)")
    if not api_healthy(url):
        raise DeployError(f"PREFECT_API_URL {url}: no Prefect server answers there")
    return url


def deploy(config_path: str | Path, cron: str, per_run: int | None = None,
           pool: str = "matforge", name: str | None = None, timezone: str = "UTC") -> str:
    """Create (or update) the deployment; returns ``campaign-from-file/<name>``."""
    from prefect.client.schemas.schedules import CronSchedule

    from matforge.engine.config import load_config

    path = Path(config_path).resolve()
    config = load_config(path)  # a bad file is refused here, not by the first scheduled run
    if per_run is not None and per_run < 1:
        raise DeployError(f"--per-run: at least 1 evaluation per run, got {per_run}")
    try:
        schedule = CronSchedule(cron=cron, timezone=timezone)
    except ValueError as error:
        errors = error.errors() if hasattr(error, "errors") else [{"msg": str(error)}]
        reason = errors[0]["msg"].removeprefix("Value error, ")
        if "timezone" in reason:
            raise DeployError(f"--timezone {timezone!r}: {reason}") from None
        raise DeployError(f"--cron {cron!r}: {reason} (minute hour day month weekday, "
                          f"e.g. '0 2 * * *')") from None
    server_url()
    name = name or config.name
    return asyncio.run(_create(path, config.name, schedule, per_run, pool, name))


async def _create(path: Path, campaign: str, schedule, per_run, pool: str, name: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow_from_name(FLOW_NAME)
        parameters = {"config_path": str(path)}
        if per_run is not None:
            parameters["per_run"] = per_run
        await client.create_deployment(
            flow_id, name, entrypoint=ENTRYPOINT, work_pool_name=pool,
            parameters=parameters,
            schedules=[DeploymentScheduleCreate(schedule=schedule, active=True)],
            pull_steps=[{"prefect.deployments.steps.set_working_directory":
                         {"directory": str(path.parent)}}],
            description=f"Continue campaign {campaign} ({path})"
                        + (f", {per_run} more evaluations each run" if per_run else "")
                        + ", until its budget is spent or its stop criteria hold.")
    return f"{FLOW_NAME}/{name}"
