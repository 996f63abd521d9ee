"""Dispatch overhead per evaluation: local processes, a Dask LocalCluster and Slurm jobs.

``--n`` evaluations (default 64) of an adapter that sleeps ``--seconds`` (default 1 s)
are claimed in one store and handed, as one batch, to each executor's dispatcher
(``flows/executors.py``), inside a Prefect flow on a Prefect server of the benchmark's
own. Each executor runs 2 evaluations at a time on this 2-core machine: 2 local
workers, 2 Dask worker processes, and the local Slurm node's 2 CPUs (1 core per job).
The figure is the slot time each evaluation costs beyond its sleep:

    overhead per evaluation = wall time x concurrency / n - seconds

measured from the first submission until every result is committed; starting the
Dask cluster is shown apart. Slurm is the one deploy/local-slurm.sh runs (the
cluster at SLURM_CONF, or one started here: needs root and Debian's slurm-wlm, munge).

The sleeping adapter is the tests' ``sleep`` (tests/data/testing_adapters), installed
into a temporary directory for the run, so that every process (Dask workers, Slurm jobs)
finds it by name.

    python benchmarks/dispatch_overhead.py
    python benchmarks/dispatch_overhead.py --n 16 --only local slurm
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect import flow

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("local", "dask", "slurm")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="evaluations per executor")
    parser.add_argument("--seconds", type=float, default=1.0, help="each evaluation's sleep")
    parser.add_argument("--only", nargs="*", choices=KINDS, default=list(KINDS))
    args = parser.parse_args(argv)
    if args.n < 1 or not args.seconds >= 0:
        parser.error("--n must be >= 1 and --seconds >= 0")
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install_sleep_adapter(into: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(into),
                    str(ROOT / "tests" / "data" / "testing_adapters")],
                   check=True, capture_output=True)
    sys.path.insert(0, str(into))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(into), os.environ.get("PYTHONPATH")) if p)


def _slurm_up() -> bool:
    return bool(os.environ.get("SLURM_CONF")) and shutil.which("sinfo") is not None and \
        subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0


_state: dict = {}
"""What the flow dispatches (kept out of its parameters, which Dask would serialize)."""


@flow
def measure() -> dict:
    """Seconds to start the executor and to dispatch the claimed work to the end."""
    import __main__  # the state is looked up, not captured: Dask pickles this flow by value
    from matforge.flows.executors import dispatcher

    state = __main__._state
    started = time.perf_counter()
    with dispatcher(state["config"], state["store"], state["resources"]) as dispatch:
        ready = time.perf_counter()
        dispatch(state["work"])
        done = time.perf_counter()
    return {"startup": ready - started, "wall": done - ready}


def _measure(kind: str, n: int, seconds: float, root: Path) -> dict:
    from pymatgen.core import Lattice, Structure

    from matforge.adapters.base import check_resources
    from matforge.adapters.registry import build_evaluators
    from matforge.engine.config import parse_config
    from matforge.engine.loop.round import Work
    from matforge.engine.materials.structures import fingerprint
    from matforge.engine.store.sql import CampaignStore
    executor = {"local": {"kind": "local", "workers": 2},
                "dask": {"kind": "dask", "dask": {"cluster": "local", "n_workers": 2}},
                "slurm": {"kind": "slurm", "workers": n, "slurm": {"poll_interval": 0.5}}}[kind]
    config = parse_config({
        "name": f"dispatch-{kind}", "elements": ["Cu"], "budget": n, "batch_size": n,
        "generator": {"pool_size": n}, "executor": executor,
        "objective": {"property": "energy_per_atom", "direction": "minimize"},
        "evaluator": {"adapter": "sleep", "parameters": {"seconds": seconds},
                      "resources": {"memory_gb": 0.5}},
        "store": f"sqlite:///{root / kind / 'store.db'}", "workdir": str(root / kind / "runs"),
    })
    (root / kind).mkdir()
    config, evaluator, _ = build_evaluators(config)
    store = CampaignStore(config.store)
    cid = store.campaign_id(config.name, config.model_dump(mode="json"))
    work = []
    for i in range(n):  # distinct cells (fingerprints ignore scale, not shape)
        structure = Structure(Lattice.tetragonal(2.6, 2.6 * (1 + 0.03 * i)), ["Cu"], [[0, 0, 0]])
        fp = fingerprint(structure)
        claim = store.claim(cid, 0, structure, fp, "benchmark", "sleep", evaluator.parameters())
        e = store.evaluations(cid)[-1]
        work.append(Work(claim.id, structure, fp, str(root / kind / "runs" / f"{claim.id:06d}"),
                         e.key))
    if len({w.evaluation_id for w in work}) != n:
        raise RuntimeError("the benchmark's cells are not distinct")
    _state.update(config=config, store=store, work=work,
                  resources=check_resources(config, type(evaluator)))
    figures = measure.with_options(name=f"dispatch-{kind}")()
    statuses = {e.status for e in store.evaluations(cid)}
    store.close()
    if statuses != {"accepted"}:
        raise RuntimeError(f"{kind}: evaluations ended {statuses}")
    figures["overhead"] = figures["wall"] * 2 / n - seconds
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MATFORGE_THREADS", "1")
    started_slurm = None
    with tempfile.TemporaryDirectory(prefix="matforge-dispatch-") as tmp:
        root = Path(tmp)
        _install_sleep_adapter(root / "site")
        if "slurm" in args.only and not _slurm_up():
            env = dict(os.environ, MATFORGE_SLURM_DIR=str(root / "slurm-cluster"),
                       MATFORGE_SLURM_PORT=str(_free_port()))
            out = subprocess.run([str(ROOT / "deploy" / "local-slurm.sh"), "start"], env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"dispatch_overhead: no Slurm: {out.stderr.strip()[-300:]}",
                      file=sys.stderr)
                return 1
            os.environ["SLURM_CONF"] = str(root / "slurm-cluster" / "slurm.conf")
            started_slurm = env
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from matforge.flows.server import start_server

        home = root / "prefect-home"
        home.mkdir()
        url, server = start_server(port=_free_port(), log_path=home / "server.log",
                                   env={"PREFECT_HOME": str(home)})
        results = {}
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                for kind in args.only:
                    results[kind] = _measure(kind, args.n, args.seconds, root)
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)
        finally:
            server.terminate()
            server.wait(timeout=30)
            if started_slurm is not None:
                subprocess.run([str(ROOT / "deploy" / "local-slurm.sh"), "stop"],
                               env=started_slurm, capture_output=True)
    print(f"\n{args.n} evaluations of a {args.seconds:g} s sleep, 2 at a time")
    print(f"{'executor':<10}{'startup s':>11}{'wall s':>9}{'overhead/eval s':>17}"
          f"{'vs local':>10}")
    base = results.get("local", {}).get("overhead")
    for kind, r in results.items():
        ratio = f"{r['overhead'] / base:.1f}x" if base and base > 0 else "-"
        print(f"{kind:<10}{r['startup']:>11.1f}{r['wall']:>9.1f}{r['overhead']:>17.2f}"
              f"{ratio:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
