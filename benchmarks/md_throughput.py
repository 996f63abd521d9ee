"""Molecular-dynamics throughput (atom-steps per second) of matforge's potentials on one cell.

The same 256-atom fcc Cu cell (4x4x4 conventional cells, 3 % rattled, 300 K Maxwell-Boltzmann
velocities) is run with ASE's velocity Verlet for each calculator, measured side by side
in one process:

- ``emt``: ASE's effective-medium theory (C-accelerated ``asap3`` is not used);
- ``bp``: matforge's own Behler-Parrinello ensemble (``engine/models/potential.py``),
  trained first on EMT energies and forces of rattled Cu cells (training not timed);
  one network and the default ensemble of four;
- ``chgnet``: CHGNet 0.3 from its wheel (skipped when not installed).

Each calculator runs ``--warmup`` steps (model loading, first neighbour list), then
``--steps`` timed steps. Threads: torch and BLAS use ``--threads`` (default 1), set
before anything computes. The device is CUDA when present, else the CPU; the GPU rows
come from running this script on a machine with one (``--device cuda``).

    python benchmarks/md_throughput.py
    python benchmarks/md_throughput.py --steps 50 --threads 2 --only emt bp
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed MD steps per calculator")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="some of: emt bp bp-ensemble chgnet")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    return parser.parse_args(argv)


def cell():
    import numpy as np
    from ase.build import bulk

    from matforge.adapters.mlip import thermalize_momenta

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))
    atoms.rattle(0.03 * 3.61 / 4, rng=np.random.default_rng(0))
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(1))
    return atoms


def training_images(n: int = 40):
    """EMT energies and forces of rattled and strained Cu cells (8 and 32 atoms)."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(2)
    images = []
    for i in range(n):
        a = 3.61 * (1 + rng.uniform(-0.03, 0.03))
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((1, 1, 2) if i % 2 else (2, 2, 2))
        atoms.rattle(0.08, rng=rng)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        images.append(atoms)
    return images


def make(name: str, device: str):
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if name in ("bp", "bp-ensemble"):
        from matforge.engine.models.potential import BPCalculator, BPEnsemble, BPPotential

        images = training_images()
        model = BPPotential(random_state=0) if name == "bp" else BPEnsemble(random_state=0)
        return BPCalculator(model.fit(images))
    if name == "chgnet":
        from matforge.adapters.calculators import make_calculator

        return make_calculator("chgnet", device=device)
    raise ValueError(f"unknown calculator {name!r}")


def throughput(name: str, device: str, steps: int, warmup: int) -> dict:
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = cell()
    t0 = time.perf_counter()
    atoms.calc = make(name, device)
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.run(warmup)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - t0
    return {"calculator": name, "atoms": len(atoms), "steps": steps, "seconds": seconds,
            "atom_steps_per_s": len(atoms) * steps / seconds, "setup_s": setup}


def main(argv=None) -> int:
    args = parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(args.threads)
    os.environ["MATFORGE_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = args.only or ["emt", "bp", "bp-ensemble", "chgnet"]
    rows = []
    for name in names:
        if name == "chgnet":
            from matforge.adapters.calculators import is_installed

            if not is_installed("chgnet"):
                print("chgnet: not installed, skipped", file=sys.stderr)
                continue
        rows.append(throughput(name, device, args.steps, args.warmup))
    emt = next((r for r in rows if r["calculator"] == "emt"), None)
    print(f"MD throughput, 256-atom fcc Cu, velocity Verlet, device {device}, "
          f"{args.threads} thread(s), {args.steps} steps")
    print(f"{'calculator':<12} {'atom-steps/s':>13} {'ms/step':>9} {'vs EMT':>8} {'setup s':>8}")
    for r in rows:
        ratio = f"{r['atom_steps_per_s'] / emt['atom_steps_per_s']:.3g}x" if emt else "-"
        print(f"{r['calculator']:<12} {r['atom_steps_per_s']:>13.0f} "
              f"{1000 * r['seconds'] / r['steps']:>9.1f} {ratio:>8} {r['setup_s']:>8.1f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"device": device, "threads": args.threads, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
