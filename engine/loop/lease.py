"""Campaign leases: one live run per campaign, taken over only when its owner has died.

A run holds its campaign's lease in the store (``owners`` table: owner id, host,
pid, heartbeat, expiry) and renews it from a heartbeat thread every quarter of
the lease. Claims carry their run's owner id. A second run of the campaign
waits while the lease is live; once the first run ends (and releases it) or
dies (and its lease expires), the waiting run takes the campaign and every
claim still running over. A run that finds its lease taken away (it stalled
past its expiry) stops committing: the store refuses outcomes of claims that
another run owns.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from matforge.engine.store.sql import CampaignStore, Owner


class LeaseLost(RuntimeError):
    """This run's lease expired and another run took the campaign over."""


class CampaignBusy(RuntimeError):
    """Another live run holds the campaign (``owner``)."""

    def __init__(self, name: str, owner: Owner):
        super().__init__(f"campaign {name!r} is being run by {owner.describe()}")
        self.owner = owner


_held: set[Lease] = set()
_held_lock = threading.Lock()


class Lease:
    """The lease of one run on one campaign.

    Parameters
    ----------
    store, campaign_id : the campaign
    seconds : how long the lease lasts without a heartbeat
    config : the run's settings, recorded with the run (secrets redacted)
    """

    def __init__(self, store: CampaignStore, campaign_id: int, seconds: float,
                 config: dict[str, Any] | None = None):
        if not seconds > 0:
            raise ValueError(f"lease seconds must be > 0, got {seconds}")
        self.store = store
        self.campaign_id = campaign_id
        self.seconds = float(seconds)
        self.config = config or {}
        self.id = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: bool = True, on_wait: Callable[[Owner], None] | None = None,
                name: str = "") -> None:
        """Hold the campaign's lease, waiting while another live run holds it.

        ``on_wait`` is called once, with the run that holds it, before the first wait.
        Raises :class:`CampaignBusy` instead of waiting when ``wait`` is False.
        """
        told = False
        while True:
            holder = self.store.acquire(self.campaign_id, self.id, socket.gethostname(),
                                        os.getpid(), self.seconds, self.config)
            if holder is None:
                break
            if not wait:
                raise CampaignBusy(name, holder)
            if on_wait is not None and not told:
                on_wait(holder)
                told = True
            # poll well inside the holder's lease, so a takeover follows its expiry closely
            time.sleep(min(5.0, max(0.2, self.seconds / 8)))
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.id[:8]}",
                                        daemon=True)
        self._thread.start()
        with _held_lock:
            _held.add(self)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                renewed = self.store.renew(self.id, self.seconds)
            except Exception:
                continue  # the store is unreachable for now: try again next beat
            if not renewed:
                self.lost = True
                return

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another run has taken the campaign over."""
        if self.lost:
            raise LeaseLost(f"run {self.id[:8]} lost its lease on campaign {self.campaign_id} "
                            "(it stalled past the lease and another run took over)")

    def release(self, how: str = "finished") -> None:
        """Stop the heartbeat and free the campaign for the next run at once."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with _held_lock:
            _held.discard(self)
        try:
            self.store.release(self.id, how)
        except Exception:
            pass  # the store is gone: the lease expires on its own

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind, error, _tb) -> None:
        if error is None:
            self.release("finished")
        else:
            self.release(f"stopped: {type(error).__name__}: {error}"[:200])


def release_all(how: str = "stopped") -> None:
    """Release every campaign lease this process holds (for a run that must stop now)."""
    with _held_lock:
        leases = list(_held)
    for lease in leases:
        lease.release(how)
