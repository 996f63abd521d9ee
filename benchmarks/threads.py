"""Wall time of a pool benchmark with torch/BLAS threads unlimited vs limited, idle vs busy.

Runs one ``matforge benchmark pool`` workload (default: P3HT conductivity from Liang et
al. 2021, ``--budget 30 --repeats 1 --strategy default``) as a subprocess in four
conditions, measured side by side in one session:

- unlimited: ``MATFORGE_THREADS`` set to the core count, a thread per core as torch's own
  default gives (the behaviour before issue 13);
- limited: no ``MATFORGE_THREADS``, so the process gets ``cores // workers`` threads (the
  default now);

each once with the machine otherwise idle and once beside a second busy process (a NumPy
matrix-product loop with its own default threads, started before the run and killed after).
It prints the wall times and the ratio unlimited / limited for each load.

    python benchmarks/threads.py
    python benchmarks/threads.py --budget 20 --data pool.csv --target y
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from matforge.engine.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "liang2021" / "P3HT.csv"
DEFAULT_TARGET = "Conductivity (measured) (S/cm)"

# variables that would pin the child's threads whatever the condition asks for
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MATFORGE_THREADS")

BURNER = """
import numpy as np
a = np.random.default_rng(0).random((1000, 1000))
while True:
    a = a @ a
    a /= np.abs(a).max()
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}


def run_once(args, threads: int | None, busy: bool) -> float:
    """Wall seconds of one pool benchmark; ``threads`` None leaves the default split."""
    env = clean_env()
    if threads is not None:
        env["MATFORGE_THREADS"] = str(threads)
    command = [sys.executable, "-m", "matforge.flows.cli", "benchmark", "pool", str(args.data),
               "--target", args.target, "--budget", str(args.budget), "--repeats", "1",
               "--strategy", "default"]
    if args.minimize:
        command.append("--minimize")
    burner = None
    if busy:
        burner = subprocess.Popen([sys.executable, "-c", BURNER], env=clean_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # past NumPy's import, so the run starts against a burning core
    try:
        start = time.perf_counter()
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    if out.returncode != 0:
        sys.exit(f"benchmark pool failed ({out.returncode}):\n{out.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="pool CSV")
    parser.add_argument("--target", default=DEFAULT_TARGET, help="column to optimize")
    parser.add_argument("--minimize", action="store_true", help="smaller target is better")
    parser.add_argument("--budget", type=int, default=30, help="rows picked, start included")
    args = parser.parse_args(argv)

    settings = get_settings()
    unlimited = settings.cores
    limited = settings.threads_per_process()
    print(f"{args.data.name}, target {args.target!r}, budget {args.budget}, strategy default; "
          f"{settings.cores} cores, {settings.workers} workers: unlimited = {unlimited} threads, "
          f"limited = {limited}", flush=True)
    rows = []
    for busy in (False, True):
        load = "busy" if busy else "idle"
        before = run_once(args, unlimited, busy)
        print(f"  {load} unlimited: {before:.1f} s", flush=True)
        after = run_once(args, None, busy)
        print(f"  {load} limited:   {after:.1f} s", flush=True)
        rows.append((load, before, after))

    print()
    print(f"{'load':<6}{'unlimited (s)':>15}{'limited (s)':>13}{'unlimited/limited':>19}")
    for load, before, after in rows:
        print(f"{load:<6}{before:>15.1f}{after:>13.1f}{before / after:>18.2f}x")
    (_, idle_before, idle_after), (_, busy_before, busy_after) = rows
    print(f"slowdown from a busy neighbour: unlimited {busy_before / idle_before:.2f}x, "
          f"limited {busy_after / idle_after:.2f}x")


if __name__ == "__main__":
    main()
