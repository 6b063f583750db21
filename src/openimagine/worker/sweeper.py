"""The sweeper keeps the queues honest against the database, every few seconds:
a thread in every Celery worker process, a coroutine's rounds in the embedded
pool (which has no messages to lose, so step 2 is the Celery workers' only).

1. Expired leases (a worker died mid-task) go back to pending and are
   published again; tasks out of attempts fail and are refunded
   (``lifecycle.reap_expired``). Expired idempotency keys are forgotten.
2. Pending tasks whose message may have been lost (the API could not publish,
   the broker lost it) are published again, when
   - the model's queue holds fewer ready messages than there are pending
     tasks (so a long, healthy queue is never flooded with duplicates), and
   - the task has waited ``redispatch_seconds`` since it was last dispatched
     (one atomic UPDATE marks it, so sweepers on several machines do not both
     publish it).

3. With ``OPENIMAGINE_RETENTION_DAYS``, the files of tasks finished longer ago
   are deleted (``retention.Janitor``: at most every minute).

Every step is safe to run from every worker at once, and a duplicate message
costs one claim that finds nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from openimagine.services import idempotency, lifecycle, retention
from openimagine.settings import Settings
from openimagine.storage import Storage
from openimagine.store.db import Database
from openimagine.worker.dispatch import Dispatcher

log = logging.getLogger("openimagine.worker")


def sweep_interval(settings: Settings) -> float:
    """Often enough to notice an expired lease soon after it expires, at most every 5 s."""
    return max(0.2, min(settings.heartbeat_seconds, 5.0))


class Sweeper:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        dispatcher: Dispatcher,
        queue_depth: Callable[[str], int | None] | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.dispatcher = dispatcher
        self.queue_depth = queue_depth
        self.janitor = (
            retention.Janitor(db, storage, settings.retention) if storage is not None else None
        )

    def sweep(self) -> tuple[int, int, int]:
        """One round; returns (re-queued, failed, re-published)."""
        requeued, failed = lifecycle.reap_expired(
            self.db, max_attempts=self.settings.max_attempts, on_requeue=self.dispatcher.notify
        )
        idempotency.forget_expired(self.db)
        republished = 0 if self.queue_depth is None else self._republish(self.queue_depth)
        if requeued or failed or republished:
            log.warning(
                "sweeper: %d expired lease(s) re-queued, %d failed, %d pending task(s) "
                "published again",
                requeued,
                failed,
                republished,
            )
        return requeued, failed, republished

    def _republish(self, queue_depth: Callable[[str], int | None]) -> int:
        republished = 0
        for model, pending in lifecycle.pending_by_model(self.db).items():
            ready = queue_depth(model)
            # Unknown depth (broker unreachable): assume every message may be missing.
            missing = pending if ready is None else pending - ready
            stale = lifecycle.take_stale_pending(
                self.db, model=model, older_than=self.settings.redispatch_seconds, limit=missing
            )
            for task_id in stale:
                self.dispatcher.notify(task_id, model)
            republished += len(stale)
        return republished

    def run(self, stop: threading.Event) -> None:
        interval = sweep_interval(self.settings)
        while True:
            try:
                self.sweep()
            except Exception:
                log.exception("sweeper failed; trying again")
            try:
                if self.janitor is not None:
                    self.janitor.run_if_due()
            except Exception:
                log.exception("retention janitor failed; trying again")
            if stop.wait(interval):
                return
