"""The ``matforge`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from matforge.engine.config import CampaignConfig, ConfigError, load_config, parse_config

EXIT_BAD_INPUT = 2


def _fail(message: str) -> int:
    print(f"matforge: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _quiet_console(verbose: bool) -> None:
    """Keep Prefect's per-task lines out of the terminal (they still reach the UI)."""
    from prefect.logging.configuration import setup_logging

    setup_logging()
    if not verbose:
        for handler in logging.getLogger().handlers:
            if type(handler).__name__ == "PrefectConsoleHandler":
                handler.setLevel(logging.WARNING)


def _progress(config: CampaignConfig):
    """A rich renderable callback showing the campaign's state, read from the store."""
    from rich.text import Text

    from matforge.engine.campaign import rank_by_objective
    from matforge.engine.store import FINISHED, CampaignStore

    store = CampaignStore(config.store)
    maximize = config.objective.is_maximized()

    def render():
        try:
            cid = store.campaign_id(config.name)
        except KeyError:
            return Text(f"{config.name}: starting")
        evaluations = store.evaluations(cid)
        finished = [e for e in evaluations if e.status in FINISHED]
        ranked = rank_by_objective([e for e in evaluations if e.status == "accepted"], maximize)
        rounds = store.rounds(cid)
        best = f"{ranked[0].objective:.4f} ({ranked[0].formula})" if ranked else "-"
        running = sum(e.status == "running" for e in evaluations)
        return Text(
            f"{config.name} | round {rounds[-1]['round'] if rounds else 0}"
            f" | evaluations {len(finished)}/{config.budget} | running {running}"
            f" | best {config.objective.property} {best}"
        )

    return render


def _run_one(config: CampaignConfig, verbose: bool) -> dict:
    from rich.live import Live

    from matforge.flows.campaign import campaign_flow

    with Live(get_renderable=_progress(config), refresh_per_second=2) as live:
        summary = campaign_flow(config)
        live.refresh()
    print()
    return summary


def _print_summary(config: CampaignConfig, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_status"].items()))
    console.print(
        f"{config.name}: {summary['evaluations']} evaluations in {summary['rounds']} rounds ({counts})"
    )
    table = Table(title=f"best by {config.objective.property} ({config.objective.direction})")
    for col in ("evaluation", "formula", "objective", "round", "generator"):
        table.add_column(col)
    for row in summary["best"]:
        table.add_row(str(row["evaluation"]), row["formula"], f"{row['objective']:.5f}",
                      str(row["round"]), row["generator"])
    console.print(table)
    if summary["flagged"]:
        console.print(f"{len(summary['flagged'])} result(s) await review: "
                      + ", ".join(f"#{f['evaluation']} {f['formula']}" for f in summary["flagged"]))
    if summary["failed"]:
        console.print(f"{len(summary['failed'])} evaluation(s) failed: "
                      + "; ".join(f"#{f['evaluation']}: {f['error']}" for f in summary["failed"][:5]))


def cmd_run(args) -> int:
    try:
        config = load_config(args.config)
        if args.budget is not None:
            config = parse_config({**config.model_dump(), "budget": args.budget}, args.config)
    except ConfigError as error:
        return _fail(str(error))
    from matforge.adapters import AdapterError, load_evaluator

    try:
        load_evaluator(config.evaluator.adapter, config.evaluator.parameters)
    except (AdapterError, ValueError) as error:
        return _fail(f"{args.config}: field 'evaluator': {error}")
    from matforge.flows.server import prefect_api

    with prefect_api() as api:
        return _run(config, args, api)


def _run(config: CampaignConfig, args, api: str) -> int:
    from matforge.flows.server import ui_url

    print(f"Prefect UI: {ui_url(api)}  (flow 'campaign')")
    _quiet_console(args.verbose)
    summary = _run_one(config, args.verbose)
    _print_summary(config, summary)
    if args.compare_random:
        baseline = config.model_copy(
            update={
                "name": f"{config.name}-random",
                "acquisition": config.acquisition.model_copy(update={"kind": "random"}),
            }
        )
        base_summary = _run_one(baseline, args.verbose)
        ours = summary["best"][0]["objective"] if summary["best"] else float("nan")
        theirs = base_summary["best"][0]["objective"] if base_summary["best"] else float("nan")
        n = base_summary["evaluations"]
        print(
            f"best {config.objective.property}: campaign {ours:.4f} eV/atom vs "
            f"random picks from the same generator {theirs:.4f} eV/atom "
            f"({summary['evaluations']} vs {n} evaluations)"
        )
    return 0


def _open(target: str, store_url: str | None):
    """The store and campaign name for a campaign file or a campaign name."""
    from matforge.engine.store import CampaignStore

    if Path(target).is_file():
        config = load_config(target)
        return CampaignStore(store_url or config.store), config.name
    url = store_url or os.environ.get("MATFORGE_STORE", "sqlite:///matforge.db")
    return CampaignStore(url), target


def cmd_status(args) -> int:
    from matforge.flows.campaign import summarize

    try:
        store, name = _open(args.target, args.store)
        config = parse_config(store.campaign_config(name), name)
        cid = store.campaign_id(name)
    except (ConfigError, KeyError) as error:
        return _fail(str(error).strip("'\""))
    _print_summary(config, summarize(store, cid, config.objective.is_maximized(), top=args.top))
    return 0


def cmd_review(args) -> int:
    try:
        store, name = _open(args.target, args.store)
        cid = store.campaign_id(name)
    except (ConfigError, KeyError) as error:
        return _fail(str(error).strip("'\""))
    pending = {e.id for e in store.evaluations(cid, statuses=("needs_review",))}
    for ids, status in ((args.accept, "accepted"), (args.reject, "rejected")):
        unknown = sorted(set(ids) - pending)
        if unknown:
            return _fail(f"evaluation(s) {unknown} of {name} are not awaiting review")
        if ids:
            store.set_status(ids, status, note=args.note)
            print(f"{status}: {', '.join(map(str, ids))}")
    if not (args.accept or args.reject):
        for e in store.evaluations(cid, statuses=("needs_review",)):
            print(f"#{e.id} round {e.round} {e.formula}: objective {e.objective} "
                  f"(predicted {e.predicted_mean} ± {e.predicted_std})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a campaign to its budget (continues a stopped one)")
    run.add_argument("config", help="campaign YAML file")
    run.add_argument("--budget", type=int, help="override the file's budget")
    run.add_argument("--compare-random", action="store_true",
                     help="also evaluate as many random picks from the same generator and compare")
    run.add_argument("-v", "--verbose", action="store_true", help="print every Prefect task line")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="evaluations, best candidates and flagged results")
    status.add_argument("target", metavar="CONFIG_OR_NAME")
    status.add_argument("--store", help="store URL when giving a campaign name")
    status.add_argument("--top", type=int, default=10)
    status.set_defaults(func=cmd_status)

    review = sub.add_parser("review", help="list, accept or reject results flagged for review")
    review.add_argument("target", metavar="CONFIG_OR_NAME")
    review.add_argument("--store", help="store URL when giving a campaign name")
    review.add_argument("--accept", type=int, nargs="*", default=[], metavar="ID")
    review.add_argument("--reject", type=int, nargs="*", default=[], metavar="ID")
    review.add_argument("--note", help="why, kept with the decision")
    review.set_defaults(func=cmd_review)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
