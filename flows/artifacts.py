"""What a campaign shows in the Prefect UI: artifacts under stable keys per campaign (so the
UI keeps their history, one version per round) and the flow run's name.

- ``<campaign>-picks``: the latest round's picks (candidate, generator, predicted mean ± std,
  acquisition value, result, status);
- ``<campaign>-report``: the campaign report (:mod:`matforge.engine.loop.report`) as
  markdown with its plots embedded;
- ``<campaign>-budget``: evaluations claimed as a share of the budget;
- ``<campaign>-needs-review``: the results waiting for review, republished on every
  decision, saying so when none wait.
"""

from __future__ import annotations

import re

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
)

from matforge.engine.config import CampaignConfig
from matforge.engine.loop.isolate import run_isolated
from matforge.engine.loop.report import (
    Report,
    reduced,
    report_at,
    significant,
    with_uncertainty,
)
from matforge.engine.store.sql import STATUSES, CampaignStore

REPORT_SECONDS = 600.0
"""How long a round's report may take to draw before its process is stopped (the round's
artifacts are then not published; the campaign goes on)."""


def artifact_key(campaign: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a campaign's ``what``."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{campaign}-{what}".lower()).strip("-")


def publish_round(config: CampaignConfig, store: CampaignStore, campaign_id: int,
                  unit: str = "") -> Report:
    """The picks table, the report and the budget's progress, after a round; returns the
    report.

    The report is drawn in a child process (the evaluations' fork server's,
    :func:`~matforge.engine.loop.isolate.run_isolated`), which reads the store itself: drawn
    in a thread of the campaign's process, its figures (about 1 s of matplotlib at 200
    results) held the interpreter's lock against the next round's pick and proposal
    (``benchmarks/orchestration.py``).
    """
    report = run_isolated(report_at, (config.store, config, campaign_id, unit), REPORT_SECONDS,
                          label=f"{config.name} report")
    if report.picks:
        create_table_artifact(
            key=artifact_key(config.name, "picks"), table=report.picks,
            description=f"{config.name}: the picks of round {report.picks_round}")
    create_markdown_artifact(
        key=artifact_key(config.name, "report"), markdown=report.markdown(),
        description=f"{config.name}: progress, surrogate quality and the explored space")
    claimed = store.count(campaign_id, statuses=STATUSES)
    create_progress_artifact(
        min(100.0, 100.0 * claimed / config.budget), key=artifact_key(config.name, "budget"),
        description=f"{config.name}: {claimed} of {config.budget} evaluations claimed")
    return report


def review_rows(config: CampaignConfig, store: CampaignStore, campaign_id: int) -> list[dict]:
    """The results waiting for review, numbers rounded to what they support."""
    return [{
        "evaluation": e.id,
        "round": e.round,
        "formula": reduced(e.formula),
        config.objective.property: significant(e.objective),
        "predicted": with_uncertainty(e.predicted_mean, e.predicted_std),
    } for e in store.evaluations(campaign_id, statuses=("needs_review",))]


def publish_review(config: CampaignConfig, store: CampaignStore, campaign_id: int) -> None:
    """The needs-review table as it stands now (an empty queue says so)."""
    rows = review_rows(config, store, campaign_id)
    create_table_artifact(
        key=artifact_key(config.name, "needs-review"),
        table=rows or [{"evaluation": "", "note": "nothing waits for review"}],
        description=f"Results of {config.name} held out of training until reviewed "
                    f"(`matforge review`): {len(rows)} waiting.")


def run_number(store: CampaignStore, name: str) -> int:
    """The number the next run of campaign ``name`` gets (1 for a new campaign)."""
    try:
        return len(store.owners(store.campaign_id(name))) + 1
    except KeyError:
        return 1


def run_name(name: str, number: int, first: int | None = None, last: int | None = None) -> str:
    """``alloys-emt · run 3 · rounds 6–11`` (``round 6``, or no rounds before any ran)."""
    text = f"{name} · run {number}"
    if first is not None:
        text += f" · round {first}" if last in (None, first) else f" · rounds {first}–{last}"
    return text


def rename_flow_run(name: str) -> None:
    """Give the current flow run ``name`` (nothing outside a flow run)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, name=name)
