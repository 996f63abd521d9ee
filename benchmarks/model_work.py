"""The model work of one round at ``--results`` results (default 500): featurizing, the
surrogate's fit and the pick, the model's held-out quality, and the anomaly flags.

The results are decorations of six fcc metals (up to 8 atoms), each with the cell's EMT
energy per atom without relaxation, claimed and completed in a SQLite campaign store as a
campaign would; the pool is ``--pool`` fresh decorations. Each stage is the function a round
calls (``engine/loop/campaign.py``), with the example campaign's defaults, timed on one
thread (``--threads`` to change).

The held-out quality is the select model's leave-one-out predictions
(``engine/models/held_out.py``); ``--compare-kfold`` also times the 5-fold cross-validation
(five refits) that rounds ran before, side by side.

Target (issue 19): the round's model work at 500 results under 30 s on 2 cores.

    python benchmarks/model_work.py --compare-kfold
    python benchmarks/model_work.py --results 100 200 500
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ELEMENTS = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt"]


def results_store(n: int, pool: int, root: Path):
    """A store holding ``n`` completed results, its config and the round's pool."""
    import numpy as np
    from ase.calculators.emt import EMT
    from pymatgen.io.ase import AseAtomsAdaptor

    from matforge.engine.config import parse_config
    from matforge.engine.loop import campaign as stages
    from matforge.engine.store.sql import CampaignStore

    config = parse_config({
        "name": "model-work", "elements": ELEMENTS, "budget": 10 * n, "batch_size": 8,
        "generator": {"pool_size": n + pool, "max_atoms": 8},
        "objective": {"property": "energy_per_atom", "direction": "minimize"},
        "store": f"sqlite:///{root / 'store.db'}", "workdir": str(root / "runs"), "seed": 3,
    })
    candidates = list(stages.propose(config, 0, [], set()))
    if len(candidates) < n + pool:
        raise RuntimeError(f"only {len(candidates)} distinct decorations for {n + pool}")
    store = CampaignStore(config.store)
    cid = store.campaign_id(config.name, config.model_dump(mode="json"))
    rng = np.random.default_rng(0)
    for k, cand in enumerate(candidates[:n]):
        atoms = AseAtomsAdaptor.get_atoms(cand.structure)
        atoms.calc = EMT()
        energy = float(atoms.get_potential_energy()) / len(atoms)
        claim = store.claim(cid, k // 8, cand.structure, cand.fingerprint, cand.generator,
                            "emt", {}, predicted_mean=energy + 0.01 * rng.standard_normal(),
                            predicted_std=0.01)
        store.complete(claim.id, "accepted", energy, {"energy_per_atom": energy})
    return config, store, cid, [c.structure for c in candidates[n:]]


def measure(n: int, pool: int, kfold: bool = False) -> tuple[dict[str, float], dict | None]:
    import numpy as np

    from matforge.engine.loop import campaign as stages
    from matforge.engine.loop.round import training_set

    with tempfile.TemporaryDirectory(prefix="matforge-model-work-") as tmp:
        config, store, cid, pool_structures = results_store(n, pool, Path(tmp))
        round = n // 8 + 1
        training = training_set(store, cid, round, maximize=False)
        results = store.evaluations(cid, statuses=("accepted", "needs_review"))
        times = {}
        t = time.perf_counter()
        X_train = stages.featurize(config, [e.input_structure() for e in training])
        X_pool = stages.featurize(config, pool_structures)
        times["featurize"] = time.perf_counter() - t
        t = time.perf_counter()
        selection = stages.select(config, round, X_pool, X_train, training, config.batch_size)
        times["select"] = time.perf_counter() - t
        y = np.array([e.objective for e in training])
        t = time.perf_counter()  # once more, alone: its share of the select stage
        stages.model_quality(config, selection.model, X_train, y)
        times["  of which held-out quality"] = time.perf_counter() - t
        t = time.perf_counter()
        stages.flag(config, results, round - 1)
        times["anomaly flags"] = time.perf_counter() - t
        if kfold:
            t = time.perf_counter()
            stages.surrogate_metrics(config, X_train, y)
            times["5-fold CV (before)"] = time.perf_counter() - t
        store.close()
    return times, selection.metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, nargs="*", default=[500])
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare-kfold", action="store_true",
                        help="also time the 5-fold cross-validation rounds ran before")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    ok = True
    for n in args.results:
        times, metrics = measure(n, args.pool, args.compare_kfold)
        total = sum(v for k, v in times.items() if not k.startswith(" ") and "before" not in k)
        print(f"\n{n} results, a pool of {args.pool}, {args.threads} thread(s): "
              f"{total:.1f} s of model work")
        for stage, seconds in times.items():
            print(f"  {stage:<28}{seconds:7.2f} s")
        if metrics:
            print(f"  held-out RMSE {metrics['rmse']:.4f} eV/atom, 90 % coverage "
                  f"{metrics['coverage90']:.3f}")
        if "5-fold CV (before)" in times:
            cv = times["5-fold CV (before)"]
            print(f"  a round with 5-fold CV instead: {total + cv:.1f} s "
                  f"({(total + cv) / total:.1f}x)")
        if n >= 500:
            ok &= total < 30
            print(f"  target < 30 s at 500 results: {'PASS' if total < 30 else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
