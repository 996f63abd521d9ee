"""Valid unique candidates per second of each generator, and the cost of deduplication.

Generators (one thread, ``--n`` proposals each, seeded): ``decoration``,
``mutation`` and ``prototype`` (Heusler, B2, L1_2, ...) over six fcc metals;
``charge-balanced``, ``substitution`` (from a rock-salt MgO seed), ``symmetric``
(PyXtal, common space groups) over Li-Mn-O(-Mg);
``learned`` (trained on 60 decorations of a toy campaign, not timed). A candidate
counts when it passes the validity filters (``engine/materials/validity.py``) and is
new to a :class:`~matforge.engine.materials.dedup.StructureIndex` of what the same
generator gave before.

Deduplication: ``--stored`` structures (default 100,000: decorations of up to
16-atom fcc/bcc/hcp supercells of six metals) are written, with their keys
(fingerprint, formula, space group), to a SQLite campaign store as the loop keeps
them; a round's history index is read from it (``engine.loop.round.history``) and
``--queries`` new candidates are looked up, side by side with StructureMatcher
against every stored structure of the same formula (the matcher's own grouping),
measured on a sample.

    python benchmarks/generators.py
    python benchmarks/generators.py --n 100 --stored 20000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

METALS = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt"]
OXIDE = ["Li", "Mn", "O"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="proposals per generator")
    parser.add_argument("--stored", type=int, default=100_000, help="structures in the index")
    parser.add_argument("--queries", type=int, default=200, help="look-ups timed")
    parser.add_argument("--jobs", type=int, default=2, help="processes computing stored keys")
    args = parser.parse_args(argv)
    if min(args.n, args.stored, args.queries, args.jobs) < 1:
        parser.error("--n, --stored, --queries and --jobs must be >= 1")
    return args


def _generators(tmp: Path):
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from matforge.engine.materials.chemistry import ChargeBalancedGenerator, SubstitutionGenerator
    from matforge.engine.materials.generate import Candidate, DecorationGenerator, MutationGenerator
    from matforge.engine.materials.learned import LearnedGenerator
    from matforge.engine.materials.prototypes import PrototypeGenerator
    from matforge.engine.materials.symmetric import SymmetricGenerator

    decoration = DecorationGenerator(METALS)
    rng = np.random.default_rng(0)
    parents = [decoration.sample(rng) for _ in range(5)]
    seed = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    seed.to(filename=str(tmp / "MgO.cif"))
    learned = LearnedGenerator(METALS)
    training = [decoration.sample(rng).structure for _ in range(60)]
    gold = learned.vectors(training)[:, METALS.index("Au")]
    learned.fit(training, gold, maximize=True)
    return [
        ("decoration", decoration, (), METALS),
        ("mutation", MutationGenerator(METALS), parents, METALS),
        ("prototype", PrototypeGenerator(METALS), (), METALS),
        ("charge-balanced", ChargeBalancedGenerator(OXIDE), (), OXIDE),
        ("substitution", SubstitutionGenerator(["Mg", "Ca", "Ni", "Co", "Zn", "Fe", "O"],
                                               seeds=[str(tmp / "MgO.cif")]),
         [Candidate(seed, "seed")], ["Mg", "Ca", "Ni", "Co", "Zn", "Fe", "O"]),
        ("symmetric", SymmetricGenerator(OXIDE), (), OXIDE),
        ("learned", learned, (), METALS),
    ]


def measure_generators(n: int) -> list[tuple[str, int, int, float]]:
    import numpy as np

    from matforge.engine.materials.dedup import StructureIndex
    from matforge.engine.materials.validity import Filters, filter_candidates

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, generator, parents, elements in _generators(Path(tmp)):
            filters = Filters(frozenset(elements), max_atoms=64,
                              charge_balanced="O" in elements)
            rng = np.random.default_rng(1)
            started = time.perf_counter()
            proposed = generator.propose(n, rng, parents)
            kept, _ = filter_candidates(proposed, filters)
            index = StructureIndex()
            unique = sum(index.add(c.structure) for c in kept)
            seconds = time.perf_counter() - started
            rows.append((name, len(proposed), unique, seconds))
    return rows


def _keys(seed_and_count):
    import numpy as np

    from matforge.engine.materials.dedup import structure_key
    from matforge.engine.materials.generate import DecorationGenerator

    seed, count = seed_and_count
    generator = DecorationGenerator(METALS)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        structure = generator.sample(rng).structure
        out.append((structure.as_dict(), structure_key(structure)))
    return out


def measure_dedup(stored: int, queries: int, jobs: int) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from matforge.engine.loop.round import history
    from matforge.engine.materials.generate import DecorationGenerator
    from matforge.engine.store.sql import CampaignStore, CandidateRow

    chunks = [(seed, stored // jobs + (seed < stored % jobs)) for seed in range(jobs)]
    started = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        records = [r for chunk in pool.map(_keys, chunks) for r in chunk]
    keying = time.perf_counter() - started

    # the store as a campaign leaves it: each candidate once, with its keys (as claim keeps them)
    rows, by_formula = {}, {}
    for data, key in records:
        if key.fingerprint not in rows:
            structure = Structure.from_dict(data)
            rows[key.fingerprint] = dict(
                campaign_id=1, fingerprint=key.fingerprint, formula=key.formula,
                reduced_formula=key.formula, space_group=key.space_group,
                n_atoms=len(structure), structure=data, generator="decoration", round=0)
            by_formula.setdefault(key.formula, []).append(structure)
    with tempfile.TemporaryDirectory() as tmp:
        store = CampaignStore(f"sqlite:///{tmp}/dedup.db")
        cid = store.campaign_id("dedup", {})
        with store.engine.begin() as conn:
            conn.execute(CandidateRow.__table__.insert(), list(rows.values()))
        # what a round does: the history index (fingerprints and formulas read from the
        # store), then each candidate looked up, stored structures fetched as needed
        started = time.perf_counter()
        index = history(store, cid, 1)
        building = time.perf_counter() - started
        rng = np.random.default_rng(12345)
        generator = DecorationGenerator(METALS)
        probes = [generator.sample(rng).structure for _ in range(queries)]
        started = time.perf_counter()
        found = sum(index.find(s) is not None for s in probes)
        lookup = (time.perf_counter() - started) / queries
        comparisons = index.comparisons / queries
        store.close()

    # the matcher against every stored structure of the same formula, on a sample of probes
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True)
    sample = probes[: max(1, min(10, queries))]
    started = time.perf_counter()
    calls = 0
    for s in sample:
        for other in by_formula.get(s.composition.reduced_formula, []):
            calls += 1
            if matcher.fit(s, other):
                break
    by_formula_cost = (time.perf_counter() - started) / len(sample)
    return {"stored": len(rows), "keying": keying, "building": building, "lookup": lookup,
            "comparisons": comparisons, "found": found, "queries": queries,
            "formula_cost": by_formula_cost, "formula_calls": calls / len(sample)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = measure_generators(args.n)
    print(f"\nGenerators: {args.n} proposals each, one thread")
    print(f"{'generator':<17}{'proposed':>9}{'valid+unique':>14}{'seconds':>9}{'per s':>8}")
    for name, proposed, unique, seconds in rows:
        print(f"{name:<17}{proposed:>9}{unique:>14}{seconds:>9.2f}{unique / seconds:>8.1f}")
    d = measure_dedup(args.stored, args.queries, args.jobs)
    print(f"\nDeduplication against {d['stored']:,} stored structures "
          f"(keys computed in {d['keying']:.0f} s on {args.jobs} processes, "
          f"{d['stored'] / d['keying']:.0f}/s; the round's history index read from the "
          f"SQLite store in {d['building']:.1f} s)")
    print(f"  history look-up, keys and store reads included: {d['lookup'] * 1000:.1f} ms "
          f"per candidate, "
          f"{d['comparisons']:.2f} matcher calls ({d['found']} of {d['queries']} found)")
    print(f"  matcher against the same formula: {d['formula_cost'] * 1000:.0f} ms per candidate, "
          f"{d['formula_calls']:.0f} matcher calls")
    print(f"  index vs matcher by formula: {d['formula_cost'] / d['lookup']:.0f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
