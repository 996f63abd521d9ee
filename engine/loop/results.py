"""An adapter's result, written to its evaluation's directory before the store hears of it.

The child process that runs the adapter writes ``matforge-result.json``
(atomically: a temporary file, fsynced, renamed) before it returns, and the
result is committed to the store after. A run killed between the two leaves
the file behind; the resumed run collects it instead of paying for the
evaluation again. The file names the evaluation's idempotency key, so a stale
directory from another campaign is never mistaken for this one's result.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matforge.engine.materials.structures import Material, material_as_dict, material_from_dict

RESULT_FILE = "matforge-result.json"
LOCK_FILE = ".matforge-evaluating.lock"


def write_result(workdir: str | Path, key: str, result: dict[str, Any]) -> Path:
    """Write ``result`` for evaluation ``key`` into ``workdir`` so that it is either whole
    on disk or absent, whatever moment the process dies."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / RESULT_FILE
    partial = workdir / f".{RESULT_FILE}.{os.getpid()}"
    with open(partial, "w") as handle:
        json.dump({"key": key, "result": result}, handle)  # NaN stays NaN, so it fails later
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    directory = os.open(workdir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def read_result(workdir: str | Path, key: str) -> dict[str, Any] | None:
    """The result written for evaluation ``key`` in ``workdir``, or None if there is none."""
    path = Path(workdir) / RESULT_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    result = stored.get("result")
    return result if isinstance(result, dict) else None


def evaluate_isolated(make_evaluator: Callable[[], Any], structure: Material,
                      workdir: str | Path, key: str, timeout: float | None,
                      label: str = "", env: dict[str, str] | None = None) -> dict[str, Any]:
    """Evaluate ``structure`` in a child process that is killed at ``timeout``
    (:func:`~matforge.engine.loop.isolate.run_isolated`) and return the result it wrote
    to ``workdir``; the adapter's own exception is raised here."""
    from matforge.engine.loop.isolate import ChildDied, run_isolated

    run_isolated(evaluate_to_file, (make_evaluator, material_as_dict(structure), str(workdir), key),
                 timeout, label, env)
    result = read_result(workdir, key)
    if result is None:
        raise ChildDied(f"evaluation {label}: the adapter returned but no result was written "
                        f"to {workdir}")
    return result


def hold_termination() -> None:
    """Called by an adapter once its result exists (the code has finished, the bill is
    paid): from here until the result is on disk, SIGTERM (a deadline, or the campaign's
    process dying) waits, so the result is collected instead of paid for again. Outside
    an evaluation's child process it does nothing."""
    from matforge.engine.loop import isolate

    if _evaluating:
        isolate.hold_signals()


_evaluating = False


def evaluate_to_file(make_evaluator: Callable[[], Any], structure: dict[str, Any],
                     workdir: str, key: str) -> None:
    """Build the adapter, evaluate ``structure`` and write the result (runs in the child).

    Once the adapter has returned (or called :func:`hold_termination`), the result has
    been paid for: SIGTERM waits until it is on disk. One process at a time evaluates
    a directory (a lock file): one started while another still runs (a Dask worker or
    Slurm job left over from a controller that died, whose work a resumed run started
    again) waits for it and collects its result instead of paying a second time.
    """
    from matforge.engine.loop import isolate

    global _evaluating
    Path(workdir).mkdir(parents=True, exist_ok=True)
    lock = open(Path(workdir) / LOCK_FILE, "w")
    _evaluating = True
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if read_result(workdir, key) is not None:
            return  # the other process finished it
        evaluator = make_evaluator()
        result = evaluator.evaluate(material_from_dict(structure), Path(workdir))
        hold_termination()
        write_result(workdir, key, result.model_dump())
    finally:
        _evaluating = False
        lock.close()
        isolate.release_signals()
