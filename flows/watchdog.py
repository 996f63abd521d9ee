"""Stop a run soon, with one message, when its Prefect server goes away.

Prefect's client retries a dead API for minutes (websocket reconnects, HTTP
retries), printing a stream of errors, so a run whose server died would hang
long after its last useful work. Evaluations do not need the server: each
commits its outcome to the campaign store itself. :class:`ServerWatchdog`
polls the server's health check from a daemon thread; once its port has refused
:data:`MISSES_BEFORE_LOST` polls in a row (or it has answered none for
:data:`SILENT_BEFORE_LOST_S`: a loaded server is slow, not lost), the watchdog says so in one line
on stderr, lets the evaluations this process started commit (at most
:data:`DRAIN_TIMEOUT_S`), releases this process's campaign leases so that a
rerun starts at once, and ends the process with exit code 1 (``os._exit``: a
normal exit would wait on Prefect's retries). Running the same command again
continues the campaign.

From the loss to the exit takes at most about ``POLL_INTERVAL_S *
MISSES_BEFORE_LOST + POLL_TIMEOUT_S + LIVE_STOP_TIMEOUT_S + DRAIN_TIMEOUT_S``
(21 s) plus the lease release; typically 4 to 7 s.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from matforge.flows.server import api_healthy

POLL_INTERVAL_S = 2.0
"""Seconds between the starts of two health checks."""
POLL_TIMEOUT_S = 2.0
"""How long one health check waits for an answer."""
MISSES_BEFORE_LOST = 3
"""Health checks in a row refused (nothing listens at the server's port) after which the
server counts as lost."""
SILENT_BEFORE_LOST_S = 60.0
"""Seconds of health checks that time out (a server that listens but does not answer,
e.g. one too loaded to answer in time) after which the server counts as lost."""
STARTUP_GRACE_S = 60.0
"""How long a server that has not answered yet (still starting) may take before it counts
as lost."""
DRAIN_TIMEOUT_S = 10.0
"""How long to wait for evaluations in flight to commit before exiting."""
LIVE_STOP_TIMEOUT_S = 1.0
"""How long to wait for the terminal's progress display to stop before the message."""
EXIT_CODE = 1


def _in_flight() -> int:
    from matforge.engine.loop.round import in_flight

    return in_flight()


def _release_leases() -> None:
    from matforge.engine.loop.lease import release_all

    release_all()


def refused(api_url: str, timeout: float = 2.0) -> bool:
    """Whether nothing listens at the API's host and port (connection refused or no route):
    a dead server, as opposed to a slow one."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(api_url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1",
                                       parts.port or (443 if parts.scheme == "https" else 80)),
                                      timeout=timeout):
            return False
    except (ConnectionRefusedError, socket.gaierror):
        return True
    except OSError as error:  # a timeout: something may be there, too busy to answer
        return not isinstance(error, (TimeoutError, socket.timeout))


def _current_api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ValueError("no Prefect API URL to watch (PREFECT_API_URL is not set)")
    return url


class _PrefectMute(logging.Filter):
    """Drops Prefect's records while the server does not answer: its retries would
    print a stream of connection errors before and around the one message.

    Muted, it also clears :data:`logging.raiseExceptions`, which Prefect's API log
    worker checks before writing its own ``--- Error logging to API ---`` lines.
    """

    def __init__(self) -> None:
        super().__init__()
        self._muted = False
        self._raise_exceptions = logging.raiseExceptions

    @property
    def muted(self) -> bool:
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        if value and not self._muted:
            self._raise_exceptions = logging.raiseExceptions
            logging.raiseExceptions = False
        elif self._muted and not value:
            logging.raiseExceptions = self._raise_exceptions
        self._muted = value

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self._muted and record.name.startswith("prefect"))


def _stream_handlers() -> list[logging.Handler]:
    """Every handler writing to a stream (Prefect's console and debug handlers among them)."""
    loggers = [logging.getLogger()] + [
        logger for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    handlers = []
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler not in handlers:
                handlers.append(handler)
    return handlers


def _real_stderr():
    """``sys.stderr``, or the stream behind it while a rich live display redirects it."""
    stream = sys.stderr
    return getattr(stream, "rich_proxied_file", stream) or sys.__stderr__


def _stop_live_displays(timeout: float) -> None:
    """End rich's live displays (the progress line) so the message lands below them."""
    try:
        from rich import get_console

        lives = list(getattr(get_console(), "_live_stack", ()))
    except Exception:
        return
    if not lives:
        return

    def stop() -> None:
        for live in reversed(lives):
            try:
                live.stop()
            except Exception:
                pass

    thread = threading.Thread(target=stop, name="matforge-live-stop", daemon=True)
    thread.start()
    thread.join(timeout)


class ServerWatchdog:
    """Ends the process with one message when the Prefect API at ``api_url`` stops answering.

    Use it as a context manager around the flow call; leaving the block stops it.
    Until the server has answered once, it counts as starting and is given
    :data:`STARTUP_GRACE_S` before it counts as lost.

    ``healthy``, ``in_flight``, ``release`` and ``exit`` default to the real
    health check, :func:`matforge.engine.loop.round.in_flight`,
    :func:`matforge.engine.loop.lease.release_all` and :func:`os._exit`; tests
    replace them.
    """

    def __init__(
        self,
        api_url: str | None = None,
        *,
        interval: float = POLL_INTERVAL_S,
        timeout: float = POLL_TIMEOUT_S,
        misses: int = MISSES_BEFORE_LOST,
        startup_grace: float = STARTUP_GRACE_S,
        drain_timeout: float = DRAIN_TIMEOUT_S,
        healthy: Callable[..., bool] = api_healthy,
        is_refused: Callable[..., bool] = refused,
        silent_before_lost: float = SILENT_BEFORE_LOST_S,
        in_flight: Callable[[], int] = _in_flight,
        release: Callable[[], None] = _release_leases,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.api_url = api_url
        self.interval = interval
        self.timeout = timeout
        self.misses = misses
        self.startup_grace = startup_grace
        self.drain_timeout = drain_timeout
        self._healthy = healthy
        self._refused = is_refused
        self.silent_before_lost = silent_before_lost
        self._in_flight = in_flight
        self._release = release
        self._exit = exit
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._mute = _PrefectMute()
        self._muted_handlers: list[logging.Handler] = []
        self._thread: threading.Thread | None = None
        self.fired = False

    def __enter__(self) -> ServerWatchdog:
        if self.api_url is None:
            self.api_url = _current_api_url()
        self._stopped.clear()
        self._muted_handlers = _stream_handlers()
        for handler in self._muted_handlers:
            handler.addFilter(self._mute)
        self._thread = threading.Thread(target=self._watch, name="matforge-server-watchdog",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.timeout + 1)
        for handler in self._muted_handlers:
            handler.removeFilter(self._mute)
        self._mute.muted = False

    def _watch(self) -> None:
        started = time.monotonic()
        seen = False
        missed = 0
        last_answer = started
        next_poll = started
        while not self._stopped.wait(max(0.0, next_poll - time.monotonic())):
            next_poll = time.monotonic() + self.interval
            if self._healthy(self.api_url, timeout=self.timeout):
                seen, missed, last_answer = True, 0, time.monotonic()
                self._mute.muted = False
                continue
            # refused: nothing listens, the server is gone; a timeout alone may be load
            missed = missed + 1 if self._refused(self.api_url, timeout=self.timeout) else 0
            silent = time.monotonic() - last_answer >= self.silent_before_lost
            if not seen and time.monotonic() - started < self.startup_grace:
                continue  # a server still starting up
            if missed or silent:
                self._mute.muted = True
            if missed >= self.misses or silent:
                with self._lock:
                    if self._stopped.is_set():
                        return  # the run ended normally meanwhile
                    self.fired = True
                self._stop_run(seen)
                return

    def _stop_run(self, seen: bool) -> None:
        """Say why, let evaluations in flight commit, free the campaign, and exit."""
        _stop_live_displays(LIVE_STOP_TIMEOUT_S)
        what = "lost the Prefect server" if seen else "the Prefect server does not answer"
        stream = _real_stderr()
        try:
            print(f"matforge: error: {what} at {self.api_url}; evaluations finished so far "
                  "are stored; run the same command again to continue", file=stream, flush=True)
        except Exception:
            pass
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            try:
                if self._in_flight() <= 0:
                    break
            except Exception:
                break
            time.sleep(0.1)
        try:
            self._release()
        except Exception:
            pass  # the lease then expires on its own
        for out in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, stream):
            try:
                out.flush()
            except Exception:
                pass
        self._exit(EXIT_CODE)


def watch_server(api_url: str | None = None, **options) -> ServerWatchdog:
    """A :class:`ServerWatchdog` on ``api_url`` (default: Prefect's current API URL)."""
    return ServerWatchdog(api_url, **options)
