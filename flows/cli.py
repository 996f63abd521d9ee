"""The ``matforge`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import closing, contextmanager
from pathlib import Path

from matforge.engine.config import CampaignConfig, ConfigError, load_config, parse_config
from matforge.engine.settings import SettingsError, get_settings, limit_threads

EXIT_BAD_INPUT = 2
MAX_MESSAGE = 300
"""Characters of an error message shown; what a longer one adds is noise."""


def _fail(message: str) -> int:
    """Print ``matforge: error: <message>`` as one line of stderr; return exit code 2."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    if len(line) > MAX_MESSAGE:
        line = line[: MAX_MESSAGE - 1] + "…"
    print(f"matforge: error: {line}", file=sys.stderr)
    return EXIT_BAD_INPUT


class _Parser(argparse.ArgumentParser):
    """An argument parser whose refusals are one line and exit code 2, not usage and a line."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        _fail(f"{command + ': ' if command else ''}{message} (see {self.prog} -h)")
        raise SystemExit(EXIT_BAD_INPUT)


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

    from matforge.engine.loop.campaign import rank_by_objective
    from matforge.engine.store.sql import FINISHED, CampaignStore

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
            f"{config.name} | round {rounds[-1].round if rounds else 0}"
            f" | evaluations {len(finished)}/{config.budget} | running {running}"
            f" | best {config.objective.property} {best}"
        )

    return render


def _run_one(config: CampaignConfig, verbose: bool, new_config: bool = False) -> dict:
    from prefect import tags
    from rich.live import Live

    from matforge.flows.campaign import campaign_flow
    from matforge.flows.watchdog import watch_server

    # tags let one server's UI filter runs by campaign (Runs -> filter by tag)
    with Live(get_renderable=_progress(config), refresh_per_second=2) as live:
        with watch_server(), tags("matforge", f"campaign:{config.name}"):
            # lost server: one message, exit 1 (rerun continues)
            summary = campaign_flow(config, new_config)
        live.refresh()
    print()
    return summary


def _print_summary(config: CampaignConfig, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_status"].items()))
    console.print(
        f"{config.name}: {summary['evaluations']} evaluations in {summary['rounds']} rounds"
        f" ({counts})"
    )
    if summary.get("stopped"):
        console.print(f"stopped: {summary['stopped']}")
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
                      + "; ".join(f"#{f['evaluation']}: {f['error']}"
                                  for f in summary["failed"][:5]))
    for r in summary.get("running", []):
        state = "alive" if r["alive"] else "not alive: taken over when its lease expires"
        console.print(f"running #{r['evaluation']} {r['formula']} (round {r['round']}): "
                      f"{r['owner']}, {state}{_job_line(r.get('job'))}")


def _job_line(job: dict | None) -> str:
    """``; Slurm job 123 RUNNING, log ...`` for an evaluation running as a Slurm job."""
    if job and job.get("kind") == "dask":
        return f"; on Dask worker {job.get('worker')}"
    if not job or job.get("kind") != "slurm":
        return ""
    from matforge.engine.loop.slurm import SlurmError, SlurmQueue

    try:
        state = SlurmQueue().state(str(job["id"]))
        shown = "unknown to Slurm" if state is None else state.state
    except SlurmError:
        shown = "state unknown (Slurm does not answer here)"
    return f"; Slurm job {job['id']} {shown}, log {job.get('log')}"


def cmd_run(args) -> int:
    try:
        config = load_config(args.config)
        if args.budget is not None:
            config = parse_config({**config.model_dump(), "budget": args.budget}, args.config)
    except ConfigError as error:
        return _fail(str(error))
    from matforge.adapters.registry import build_evaluators
    from matforge.engine.store.sql import CampaignStore, SchemaError, StoreError

    try:
        config, evaluator, _ = build_evaluators(config, Path(args.config).parent, args.config)
        unit = evaluator.implemented_properties.get(config.objective.property, "")
    except ConfigError as error:
        return _fail(str(error))
    from matforge.engine.loop.round import check_same_campaign

    try:
        # a store that cannot be opened, or a file that would make this campaign another
        # one, is named now, before a server starts or a round runs
        with closing(CampaignStore(config.store)) as store:
            check_same_campaign(store, config, args.new_config, args.config)
    except (StoreError, SchemaError, ConfigError) as error:
        return _fail(str(error))
    from matforge.flows.server import prefect_api

    # the thread pools are set once the file is known good (importing torch takes seconds)
    limit_threads(get_settings())
    with prefect_api() as api:
        return _run(config, args, api, unit)


def _run(config: CampaignConfig, args, api: str, unit: str = "") -> int:
    from matforge.flows.server import ui_url

    print(f"Prefect UI: {ui_url(api)}  (flow 'campaign')")
    _quiet_console(args.verbose)
    summary = _run_one(config, args.verbose, args.new_config)
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
            f"best {config.objective.property}: campaign {ours:.4f} {unit} vs "
            f"random picks from the same generator {theirs:.4f} {unit} "
            f"({summary['evaluations']} vs {n} evaluations)"
        )
    return 0


def _open(target: str, store_url: str | None):
    """The store and campaign name for a campaign file or a campaign name.

    Opens an existing store only: a missing one is a StoreError, never a new file.
    """
    from matforge.engine.store.sql import CampaignStore

    if Path(target).is_file():
        config = load_config(target)
        return CampaignStore(store_url or config.store, create=False), config.name
    if Path(target).is_dir():
        raise ConfigError(f"{target}: is a directory, not a campaign file or name")
    if "/" in target or os.sep in target:
        raise ConfigError(f"{target}: no such campaign file")
    return CampaignStore(store_url or get_settings().store, create=False), target


class _Refused(Exception):
    """A command's input refused: one line for :func:`_fail`."""


@contextmanager
def _campaign(args):
    """The store, campaign id and configuration that ``args.target`` (a campaign file, or a
    name with ``args.store``) names; :class:`_Refused` when there is none."""
    from matforge.engine.store.sql import SchemaError, StoreError

    try:
        store, name = _open(args.target, args.store)
    except (ConfigError, StoreError, SchemaError) as error:
        raise _Refused(str(error)) from None
    with closing(store):
        try:
            cid = store.campaign_id(name)
            config = parse_config(store.campaign_config(name), name)
        except (ConfigError, KeyError) as error:
            raise _Refused(str(error).strip("'\"")) from None
        yield store, cid, config


def cmd_status(args) -> int:
    from matforge.engine.loop.round import summarize

    if args.top < 1:
        return _fail(f"--top must be >= 1, got {args.top}")
    try:
        with _campaign(args) as (store, cid, config):
            summary = summarize(store, cid, config.objective.is_maximized(), top=args.top)
    except _Refused as error:
        return _fail(str(error))
    _print_summary(config, summary)
    return 0


def cmd_review(args) -> int:
    named = [*args.accept, *args.reject, *args.reevaluate]
    both = sorted({i for i in named if named.count(i) > 1})
    if both:
        return _fail(f"--accept, --reject and --reevaluate name evaluation(s) {both} more than "
                     f"once: decide each once")
    if args.note is not None and not named:
        return _fail("--note goes with a decision: give --accept, --reject or --reevaluate ids")
    try:
        with _campaign(args) as (store, cid, config):
            if named:
                return _decide(args, store, cid, config)
            from matforge.flows.artifacts import review_rows

            rows = review_rows(config, store, cid)
    except _Refused as error:
        return _fail(str(error))
    if not rows:
        print(f"{config.name}: nothing waits for review")
    for row in rows:
        print(f"#{row['evaluation']} round {row['round']} {row['formula']}: "
              f"{config.objective.property} {row[config.objective.property]} "
              f"(predicted {row['predicted'] or 'before any model'})")
    return 0


def _decide(args, store, cid: int, config: CampaignConfig) -> int:
    """Store ``matforge review``'s decisions (who: this user) and republish the UI's table."""
    import getpass

    from matforge.engine.loop.round import ReviewDecisions, apply_review

    rounds = store.rounds(cid)
    upcoming = rounds[-1].round if rounds and not rounds[-1].finished else len(rounds)
    decisions = ReviewDecisions(args.accept, args.reject, args.reevaluate,
                                by=getpass.getuser(), note=args.note)
    try:  # every id is checked before any decision is stored
        done = apply_review(store, cid, decisions, upcoming)
    except ValueError as error:
        return _fail(f"{config.name}: {error}")
    for what in ("accepted", "rejected"):
        if done[what]:
            print(f"{what}: {', '.join(map(str, done[what]))}")
    if args.reevaluate:
        print(f"evaluated again in round {upcoming}: {', '.join(map(str, args.reevaluate))} "
              f"(as {', '.join(map(str, done['reevaluated']))})")
    _republish_review(config, store, cid, decisions)
    return 0


def cmd_deploy(args) -> int:
    from matforge.flows.deploy import DeployError, deploy

    try:
        name = deploy(args.config, args.cron, args.per_run, args.pool, args.name,
                      args.timezone)
    except (ConfigError, DeployError) as error:
        return _fail(str(error))
    print(f"deployment {name}: {args.cron} ({args.timezone}) on work pool {args.pool!r}")
    print(f"  start a worker:  prefect worker start --pool {args.pool}")
    print(f"  run it now:      prefect deployment run {name!r}")
    return 0


def cmd_report(args) -> int:
    from matforge.engine.loop.report import stored_report

    try:
        with _campaign(args) as (store, cid, config):
            out = Path(args.out or f"{config.name}-report.html")
            why = _unwritable(out)
            if why:
                raise _Refused(f"--out {out}: {why}")
            report = stored_report(store, config, cid, _declared_unit(config))
    except _Refused as error:
        return _fail(str(error))
    out.write_text(report.html())
    print(f"{config.name}: report with {len(report.figures)} figure(s) written to {out}")
    return 0


def _declared_unit(config: CampaignConfig) -> str:
    """The objective's unit as the adapter class declares it (no adapter is built)."""
    from matforge.adapters.base import Evaluator
    from matforge.engine import plugins

    try:
        cls = plugins.load("adapters", config.evaluator.adapter, Evaluator)
    except plugins.PluginError:
        return ""
    declared = config.evaluator.parameters.get("properties") or cls.implemented_properties
    unit = declared.get(config.objective.property, "") if isinstance(declared, dict) else ""
    return unit if isinstance(unit, str) else ""


def _republish_review(config: CampaignConfig, store, campaign_id: int, decisions) -> None:
    """The UI's needs-review table after a decision, where a Prefect server answers (none is
    started for this): published by a short flow run, ``<campaign> · review by <who>``, so the
    decision shows in the campaign's run list beside the rounds it changes."""
    from matforge.flows.server import running_prefect_api

    api = running_prefect_api()
    if api is None:
        return
    from prefect import flow, tags
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from matforge.flows.artifacts import publish_review

    @flow(name="review", flow_run_name=f"{config.name} · review by {decisions.by}")
    def review(campaign: str, accept: list[int], reject: list[int], reevaluate: list[int],
               note: str | None) -> None:
        publish_review(config, store, campaign_id)

    with temporary_settings(updates={PREFECT_API_URL: api}), \
            tags("matforge", f"campaign:{config.name}"):
        review(config.name, list(decisions.accept), list(decisions.reject),
               list(decisions.reevaluate), decisions.note)
    print("the needs-review table in the Prefect UI is updated")


def _unwritable(path: Path) -> str | None:
    """Why a file cannot be written at ``path``, or None when it can."""
    if path.is_dir():
        return "is a directory"
    parent = path.absolute().parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if path.exists() and not os.access(path, os.W_OK):
        return "is not writable"
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    return None


def cmd_benchmark_pool(args) -> int:
    """Replay campaigns against a table of measured candidates; write the picks as JSON."""
    import json

    limit_threads(get_settings())

    from matforge.adapters.table import TableEvaluator
    from matforge.engine.acquisition.strategy import Strategy
    from matforge.engine.loop.pool import (
        TableError,
        experiments_to_find,
        run_pool_campaign,
        top_rows,
    )

    for flag, value, low in (("--budget", args.budget, 1), ("--repeats", args.repeats, 1),
                             ("--init", args.init, 1), ("--batch", args.batch, 1),
                             ("--seed", args.seed, 0)):
        if value < low:
            return _fail(f"{flag} must be >= {low}, got {value}")
    if args.out:
        problem = _unwritable(Path(args.out))
        if problem:
            return _fail(f"--out {args.out}: {problem}")
    try:
        table = TableEvaluator(args.data, args.target, args.minimize)
    except TableError as error:
        return _fail(str(error))
    pool = table.table
    if args.init > len(pool) or args.init > args.budget:
        return _fail(f"--init {args.init} is larger than the budget or the table "
                     f"({len(pool)} rows)")
    try:
        strategy = (
            Strategy(budget=args.budget) if args.strategy == "default"
            else Strategy(acquisition="random") if args.strategy == "random"
            else Strategy(*args.strategy.split(":", 1), budget=args.budget)
        )
    except (ValueError, TypeError) as error:
        return _fail(f"--strategy {args.strategy!r}: {error} "
                     "(use default, random or SURROGATE:ACQUISITION, e.g. forest:ucb)")
    top = top_rows(pool.y, pool.maximize)
    picks = []
    for repeat in range(args.repeats):
        rows = run_pool_campaign(
            pool.X, table, strategy.chooser(), args.budget, maximize=pool.maximize,
            n_init=args.init, batch_size=args.batch, seed=args.seed + repeat,
        )
        picks.append(rows)
        found = {s: experiments_to_find(rows, top, s) for s in (0.5, 0.8)}
        print(f"repeat {repeat}: {len(rows)} picks; 50 % of the top 5 % after {found[0.5]}, "
              f"80 % after {found[0.8]}", flush=True)
    result = {
        "data": str(args.data), "target": args.target,
        "direction": "maximize" if pool.maximize else "minimize",
        "strategy": args.strategy, "surrogate": strategy.surrogate,
        "acquisition": strategy.acquisition, "beta": strategy.beta,
        "budget": args.budget, "init": args.init, "batch": args.batch, "seed": args.seed,
        "top5_rows": top.tolist(), "picks": picks,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"picks written to {args.out}")
    return 0


def cmd_plugins(args) -> int:
    """List every installed plug-in by group: name and the class it loads."""
    from matforge.engine import plugins

    for group, entry_point_group in plugins.GROUPS.items():
        print(f"{group} ({entry_point_group}):")
        for name in plugins.available(group):
            print(f"  {name:<12} {plugins.describe(group, name)}")
    return 0


def cmd_adapters(args) -> int:
    """List installed adapters with their properties (and units) and resources."""
    from matforge.adapters.base import Evaluator, declared_units
    from matforge.engine import plugins

    for name in plugins.available("adapters"):
        try:
            cls = plugins.load("adapters", name, Evaluator)
        except plugins.PluginError as error:
            print(f"{name}: cannot load: {error}")
            continue
        units = ", ".join(f"{p} [{u or '?'}]" for p, u in declared_units(cls).items())
        r = cls.resources
        print(f"{name:<12} {plugins.describe('adapters', name)}")
        print(f"  properties: {units or 'none declared'}")
        print(f"  resources:  {r.cores} core(s), {r.gpus} GPU(s), {r.memory_gb:g} GiB, "
              f"walltime {r.walltime:g} s")
    return 0


def cmd_adapters_check(args) -> int:
    """Run the conformance kit on one adapter: exit 0 if it conforms, else list what not."""
    import json

    limit_threads(get_settings())

    from matforge.adapters.conformance import check_adapter
    from matforge.engine import plugins

    try:
        parameters = json.loads(args.parameters)
    except ValueError as error:
        return _fail(f"--parameters: not JSON ({error})")
    if not isinstance(parameters, dict):
        return _fail("--parameters: give a JSON object of constructor arguments")
    if not args.timeout > 0:
        return _fail(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.name not in plugins.available("adapters"):
        return _fail(f"adapter {args.name!r} is not installed "
                     f"(installed: {', '.join(plugins.available('adapters'))})")
    problems = check_adapter(args.name, parameters, timeout=args.timeout)
    if not problems:
        print(f"{args.name}: conforms")
        return 0
    print(f"{args.name}: {len(problems)} problem(s)")
    for problem in problems:
        print(f"  - {problem}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="matforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a campaign to its budget (continues a stopped one)")
    run.add_argument("config", help="campaign YAML file")
    run.add_argument("--budget", type=int, help="override the file's budget")
    run.add_argument("--new-config", action="store_true",
                     help="continue an existing campaign whose elements or evaluator changed "
                          "(a changed objective needs a new campaign name)")
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
    review.add_argument("--reevaluate", type=int, nargs="*", default=[], metavar="ID",
                        help="evaluate again in the next round (the result is kept, rejected)")
    review.add_argument("--note", help="why, kept with the decision")
    review.set_defaults(func=cmd_review)

    dep = sub.add_parser("deploy", help="run a campaign file on a schedule: a Prefect "
                                        "deployment on PREFECT_API_URL's server")
    dep.add_argument("config", help="campaign YAML file")
    dep.add_argument("--cron", required=True, help='schedule, e.g. "0 2 * * *" (02:00 daily)')
    dep.add_argument("--per-run", type=int, help="evaluations one run adds at most")
    dep.add_argument("--pool", default="matforge", help="work pool (made, as a process pool, "
                                                          "if missing)")
    dep.add_argument("--name", help="deployment name (default: the campaign's)")
    dep.add_argument("--timezone", default="UTC")
    dep.set_defaults(func=cmd_deploy)

    report = sub.add_parser("report", help="write the campaign's report (progress against "
                                           "random picks, model quality, explored space) as "
                                           "one self-contained HTML file")
    report.add_argument("target", metavar="CONFIG_OR_NAME")
    report.add_argument("--store", help="store URL when giving a campaign name")
    report.add_argument("--out", help="the HTML file (default: <campaign>-report.html here)")
    report.set_defaults(func=cmd_report)

    listing = sub.add_parser("plugins", help="list installed generators, featurizers, "
                             "surrogates, acquisitions and adapters")
    listing.set_defaults(func=cmd_plugins)

    adapters = sub.add_parser("adapters", help="list installed adapters, or check one "
                              "against the evaluator contract")
    adapters.set_defaults(func=cmd_adapters)
    adapters_sub = adapters.add_subparsers(dest="action")
    check = adapters_sub.add_parser("check", help="run the conformance kit on one adapter "
                                    "(exit 0: it conforms; 1: a list of what does not)")
    check.add_argument("name")
    check.add_argument("--parameters", default="{}",
                       help="constructor arguments as a JSON object")
    check.add_argument("--timeout", type=float, default=600.0,
                       help="seconds one test evaluation may take")
    check.set_defaults(func=cmd_adapters_check)

    bench = sub.add_parser("benchmark", help="replay campaigns against historical data")
    bench_sub = bench.add_subparsers(dest="kind", required=True)
    pool = bench_sub.add_parser(
        "pool",
        help="pool-based campaign on a CSV table: numeric columns but the target are features",
    )
    pool.add_argument("data", metavar="DATA.csv")
    pool.add_argument("--target", required=True, help="the column the 'experiment' measures")
    pool.add_argument("--minimize", action="store_true", help="smaller target is better")
    pool.add_argument("--budget", type=int, default=100,
                      help="rows picked per repeat, start included")
    pool.add_argument("--repeats", type=int, default=1)
    pool.add_argument("--seed", type=int, default=0, help="repeat k uses seed + k")
    pool.add_argument("--init", type=int, default=2, help="random starting rows")
    pool.add_argument("--batch", type=int, default=1)
    pool.add_argument("--strategy", default="default",
                      help="default, random, or SURROGATE:ACQUISITION (e.g. forest:ucb, gp:qlogei)")
    pool.add_argument("--out", metavar="RESULT.json")
    pool.set_defaults(func=cmd_benchmark_pool)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        get_settings()  # a bad MATFORGE_* setting is named before anything runs
    except SettingsError as error:
        return _fail(str(error))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
