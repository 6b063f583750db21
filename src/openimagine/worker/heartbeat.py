"""A running task's heartbeat: progress written as it moves, the lease renewed on
schedule, and the engine stopped when the lease turns out to be someone else's.

One decision for both ways of waiting: the embedded pool's coroutine and the
Celery worker's thread each call ``due()`` every ``PROGRESS_TICK`` and run the
blocking ``beat()`` when it says so.
"""

from __future__ import annotations

import logging
import threading
import time

from openimagine.services import lifecycle
from openimagine.settings import Settings
from openimagine.store.db import Database

log = logging.getLogger("openimagine.worker")

# How often a running task's progress is written (the lease on its own
# schedule, every ``heartbeat_seconds``).
PROGRESS_TICK = 0.5


class Progress:
    """Written by the engine thread, read by the heartbeat (coroutine or thread)."""

    def __init__(self) -> None:
        self.value = 0

    def report(self, fraction: float) -> None:
        self.value = int(max(0.0, min(1.0, fraction)) * 99)


class Heartbeat:
    def __init__(self, settings: Settings, db: Database, claim: lifecycle.Claim,
                 cancelled: threading.Event) -> None:
        self.settings = settings
        self.db = db
        self.claim = claim
        self.cancelled = cancelled
        self.progress = Progress()
        self._written = 0
        self._next_lease = time.monotonic() + settings.heartbeat_seconds

    def due(self) -> bool:
        """True when progress moved or the lease needs renewing (marks it done)."""
        now = time.monotonic()
        if self.progress.value == self._written and now < self._next_lease:
            return False
        self._written = self.progress.value
        self._next_lease = now + self.settings.heartbeat_seconds
        return True

    def beat(self) -> None:
        """Renew the lease with the progress; blocking. A lost lease stops the engine."""
        try:
            ours = lifecycle.renew(self.db, self.claim, lease_seconds=self.settings.lease_seconds,
                                   progress=self._written)
        except Exception:
            log.exception("heartbeat failed for %s", self.claim.task_id)
            return
        if not ours:
            log.warning("task %s: lease lost; stopping its engine", self.claim.task_id)
            self.cancelled.set()
