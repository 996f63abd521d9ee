"""A cron deployment gets its runs scheduled by the Prefect server's scheduler.

With SQLAlchemy 2.1 (what ``sqlalchemy>=2.0`` installed) Prefect 3.8.8's scheduler failed
every loop with "Can't evaluate bulk DML statement" and no run was ever scheduled."""

from __future__ import annotations

import asyncio
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.schedules import CronSchedule


async def _schedule_and_count(name: str, wait: float) -> int:
    async with get_client() as client:
        flow_id = await client.create_flow_from_name("campaign-from-file")
        deployment = await client.create_deployment(
            flow_id, name, entrypoint="flows/deployments.py:campaign_file_flow",
            parameters={"config_path": "nightly.yaml"},
            schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron="0 2 * * *"),
                                                active=True)])
        runs = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment])))
            if len(runs) >= 3:
                break
            await asyncio.sleep(1)
        return len(runs)


def test_a_cron_deployment_gets_scheduled_runs(prefect_server):
    # the scheduler looks at recently changed deployments every 5 s and schedules at
    # least three runs ahead
    assert asyncio.run(_schedule_and_count(f"nightly-{time.time_ns()}", 60)) >= 3
