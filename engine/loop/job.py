"""The program a Slurm job runs: ``python -m matforge.engine.loop.job SPEC``.

``SPEC`` (written by :mod:`matforge.engine.loop.slurm`) holds the pickled adapter
factory, the structure, the evaluation's directory and its idempotency key. The
job's process is the evaluation's process (no fork server: Slurm already gives it
a process of its own, and the thread counts come from the job script's
environment): it leads a process group with the codes it starts, which a SIGTERM
from Slurm (walltime, ``scancel``) takes down, except after the adapter has paid,
when the SIGTERM waits until the result file is on disk
(:func:`~matforge.engine.loop.results.evaluate_to_file`). An exception from the
adapter is written to ``matforge-error.json`` for the controller, and the job
exits 1.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m matforge.engine.loop.job SPEC", file=sys.stderr)
        return 2
    from matforge.engine.loop import isolate
    from matforge.engine.loop.results import evaluate_to_file, read_result
    from matforge.engine.loop.slurm import write_error

    try:
        os.setpgid(0, 0)  # the codes this evaluation starts go down with it
    except PermissionError:
        pass  # a session leader already leads its own group
    signal.signal(signal.SIGTERM, isolate.on_term)

    with open(argv[0], "rb") as handle:
        spec = pickle.load(handle)  # noqa: S301 - written by this campaign's controller
    workdir, key = spec["workdir"], spec["key"]
    if read_result(workdir, key) is not None:  # a requeued job whose result is on disk
        return 0
    try:
        # the walltime is Slurm's to enforce: no deadline of our own
        evaluate_to_file(spec["make_evaluator"], spec["structure"], workdir, key)
    except Exception as error:
        write_error(workdir, key, error)
        print(f"matforge job: evaluation {spec['label']} failed: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
