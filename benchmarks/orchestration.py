"""Where a campaign's wall time goes: evaluation, training and selection, and the rest.

A campaign of ``--budget`` evaluations (default 200) in batches of ``--batch`` (8) over
decorations of six fcc metals, each evaluation the tests' ``sleep`` adapter (``--seconds``,
1 s, then the cell's EMT energy without relaxation, milliseconds), ``--batch`` evaluations
at a time in child processes, run by ``campaign_flow`` on a Prefect server of the
benchmark's own, as ``matforge run`` runs it. Afterwards the flow run's task runs are read
back from the Prefect API and the wall time split by what was running:

  evaluation   some ``evaluate-*`` task ran
  model        else the ``select`` stage ran (the surrogate's fit, the acquisition and the
               model's held-out quality)
  outside      neither: proposing, featurizing, flagging, the store, Prefect itself

The benchmark's Prefect server is new; it answers one client from a process of its own
before the campaign starts (:func:`warm_up`), as the long-running server a campaign's users
watch has, so that the campaign's wall does not carry the new server's first answer.

Target (issue 19): outside under 5 % of the wall time.

    python benchmarks/orchestration.py
    python benchmarks/orchestration.py --budget 48   # a quick look
    python benchmarks/orchestration.py --profile orchestration.prof  # where "outside" goes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MATFORGE_THREADS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch_overhead import _free_port, _install_sleep_adapter  # noqa: E402

ELEMENTS = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt"]
MODEL_STAGES = ("select",)


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Disjoint intervals covering the given ones, in order."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def covered(intervals: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in union(intervals))


def minus(intervals, taken) -> list[tuple[float, float]]:
    """The parts of ``intervals`` outside ``taken`` (both lists of (start, end))."""
    out = []
    for start, end in union(intervals):
        for a, b in union(taken):
            if b <= start or a >= end:
                continue
            if a > start:
                out.append((start, a))
            start = max(start, b)
            if start >= end:
                break
        if start < end:
            out.append((start, end))
    return out


def split(task_runs, wall: tuple[float, float]) -> dict[str, float]:
    """Seconds of ``wall`` with an evaluation running, else model work, else neither."""
    spans: dict[str, list[tuple[float, float]]] = {"evaluation": [], "model": []}
    stages: dict[str, float] = {}
    for run in task_runs:
        if run.start_time is None or run.end_time is None:
            continue
        span = (run.start_time.timestamp(), run.end_time.timestamp())
        stage = run.name.split(" · ")[0]
        kind = "evaluation" if stage.startswith("evaluate-") else \
            "model" if stage in MODEL_STAGES else None
        if kind:
            spans[kind].append(span)
        key = "evaluate" if kind == "evaluation" else stage
        stages[key] = stages.get(key, 0.0) + span[1] - span[0]
    total = wall[1] - wall[0]
    evaluation = covered(spans["evaluation"])
    model = covered(minus(spans["model"], spans["evaluation"]))
    return {"wall": total, "evaluation": evaluation, "model": model,
            "outside": total - evaluation - model, "stages": stages,
            "gaps": gaps(spans, wall)}


GAPS = {
    (None, "model"): "before the first pick (the flow's start, round 0's pool)",
    ("model", "evaluation"): "after a pick, before its evaluations (claims, dispatch)",
    ("evaluation", "model"): "after evaluations, before the next pick (flags, the round's "
                             "record, the next pool's wait and features)",
    ("evaluation", "evaluation"): "between evaluations of one round",
    ("evaluation", None): "after the last evaluation (the flow's end)",
}


def gaps(spans: dict[str, list[tuple[float, float]]],
         wall: tuple[float, float]) -> dict[str, float]:
    """The wall time with neither an evaluation nor the model running, summed by what ran
    just before and just after it (:data:`GAPS`)."""
    covering = sorted([(a, b, kind) for kind, s in spans.items() for a, b in s])
    out: dict[str, float] = {}
    last_end, last_kind = wall[0], None
    for a, b, kind in covering + [(wall[1], wall[1], None)]:
        if a > last_end:
            where = GAPS.get((last_kind, kind), f"{last_kind} to {kind}")
            out[where] = out.get(where, 0.0) + a - last_end
        if b >= last_end:
            last_end, last_kind = b, kind
    return out


def run(budget: int, batch: int, seconds: float, root: Path, ahead: bool = True) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from matforge.engine.config import parse_config
    from matforge.flows.campaign import campaign_flow

    config = parse_config({
        "name": "orchestration", "elements": ELEMENTS, "budget": budget, "batch_size": batch,
        "generator": {"pool_size": 200, "max_atoms": 8, "ahead": ahead},
        "objective": {"property": "energy_per_atom", "direction": "minimize"},
        "evaluator": {"adapter": "sleep", "parameters": {"seconds": seconds, "energy": "emt"}},
        "executor": {"kind": "local", "workers": batch},
        "store": f"sqlite:///{root / 'store.db'}", "workdir": str(root / "runs"), "seed": 1,
    })
    started = time.time()
    state = campaign_flow(config, return_state=True)
    ended = time.time()
    if not state.is_completed():
        raise RuntimeError(f"the campaign ended {state.type}: {state.message}")
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        task_runs: list = []
        while True:  # the API returns at most 200 at a time
            page = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=len(task_runs))
            task_runs += page
            if len(page) < 200:
                break
    figures = split(task_runs, (started, ended))
    figures["evaluations"] = sum(r.name.startswith("evaluate-") for r in task_runs)
    return figures


WARM_UP = """
import time
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    started = time.perf_counter()
    client.api_version()
    client.read_flows(limit=1)
    print(time.perf_counter() - started)
"""


def warm_up(url: str) -> float:
    """Seconds a new Prefect server takes to answer its first client, asked from a process of
    its own so that the campaign's process stays as cold as ``matforge run``'s. A server
    answers its first client's version check in about 0.5 s and every later client's in
    milliseconds; users' campaigns talk to a server that has long been running (the one
    whose UI they watch), so the campaign's wall should not carry the benchmark's own
    server's first answer."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", WARM_UP], capture_output=True, text=True,
                          env={**os.environ, "PREFECT_API_URL": url}, check=True)
    return float(done.stdout.split()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--no-ahead", action="store_true",
                        help="propose each round after the last one's evaluations "
                             "(generator.ahead: false, the default of a campaign file)")
    parser.add_argument("--compare", action="store_true",
                        help="run the campaign without generator.ahead first, then with it")
    parser.add_argument("--profile", type=Path,
                        help="write cProfile statistics of the campaign's process here")
    args = parser.parse_args(argv)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from matforge.flows.server import start_server

    settings = [False, True] if args.compare else [not args.no_ahead]
    results = {}
    with tempfile.TemporaryDirectory(prefix="matforge-orchestration-") as tmp:
        root = Path(tmp)
        _install_sleep_adapter(root / "site")
        home = root / "prefect-home"
        home.mkdir()
        url, server = start_server(port=_free_port(), log_path=home / "server.log",
                                   env={"PREFECT_HOME": str(home)})
        try:
            first = warm_up(url)
            print(f"the benchmark's new Prefect server answered its first client in "
                  f"{first:.2f} s (not in the campaign's wall)")
            with temporary_settings(updates={PREFECT_API_URL: url}):
                for ahead in settings:
                    where = root / ("ahead" if ahead else "after")
                    where.mkdir()
                    if args.profile:
                        import cProfile

                        with cProfile.Profile() as profile:
                            results[ahead] = run(args.budget, args.batch, args.seconds, where,
                                                 ahead)
                        profile.dump_stats(args.profile)
                    else:
                        results[ahead] = run(args.budget, args.batch, args.seconds, where, ahead)
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)  # while the server still listens
        finally:
            server.terminate()
            server.wait(timeout=30)
    ok = True
    for ahead, figures in results.items():
        wall = figures["wall"]
        print(f"\ngenerator.ahead: {str(ahead).lower()}: {figures['evaluations']} evaluations of "
              f"a {args.seconds:g} s sleep, batches of {args.batch}, {args.batch} at a time; "
              f"wall {wall:.1f} s")
        for part in ("evaluation", "model", "outside"):
            print(f"  {part:<11}{figures[part]:8.1f} s  {100 * figures[part] / wall:5.1f} %")
        print("outside, by what ran before and after it:")
        for where, spent in sorted(figures["gaps"].items(), key=lambda kv: -kv[1]):
            print(f"  {spent:6.1f} s  {where}")
        print("task-run seconds by stage (evaluations summed over their parallel runs):")
        for stage, spent in sorted(figures["stages"].items(), key=lambda kv: -kv[1]):
            print(f"  {stage:<14}{spent:8.1f} s")
        passed = figures["outside"] < 0.05 * wall
        ok = ok and (passed or not ahead)
        print(f"outside evaluation, training and selection: "
              f"{100 * figures['outside'] / wall:.1f} % of the wall time "
              f"({'PASS' if passed else 'FAIL'}: target < 5 %)")
    if len(results) == 2:
        print(f"\nwall time without / with generator.ahead: "
              f"{results[False]['wall'] / results[True]['wall']:.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
