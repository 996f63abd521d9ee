"""Featurization throughput for million-candidate pools (issue 19), with its targets.

Times, side by side in one run, one thread (``--threads``):

- the composition featurizer (campaign elements: 20 elements, 5 properties, 40 features)
  on ``--compositions`` (1,000,000) random compositions of 1-5 of those elements (1-8
  atoms each) given as one amount array (``CompositionFeaturizer.transform_amounts``);
- the first ``--matminer`` (20,000) of them as pymatgen ``Composition`` objects: matforge's
  ``transform``, the per-row ``featurize`` it replaced, and matminer's
  ``ElementProperty.from_preset("magpie")`` (``featurize`` per composition, one process);
- the structure featurizer on ``--structures`` (10,000) structures of 8-32 atoms
  (rattled, strained supercells of fcc, bcc, hcp, rock-salt, perovskite and diamond
  cells decorated with six metals, oxygen on the anion sites), its per-row path on
  ``--rows`` of them, and the material featurizer (composition and structure) on all.

Everything is generated from ``--seed``; generation is not timed. The script checks
that the array paths give the per-row features, prints a table, and exits 0 only if the
targets hold: 1,000,000 compositions in under 15 s, at least 100x matminer's throughput
on the same Composition objects, 10,000 structures in under 60 s. matminer is not a
matforge dependency; without it the matminer rows are skipped and the script exits 1.

    python benchmarks/featurize.py
    python benchmarks/featurize.py --compositions 200000 --structures 2000 --threads 2
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings

COMPOSITION_ELEMENTS = ["Li", "Na", "Mg", "Al", "Si", "K", "Ca", "Ti", "V", "Cr", "Mn", "Fe",
                        "Co", "Ni", "Cu", "Zn", "Ga", "Sn", "O", "S"]
METALS = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt"]
STRUCTURE_ELEMENTS = METALS + ["O"]

TARGET_MILLION_S = 15.0
TARGET_MATMINER_RATIO = 100.0
TARGET_STRUCTURES_S = 60.0
INSTALL_MATMINER = "pip install --no-deps matminer   # --no-deps: keeps pandas 3 (matminer pins <3)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compositions", type=int, default=1_000_000)
    parser.add_argument("--matminer", type=int, default=20_000,
                        help="compositions featurized by matminer and as Composition objects")
    parser.add_argument("--structures", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=2_000,
                        help="structures featurized by the per-row path")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS/OpenMP threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.compositions, args.matminer, args.structures, args.rows, args.threads) < 1:
        parser.error("counts and --threads must be >= 1")
    args.matminer = min(args.matminer, args.compositions)
    args.rows = min(args.rows, args.structures)
    return args


def random_amounts(n: int, n_elements: int, rng, chunk: int = 100_000):
    """Atoms of each element, int8 array of shape (n, n_elements): 1-5 distinct elements
    per row, 1-8 atoms each."""
    import numpy as np

    out = np.zeros((n, n_elements), dtype=np.int8)
    for start in range(0, n, chunk):
        block = out[start:start + chunk]
        k = rng.integers(1, 6, size=len(block))
        # the k elements of lowest random rank in each row
        rank = rng.random(block.shape).argsort(axis=1).argsort(axis=1)
        chosen = rank < k[:, None]
        block[chosen] = rng.integers(1, 9, size=int(chosen.sum()))
    return out


PROTOTYPES = {  # name: (lattice constant Å, c/a, fractional coordinates, anion sites)
    "fcc": (3.8, 1.0, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], []),
    "bcc": (3.0, 1.0, [[0, 0, 0], [0.5, 0.5, 0.5]], []),
    "hcp": (2.7, 1.633, [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]], []),
    "rocksalt": (4.2, 1.0, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                            [0.5, 0.5, 0.5], [0, 0, 0.5], [0, 0.5, 0], [0.5, 0, 0]],
                 [4, 5, 6, 7]),
    "perovskite": (3.9, 1.0, [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5],
                              [0, 0.5, 0.5]], [2, 3, 4]),
    "diamond": (5.4, 1.0, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                           [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75],
                           [0.25, 0.75, 0.75]], []),
}


def random_structures(n: int, rng):
    """``n`` structures of 8-32 atoms: supercells of the prototypes, decorated, strained
    by up to 3 % and rattled by up to 0.1 Å. Their Cartesian coordinates are computed
    here, as a campaign's validity checks do before featurization."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    shapes = [(name, m) for name, (_, _, coords, _) in PROTOTYPES.items()
              for m in np.ndindex(4, 4, 4)
              if 8 <= len(coords) * (m[0] + 1) * (m[1] + 1) * (m[2] + 1) <= 32]
    out = []
    for _ in range(n):
        name, m = shapes[int(rng.integers(len(shapes)))]
        a, c_over_a, coords, anions = PROTOTYPES[name]
        reps = np.array(m) + 1
        if name == "hcp":
            cell = Lattice.hexagonal(a, a * c_over_a).matrix
        else:
            cell = np.eye(3) * a
        strain = rng.uniform(-0.03, 0.03, (3, 3))
        cell = (cell * reps[:, None]) @ (np.eye(3) + (strain + strain.T) / 2)
        shifts = np.array(list(np.ndindex(*reps)))
        frac = ((np.asarray(coords)[None, :, :] + shifts[:, None, :]) / reps).reshape(-1, 3)
        is_anion = np.tile(np.isin(np.arange(len(coords)), anions), len(shifts))
        species = np.where(is_anion, "O", rng.choice(METALS, size=len(frac)))
        frac = frac + rng.uniform(-0.1, 0.1, frac.shape) @ np.linalg.inv(cell)
        structure = Structure(Lattice(cell), list(species), frac)
        structure.cart_coords  # noqa: B018  pymatgen computes a site's coordinates once, lazily
        out.append(structure)
    return out


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def matminer_magpie():
    """matminer's Magpie element-property featurizer, or None where matminer is missing."""
    try:
        from matminer.featurizers.composition import ElementProperty
    except ImportError:
        return None
    return ElementProperty.from_preset("magpie")


def main(argv=None) -> int:
    args = parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "MATFORGE_THREADS"):
        os.environ[variable] = str(args.threads)
    warnings.filterwarnings("ignore")  # pymatgen's "no data for ..." for some elements
    import numpy as np
    from pymatgen.core import Composition

    from matforge.engine.materials.featurize import (
        CompositionFeaturizer,
        MaterialFeaturizer,
        StructureFeaturizer,
    )

    rng = np.random.default_rng(args.seed)
    amounts, generate_s = timed(random_amounts, args.compositions, len(COMPOSITION_ELEMENTS),
                                rng)
    subset = amounts[: args.matminer]
    compositions = [Composition({e: int(n) for e, n in zip(COMPOSITION_ELEMENTS, row) if n})
                    for row in subset]
    structures, structures_s = timed(random_structures, args.structures, rng)
    sizes = np.array([len(s) for s in structures])
    print(f"generated {args.compositions:,} compositions in {generate_s:.1f} s, "
          f"{args.structures:,} structures of {sizes.min()}-{sizes.max()} atoms "
          f"(mean {sizes.mean():.1f}) in {structures_s:.1f} s; {args.threads} thread(s)")

    rows = []  # (what, input, n, seconds, compared with, its rows per second)

    def row(what, given, n, seconds, baseline=None):
        rows.append((what, given, n, seconds, baseline))
        return n / seconds

    composition = CompositionFeaturizer(COMPOSITION_ELEMENTS)
    structure = StructureFeaturizer(STRUCTURE_ELEMENTS)
    material = MaterialFeaturizer(STRUCTURE_ELEMENTS)
    # warm-up, not timed: element data lookups are cached, the neighbour search imported
    composition.transform_amounts(amounts[:100], COMPOSITION_ELEMENTS)
    composition.transform(compositions[:100])
    material.transform(structures[:10])
    X_million, s = timed(composition.transform_amounts, amounts, COMPOSITION_ELEMENTS)
    million_s = s
    row("composition transform_amounts", "int8 amount array", len(amounts), s)
    X_arrays, s = timed(composition.transform_amounts, subset, COMPOSITION_ELEMENTS)
    row("composition transform_amounts", "int8 amount array", len(subset), s, "matminer")
    X_objects, s = timed(composition.transform, compositions)
    objects_rate = row("composition transform", "Composition objects", len(subset), s,
                       "matminer")
    X_rows, s = timed(lambda: np.vstack([composition.featurize(c) for c in compositions]))
    row("composition featurize per row", "Composition objects", len(subset), s, "matminer")
    composition_error = max(float(np.nanmax(np.abs(X_objects - X_rows))),
                            float(np.nanmax(np.abs(X_arrays - X_rows))),
                            float(np.nanmax(np.abs(X_million[: len(subset)] - X_rows))))

    magpie = matminer_magpie()
    matminer_rate = None
    if magpie is None:
        print(f"matminer is not installed; to compare with it: {INSTALL_MATMINER}")
    else:
        _, s = timed(lambda: [magpie.featurize(c) for c in compositions])
        matminer_rate = row('matminer ElementProperty "magpie"', "Composition objects",
                            len(subset), s)

    X_structures, structures_s = timed(structure.transform, structures)
    row("structure transform", "Structure objects", len(structures), structures_s, "per row")
    sample = structures[: args.rows]
    X_rows, s = timed(lambda: np.vstack([structure.featurize(t) for t in sample]))
    per_row_rate = row("structure featurize per row", "Structure objects", len(sample), s)
    structure_error = float(np.abs(X_structures[: len(sample)] - X_rows).max())
    _, s = timed(material.transform, structures)
    row("material transform (composition + structure)", "Structure objects", len(structures),
        s, "per row")

    baselines = {"matminer": matminer_rate, "per row": per_row_rate}
    print()
    print("| featurizer | input | rows | seconds | rows per s | ratio |")
    print("|---|---|---|---|---|---|")
    for what, given, n, seconds, baseline in rows:
        rate = n / seconds
        base = baselines.get(baseline)
        ratio = f"{rate / base:,.1f}x {baseline}" if base else ""
        print(f"| {what} | {given} | {n:,} | {seconds:.2f} | {rate:,.0f} | {ratio} |")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nlargest difference from the per-row features: compositions "
          f"{composition_error:.1e}, structures {structure_error:.1e}; peak resident memory "
          f"{peak_mb:,.0f} MB ({X_million.nbytes / 2**20:,.0f} MB of it the "
          f"{len(X_million):,} composition feature rows)")

    full_pool = args.compositions >= 1_000_000
    full_structures = args.structures >= 10_000
    checks = [
        (f"1,000,000 compositions in under {TARGET_MILLION_S:g} s",
         full_pool and million_s < TARGET_MILLION_S,
         f"{million_s:.2f} s" if full_pool else f"not measured ({args.compositions:,} run)"),
        (f"Composition objects at >= {TARGET_MATMINER_RATIO:g}x matminer magpie",
         matminer_rate is not None and objects_rate / matminer_rate >= TARGET_MATMINER_RATIO,
         f"{objects_rate / matminer_rate:,.0f}x" if matminer_rate else "not measured"),
        (f"10,000 structures of 8-32 atoms in under {TARGET_STRUCTURES_S:g} s",
         full_structures and structures_s < TARGET_STRUCTURES_S,
         f"{structures_s:.2f} s" if full_structures
         else f"not measured ({args.structures:,} run)"),
        ("array paths give the per-row features (1e-9)",
         composition_error < 1e-9 and structure_error < 1e-9,
         f"{max(composition_error, structure_error):.1e}"),
    ]
    print()
    for text, ok, figure in checks:
        print(f"{'met   ' if ok else 'MISSED'} {text}: {figure}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
