"""A campaign paused for a person's review in the Prefect UI.

With ``review.pause``, a run that finds results waiting for review (``needs_review``) before
a round pauses its flow run: the UI shows the waiting results with the campaign's map and
asks, in the run's input form, which to accept (into training), reject (kept, out of
training) or evaluate again. The decisions are stored with who, when and why
(:func:`~matforge.engine.loop.round.apply_review`) and the round goes on. After
``review.timeout`` seconds without an answer, ``review.on_timeout`` applies.
"""

from __future__ import annotations

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from matforge.engine.config import CampaignConfig
from matforge.engine.loop.report import markdown_table, stored_report
from matforge.engine.loop.round import ReviewDecisions, apply_review
from matforge.engine.store.sql import CampaignStore
from matforge.flows.artifacts import publish_review, review_rows


class ReviewInput(RunInput):
    """The decisions, by evaluation id (the ids in the table above the form)."""

    accept: list[int] = Field(default_factory=list, description="into training")
    reject: list[int] = Field(default_factory=list, description="kept, out of training")
    reevaluate: list[int] = Field(default_factory=list,
                                  description="evaluated again in the next round")
    reviewer: str = Field("", description="who decides")
    note: str = Field("", description="why")


def _description(config: CampaignConfig, store: CampaignStore, campaign_id: int) -> str:
    rows = review_rows(config, store, campaign_id)
    report = stored_report(store, config, campaign_id)
    figures = [f for f in report.figures if f.key in ("map", "parity")]
    return "\n".join([
        f"## {config.name}: {len(rows)} result(s) wait for review", "",
        "DBSCAN set these apart from the other results (features and the surrogate's "
        "residual); they stay out of training until decided.", "", markdown_table(rows), "",
        *[f"![{f.title}]({f.data_uri()})\n\n{f.caption}\n" for f in figures]])


def _running_again() -> None:
    """Put the flow run back to Running after a pause nobody answered."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    context = FlowRunContext.get()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(context.flow_run.id, Running(), force=True)


def ask_review(config: CampaignConfig, store: CampaignStore, campaign_id: int, round: int,
               logger) -> None:
    """Pause for the decisions on the results waiting for review, then apply them."""
    if not store.evaluations(campaign_id, statuses=("needs_review",)):
        return
    form = ReviewInput.with_initial_data(
        description=_description(config, store, campaign_id))
    logger.warning("campaign %s paused before round %d: results wait for review; resume the "
                   "flow run in the Prefect UI with the decisions (or `matforge review`)",
                   config.name, round)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=int(config.review.timeout),
                                poll_interval=config.review.poll_interval,
                                key=f"review-before-round-{round}")
    except FlowPauseTimeout:
        answer = None
        _running_again()  # Prefect would fail a run that stays paused
    pending = [e.id for e in store.evaluations(campaign_id, statuses=("needs_review",))]
    if answer is None:  # no answer in time (or decided meanwhile with matforge review)
        action = config.review.on_timeout
        logger.warning("no review decisions within %.0f s: %s", config.review.timeout,
                       "going on" if action == "continue" else f"{action} all {len(pending)}")
        if action == "continue" or not pending:
            return
        decisions = ReviewDecisions(**{action: pending}, by="timeout",
                                    note=f"review.on_timeout: {action}")
    else:
        decisions = ReviewDecisions(answer.accept, answer.reject, answer.reevaluate,
                                    by=answer.reviewer or "prefect-ui", note=answer.note or None)
    try:
        done = apply_review(store, campaign_id, decisions, round)
    except ValueError as error:
        logger.error("review decisions not applied: %s", error)
        return
    logger.info("review before round %d by %s: accepted %s, rejected %s, evaluated again %s "
                "(as %s)", round, decisions.by, done["accepted"] or "none",
                done["rejected"] or "none", list(decisions.reevaluate) or "none",
                done["reevaluated"] or "none")
    publish_review(config, store, campaign_id)
