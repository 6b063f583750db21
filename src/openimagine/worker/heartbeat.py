"""A running task's heartbeat: progress written as it moves, the lease renewed on
schedule, and the engine stopped when the lease turns out to be someone else's.

Both workers run a task the same way: ``run_with_heartbeat`` runs the engine in
the calling thread while a heartbeat thread writes progress and renews the
lease every ``PROGRESS_TICK`` as ``Heartbeat.due()`` says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from openimagine.services import lifecycle
from openimagine.settings import Settings
from openimagine.store.db import Database

if TYPE_CHECKING:
    from openimagine.worker.runner import Outcome, Runner

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
    def __init__(
        self, settings: Settings, db: Database, claim: lifecycle.Claim, cancelled: threading.Event
    ) -> None:
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
            ours = lifecycle.renew(
                self.db,
                self.claim,
                lease_seconds=self.settings.lease_seconds,
                progress=self._written,
            )
        except Exception:
            log.exception("heartbeat failed for %s", self.claim.task_id)
            return
        if not ours:
            log.warning("task %s: lease lost; stopping its engine", self.claim.task_id)
            self.cancelled.set()


def run_with_heartbeat(
    runner: Runner,
    claim: lifecycle.Claim,
    cancelled: threading.Event,
    *,
    stopping: threading.Event | None = None,
    on_beat: Callable[[], None] | None = None,
) -> Outcome:
    """``runner.run(claim)`` in this thread, with a heartbeat thread meanwhile that
    writes progress, renews the lease, and stops the engine (cooperatively, through
    ``cancelled``) when the lease turns out to be someone else's or ``stopping`` is
    set (the task is then released). ``on_beat`` runs after each write."""
    finished = threading.Event()
    heartbeat = Heartbeat(runner.settings, runner.db, claim, cancelled)

    def keep_beating() -> None:
        while not finished.wait(PROGRESS_TICK):
            if stopping is not None and stopping.is_set():
                cancelled.set()
            if heartbeat.due():
                heartbeat.beat()
                if on_beat is not None:
                    on_beat()

    beat = threading.Thread(target=keep_beating, name="openimagine-heartbeat", daemon=True)
    beat.start()
    try:
        return runner.run(claim, heartbeat.progress.report, cancelled)
    finally:
        finished.set()
        beat.join()
