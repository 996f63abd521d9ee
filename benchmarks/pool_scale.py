"""Issue 19's scale targets: training sets of 20,000, pools of a million, streams of ten million.

A seeded synthetic campaign over compositions of six elements (Al, Ti, Fe, Co, Ni, Cu;
two to four of them, 1 to 8 atoms each), featurized by the campaign's
``CompositionFeaturizer`` (element fractions and composition-weighted statistics of five
element properties: 26 features), with a smooth objective: minus BoTorch's Hartmann-6 at
the six element fractions, measured with Gaussian noise of 0.05 (a quarter of its spread).
The surrogate is the campaign default (``Strategy().fit``: a GP, sparse above
``EXACT_MAX`` training rows). Each measurement runs in its own child process (so its peak
resident memory, ``ru_maxrss``, is its own) with torch and BLAS on ``--threads`` threads:

- train: fit seconds at 2,000 and 20,000 rows, 90 % interval coverage and RMSE on 5,000
  held-out rows;
- screen: mean and std of 1,000,000 candidates by the 2,000-row model, generated,
  featurized and predicted in chunks of 100,000 (seconds of each, and peak memory);
- select: the default acquisition (``ptop``) picks 16 of those 1,000,000 (features
  computed before the clock starts), and the same through ``Strategy.select`` with the
  fit included;
- stream: 10,000,000 candidates generated, featurized and scored in chunks, keeping the
  best 1,000 by the upper confidence bound (``stream_top_k``);
- threads: predicting 200,000 candidates with 1 and with 2 torch/BLAS threads.

    python benchmarks/pool_scale.py
    python benchmarks/pool_scale.py --threads 1 --stream 2000000 --out /tmp/pool_scale.json
    python benchmarks/pool_scale.py --stages train --train 2000 20000 --inducing 512

Targets (2 cores): training 20,000 rows under 120 s with coverage in [0.85, 0.95];
screening 1,000,000 under 30 s in all with peak memory under 4 GiB; selecting 16 of
1,000,000 under 20 s; the 10,000,000-row stream under 4 GiB. Exit 0 only if all hold.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pickle
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ELEMENTS = ["Al", "Ti", "Fe", "Co", "Ni", "Cu"]
NOISE = 0.05
HELD_OUT = 5000
GiB = 1 << 30
MEMORY_CAP = 12 * GiB
"""Address-space limit of each child, so that a runaway measurement cannot take the machine."""


def compositions(seed: int, chunk: int, rows: int) -> np.ndarray:
    """Chunk ``chunk`` of a seeded stream of compositions: atoms of each element, (rows, 6).

    Each chunk has its own generator, so any chunking of the stream gives the same rows.
    """
    rng = np.random.default_rng([seed, chunk])
    amounts = rng.integers(1, 9, size=(rows, len(ELEMENTS))).astype(float)
    count = rng.integers(2, 5, size=rows)
    present = np.argsort(rng.random((rows, len(ELEMENTS))), axis=1) < count[:, None]
    return amounts * present


def stream(seed: int, total: int, size: int):
    for k, start in enumerate(range(0, total, size)):
        yield compositions(seed, k, min(size, total - start))


def measure(amounts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The objective: minus Hartmann-6 at the element fractions, plus measurement noise."""
    import torch
    from botorch.test_functions import Hartmann

    fractions = amounts / amounts.sum(axis=1, keepdims=True)
    value = -Hartmann(dim=6)(torch.as_tensor(fractions)).numpy()
    return value + NOISE * rng.standard_normal(len(amounts))


def featurizer():
    from matforge.engine.materials.featurize import CompositionFeaturizer

    return CompositionFeaturizer(ELEMENTS)


def featurize(amounts: np.ndarray) -> np.ndarray:
    f = featurizer()
    if hasattr(f, "transform_amounts"):
        return f.transform_amounts(amounts, ELEMENTS)
    from pymatgen.core import Composition

    return f.transform([Composition(dict(zip(ELEMENTS, row))) for row in amounts])


def _start(threads: int) -> None:
    """In a child: cap its memory, set its threads, silence the fit's numerical warnings."""
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    warnings.simplefilter("ignore")
    from matforge.engine.settings import MatforgeSettings, limit_threads

    limit_threads(MatforgeSettings(threads=threads))


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


def train(n: int, seed: int, threads: int, save: str | None, inducing: int | None) -> dict:
    _start(threads)
    from matforge.engine.acquisition.strategy import Strategy

    rng = np.random.default_rng([seed, n])
    amounts = compositions(seed + 1, n, n)
    X, y = featurize(amounts), measure(amounts, rng)
    held = compositions(seed + 2, 0, HELD_OUT)
    X_test, y_test = featurize(held), measure(held, rng)
    start = time.perf_counter()
    params = {} if inducing is None else {"n_inducing": inducing}
    model = Strategy(surrogate_params=params).fit(X, y, seed=0)
    seconds = time.perf_counter() - start
    lo, hi = model.predict_interval(X_test, level=0.9)
    mean = model.predict(X_test)
    if save:
        Path(save).write_bytes(pickle.dumps((model, X, y)))
    return {"rows": n, "seconds": seconds, "model": type(model.model_).__name__,
            "inducing": getattr(model.model_, "n_inducing", None),
            "coverage": float(np.mean((y_test >= lo) & (y_test <= hi))),
            "rmse": float(np.sqrt(np.mean((mean - y_test) ** 2))),
            "y_std": float(y_test.std()), "peak_gib": _peak()}


def screen(path: str, rows: int, chunk: int, seed: int, threads: int) -> dict:
    _start(threads)
    model, _, _ = pickle.loads(Path(path).read_bytes())
    times = {"generate": 0.0, "featurize": 0.0, "predict": 0.0}
    means, stds = [], []
    for k, start in enumerate(range(0, rows, chunk)):
        t0 = time.perf_counter()
        amounts = compositions(seed, k, min(chunk, rows - start))
        t1 = time.perf_counter()
        X = featurize(amounts)
        t2 = time.perf_counter()
        mean, std = model.predict(X, return_std=True)
        t3 = time.perf_counter()
        times["generate"] += t1 - t0
        times["featurize"] += t2 - t1
        times["predict"] += t3 - t2
        means.append(mean)
        stds.append(std)
    mean, std = np.concatenate(means), np.concatenate(stds)
    assert mean.shape == std.shape == (rows,) and np.isfinite(mean).all() and (std > 0).all()
    return {"rows": rows, **times, "seconds": sum(times.values()), "peak_gib": _peak()}


def select(path: str, rows: int, chunk: int, seed: int, threads: int, batch: int) -> dict:
    _start(threads)
    from matforge.engine.acquisition.strategy import Strategy

    model, X, y = pickle.loads(Path(path).read_bytes())
    pool = np.concatenate([featurize(c) for c in stream(seed, rows, chunk)])
    strategy = Strategy()
    start = time.perf_counter()
    picked, values = strategy.acquisition_.select(model, pool, y, batch, seed=0, X_train=X)
    seconds = time.perf_counter() - start
    assert len(set(picked.tolist())) == batch and np.all((values > 0) & (values <= 1))
    mean = model.predict(pool[picked])
    start = time.perf_counter()
    again = strategy.select(X, y, pool, batch, seed=0)
    with_fit = time.perf_counter() - start
    assert len(set(again.indices.tolist())) == batch
    return {"rows": rows, "batch": batch, "seconds": seconds, "with_fit": with_fit,
            "picked_mean": float(np.mean(mean)), "pool_mean": float(np.mean(model.predict(
                pool[:100_000]))), "peak_gib": _peak()}


def streamed(path: str, rows: int, chunk: int, seed: int, threads: int, k: int) -> dict:
    _start(threads)
    from matforge.engine.acquisition.stream import stream_top_k

    model, _, _ = pickle.loads(Path(path).read_bytes())
    start = time.perf_counter()
    top = stream_top_k(model, stream(seed, rows, chunk), k, featurize=featurize)
    seconds = time.perf_counter() - start
    assert top.n_seen == rows and len(top.indices) == k
    assert np.all(np.diff(top.scores) <= 0)
    return {"rows": rows, "k": k, "seconds": seconds, "best_score": float(top.scores[0]),
            "peak_gib": _peak()}


def threads_compared(path: str, rows: int, seed: int) -> dict:
    _start(1)
    import torch
    from threadpoolctl import threadpool_limits

    model, _, _ = pickle.loads(Path(path).read_bytes())
    X = featurize(compositions(seed, 0, rows))
    out = {"rows": rows}
    for n in (1, 2, 1, 2):  # twice each, interleaved: the machine's load changes
        torch.set_num_threads(n)
        with threadpool_limits(limits=n):
            start = time.perf_counter()
            model.predict(X, return_std=True)
            out.setdefault(n, []).append(time.perf_counter() - start)
    return {"rows": rows, "1": min(out[1]), "2": min(out[2])}


def run(function, *args):
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


STAGES = ("train", "threads", "screen", "select", "stream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch/BLAS threads (default 2)")
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--stream", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--train", type=int, nargs="+", default=[2000, 20000],
                        help="training rows; the first one's model screens and selects")
    parser.add_argument("--inducing", type=int, help="inducing inputs (default: the GP's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--top", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    results: dict = {"threads": args.threads, "inducing": args.inducing}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = str(Path(tmp) / "model.pkl")
        results["train"] = []
        for n in args.train if "train" in args.stages else args.train[:1]:
            row = run(train, n, args.seed, args.threads,
                      model_path if n == args.train[0] else None, args.inducing)
            results["train"].append(row)
            print(f"train {n}: {row}", flush=True)
        if "threads" in args.stages:
            results["threads_compared"] = run(threads_compared, model_path, 200_000, args.seed)
            print(f"threads: {results['threads_compared']}", flush=True)
        if "screen" in args.stages:
            results["screen"] = run(screen, model_path, args.pool, args.chunk, args.seed + 10,
                                    args.threads)
            print(f"screen: {results['screen']}", flush=True)
        if "select" in args.stages:
            results["select"] = run(select, model_path, args.pool, args.chunk, args.seed + 10,
                                    args.threads, args.batch)
            print(f"select: {results['select']}", flush=True)
        if "stream" in args.stages:
            results["stream"] = run(streamed, model_path, args.stream, args.chunk,
                                    args.seed + 20, args.threads, args.top)
            print(f"stream: {results['stream']}", flush=True)

    checks = {}
    print(f"\n{args.threads} torch/BLAS thread(s), 2-core machine\n")
    print("| measurement | seconds | peak GiB | notes |")
    print("|---|---|---|---|")
    for row in results["train"]:
        print(f"| train {row['rows']:,} rows ({row['model']}"
              f"{', m = ' + str(row['inducing']) if row['inducing'] else ''}) "
              f"| {row['seconds']:.1f} | {row['peak_gib']:.2f} | 90 % coverage "
              f"{row['coverage']:.3f}, RMSE {row['rmse']:.4f} (y std {row['y_std']:.3f}) |")
    if "train" in args.stages:
        big = max(results["train"], key=lambda r: r["rows"])
        checks[f"train {big['rows']:,} rows < 120 s"] = big["seconds"] < 120
        checks[f"coverage at {big['rows']:,} in [0.85, 0.95]"] = 0.85 <= big["coverage"] <= 0.95
    if "screen" in results:
        s = results["screen"]
        print(f"| screen {s['rows']:,} (mean and std) | {s['seconds']:.1f} "
              f"| {s['peak_gib']:.2f} | generate {s['generate']:.1f} s, featurize "
              f"{s['featurize']:.1f} s, predict {s['predict']:.1f} s |")
        checks[f"screen {s['rows']:,} < 30 s"] = s["seconds"] < 30
        checks[f"screen {s['rows']:,} peak < 4 GiB"] = s["peak_gib"] < 4
    if "select" in results:
        sel = results["select"]
        print(f"| select {sel['batch']} of {sel['rows']:,} (ptop) | {sel['seconds']:.1f} "
              f"| {sel['peak_gib']:.2f} | fit and select (``Strategy.select``): "
              f"{sel['with_fit']:.1f} s; picks' mean prediction {sel['picked_mean']:.3f}, "
              f"the pool's {sel['pool_mean']:.3f} |")
        checks[f"select {sel['batch']} of {sel['rows']:,} < 20 s"] = sel["seconds"] < 20
    if "stream" in results:
        st = results["stream"]
        print(f"| stream {st['rows']:,}, keep {st['k']:,} | {st['seconds']:.1f} "
              f"| {st['peak_gib']:.2f} | {st['rows'] / st['seconds']:,.0f} rows/s |")
        checks[f"stream {st['rows']:,} peak < 4 GiB"] = st["peak_gib"] < 4
    if "threads_compared" in results:
        t = results["threads_compared"]
        print(f"\npredict {t['rows']:,} rows: 1 thread {t['1']:.2f} s, "
              f"2 threads {t['2']:.2f} s (best of two each)")
    print("\n" + "\n".join(f"{'ok  ' if ok else 'MISS'} {name}" for name, ok in checks.items()))
    results["checks"] = checks
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    met = all(checks.values())
    print("targets met" if met else "targets NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
