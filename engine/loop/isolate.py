"""Run one evaluation in a child process that can be stopped at its deadline.

A thread cannot be interrupted while it blocks in ``time.sleep`` or waits on a
DFT code's process, so every evaluation runs in a child process of its own,
forked from a ``forkserver`` that has imported matforge once (a fork costs
milliseconds, not an interpreter start). The child leads a process group of its
own; at the deadline the whole group is killed (SIGTERM, then SIGKILL), the
codes it started included. The child also dies with its parent: if the
campaign's process is killed, its evaluations stop instead of running on
unseen while a resumed run starts them again.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

PRELOAD = ["matforge.engine.loop.isolate", "matforge.engine.loop.results", "matforge.adapters",
           "numpy", "scipy.linalg", "sklearn", "torch", "matforge.engine.loop.report",
           "matplotlib.pyplot"]
"""Modules the fork server imports once, so each evaluation's fork starts warm (and each
round's report, drawn in a fork too, saves about 1 s of imports)."""

KILL_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL for an evaluation past its deadline."""

_context = None
_context_lock = threading.Lock()
_start_lock = threading.Lock()


class EvaluationTimeout(TimeoutError):
    """An evaluation that passed its deadline; its processes were killed."""


class ChildDied(RuntimeError):
    """The evaluation's process ended without reporting a result or an error."""


def _get_context():
    global _context
    with _context_lock:
        if _context is None:
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD)
        return _context


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent (the fork server) ends."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request took hold
        os._exit(1)


_held = False
_term_pending = False


def on_term(_signum, _frame) -> None:
    """SIGTERM in an evaluation's process: kill its process group, or, once the adapter has
    paid (:func:`hold_signals`), end only after the result is written."""
    global _term_pending
    if _held:  # a result has been paid for: end once it is on disk (release_termination)
        _term_pending = True
        return
    # take the codes this evaluation started down with it
    os.killpg(0, signal.SIGKILL)


def hold_signals() -> None:
    """From now on SIGTERM waits for :func:`release_signals`. A flag the handler reads, not a
    signal mask: a process-directed signal may be delivered to any thread (a BLAS pool's),
    and Python runs the handler in the main thread whatever that thread had masked."""
    global _held
    _held = True


def release_signals() -> None:
    """End the hold; a SIGTERM that came during it takes effect now."""
    global _held
    _held = False
    if _term_pending:
        os.killpg(0, signal.SIGKILL)


def _child(connection, function: Callable, args: tuple, env: dict[str, str] | None) -> None:
    os.setsid()
    os.environ.update(env or {})  # the slot's GPU and thread count, before anything reads them
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which decides
    _die_with_parent()
    try:
        from matforge.engine.settings import limit_threads

        limit_threads()
        outcome = ("ok", function(*args))
    except BaseException as error:  # reported to the parent, which raises it
        outcome = ("error", error)
    try:
        connection.send(outcome)
    except Exception:  # the result or the error does not pickle
        kind = "error"
        text = "".join(traceback.format_exception_only(type(outcome[1]), outcome[1])).strip()
        connection.send((kind, RuntimeError(f"unpicklable outcome: {text}")))
    connection.close()


def _kill_group(process) -> None:
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            process.kill()  # not yet in a group of its own
        except PermissionError:
            pass
        process.join(grace)
        if process.exitcode is not None:
            return


@contextlib.contextmanager
def _main_module_hidden():
    """Start a child without importing the parent's ``__main__`` again.

    multiprocessing re-imports the main module in every forkserver child (as
    ``__mp_main__``), which for a user's driver script costs its imports (seconds,
    for one that imports Prefect) and, in a script without an ``if __name__ ==
    "__main__"`` guard, runs it again. Evaluations never need it: what they run
    lives in importable modules.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _start_lock:
        saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
        main.__spec__ = None
        main.__dict__.pop("__file__", None)
        try:
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def run_isolated(function: Callable, args: tuple, timeout: float | None, label: str = "",
                 env: dict[str, str] | None = None) -> Any:
    """``function(*args)`` in a child process (with ``env`` added to its environment, e.g.
    ``CUDA_VISIBLE_DEVICES`` and ``MATFORGE_THREADS`` of its slot); its exception is raised
    here.

    Raises :class:`EvaluationTimeout` after ``timeout`` seconds (None: no limit),
    once the child's process group is killed, and :class:`ChildDied` if the child
    ends without an outcome (killed by the system, a crash in native code).
    ``function`` and ``args`` must pickle.
    """
    context = _get_context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, function, args, env),
                              name=f"evaluate-{label}", daemon=False)
    with _main_module_hidden():
        process.start()
    send.close()
    try:
        if not receive.poll(timeout):
            _kill_group(process)
            raise EvaluationTimeout(
                f"evaluation {label} timed out after {timeout:g} s; its processes were killed"
            )
        try:
            kind, value = receive.recv()
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            process.join(10)
            raise ChildDied(
                f"evaluation {label}: its process ended without a result "
                f"(exit code {process.exitcode}; {type(error).__name__})"
            ) from None
        process.join(30)
        if kind == "error":
            raise value
        return value
    finally:
        receive.close()
        if process.exitcode is None:
            _kill_group(process)
