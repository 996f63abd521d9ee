"""The program a Slurm job runs: ``python -m matforge.engine.loop.job SPEC``.

``SPEC`` (written by :mod:`matforge.engine.loop.slurm`) holds the pickled adapter
factory, the structure, the evaluation's directory and its idempotency key. The
evaluation runs in a child process exactly as it does on the controller's machine
(:func:`~matforge.engine.loop.results.evaluate_isolated`): the result file is
written before the job ends, and a SIGTERM from Slurm (walltime, ``scancel``)
after the adapter has paid waits until it is on disk. An exception from the
adapter is written to ``matforge-error.json`` for the controller, and the job
exits 1.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from pymatgen.core import Structure


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m matforge.engine.loop.job SPEC", file=sys.stderr)
        return 2
    from matforge.engine.loop.results import evaluate_isolated, read_result
    from matforge.engine.loop.slurm import write_error

    with open(argv[0], "rb") as handle:
        spec = pickle.load(handle)  # noqa: S301 - written by this campaign's controller
    workdir, key = spec["workdir"], spec["key"]
    if read_result(workdir, key) is not None:  # a requeued job whose result is on disk
        return 0
    try:
        # the walltime is Slurm's to enforce: no deadline of our own
        evaluate_isolated(spec["make_evaluator"], Structure.from_dict(spec["structure"]),
                          Path(workdir), key, None, spec["label"])
    except Exception as error:
        write_error(workdir, key, error)
        print(f"matforge job: evaluation {spec['label']} failed: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
