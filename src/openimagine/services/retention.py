"""Retention: a finished task's stored files go ``OPENIMAGINE_RETENTION_DAYS`` after it
finished; its row stays.

The workers' janitor (``Janitor``: the embedded pool runs one, and so does every
Celery worker's sweeper) claims finished tasks whose files are older than the
retention, oldest first and in batches, by setting ``files_expired_at`` in one
transaction, then deletes their videos, stills and stored inputs through the
storage (a folder or S3; a file already gone is fine). Their status answers
``response: []`` with ``"files_expired": true``; the OpenAI face's ``expires_at``
is when the files go (``expires_at``).

Safe from every worker at once: a claim changes only rows whose
``files_expired_at`` is still NULL (skipping rows another claimer has locked, on
PostgreSQL), so one claimer deletes each task's files. A deletion that fails (the
bucket unreachable) gives its tasks back for a later round; a process killed
between a claim and its deletions leaves those files behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update

from openimagine.services.tasks import stored_keys
from openimagine.storage import Storage
from openimagine.store.db import Database, Record
from openimagine.store.models import Task
from openimagine.timeutil import as_utc, utcnow

log = logging.getLogger("openimagine.worker")

# Tasks claimed per transaction, and at most per round: a round stays short when
# retention is first turned on over a long history; the next round goes on at once.
BATCH = 100
ROUND_LIMIT = 500


def expires_at(
    finished_at: datetime | None, files_expired_at: datetime | None, retention: timedelta | None
) -> datetime | None:
    """When a task's files are (or were) deleted; None while it runs or when kept forever."""
    if files_expired_at is not None:
        return as_utc(files_expired_at)
    if retention is None or finished_at is None:
        return None
    return as_utc(finished_at) + retention


def expire_files(
    db: Database,
    storage: Storage,
    *,
    retention: timedelta,
    now: datetime | None = None,
    limit: int = ROUND_LIMIT,
    batch: int = BATCH,
) -> int:
    """Delete the files of up to ``limit`` tasks finished before ``now - retention``,
    oldest first; how many tasks' files went."""
    now = utcnow() if now is None else now
    done = 0
    while done < limit:
        wanted = min(batch, limit - done)
        claimed = _claim(db, now - retention, now, wanted)
        _delete(db, storage, claimed, now)
        done += len(claimed)
        if len(claimed) < wanted:
            break
    return done


def _claim(db: Database, cutoff: datetime, now: datetime, count: int) -> Sequence[Record]:
    # Two statements, not UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP
    # LOCKED): PostgreSQL may run that subquery more than once (``take_stale_pending``).
    # The SELECT reads the partial index ``tasks_files_kept``. ``finished_at`` is set
    # only when a task ends (completed, or failed: cancelled tasks too) and never again.
    with db.write() as session:
        ids = list(
            session.scalars(
                select(Task.id)
                .where(Task.files_expired_at.is_(None), Task.finished_at < cutoff)
                .order_by(Task.finished_at)
                .limit(count)
                .with_for_update(skip_locked=True)
            )
        )
        if not ids:
            return []
        return session.execute(
            update(Task)
            .where(Task.id.in_(ids), Task.files_expired_at.is_(None))
            .values(files_expired_at=now)
            .returning(Task.id, Task.outputs, Task.images)
            .execution_options(synchronize_session=False)
        ).all()


def _delete(db: Database, storage: Storage, claimed: Sequence[Record], now: datetime) -> None:
    for done, task in enumerate(claimed):
        try:
            for key in stored_keys(task):
                storage.delete(key)
        except Exception:
            # Give this task and the rest back: a later round deletes their files.
            back = [row.id for row in claimed[done:]]
            with db.write() as session:
                session.execute(
                    update(Task)
                    .where(Task.id.in_(back), Task.files_expired_at == now)
                    .values(files_expired_at=None)
                    .execution_options(synchronize_session=False)
                )
            raise


def janitor_interval(retention: timedelta) -> float:
    """Seconds between rounds: a tenth of the retention, at least 1 s, at most a minute."""
    return max(1.0, min(60.0, retention.total_seconds() / 10))


class Janitor:
    """``expire_files`` at most every ``janitor_interval``, at once again after a full
    round (a backlog). Nothing to do without a retention."""

    def __init__(self, db: Database, storage: Storage, retention: timedelta | None) -> None:
        self.db = db
        self.storage = storage
        self.retention = retention
        self.interval = janitor_interval(retention) if retention is not None else 60.0
        self._due = 0.0  # time.monotonic() of the next round

    @property
    def enabled(self) -> bool:
        return self.retention is not None

    def seconds_until_due(self) -> float:
        return max(0.0, self._due - time.monotonic())

    def run_if_due(self) -> int:
        """One round when it is due; how many tasks' files went."""
        started = time.monotonic()
        if self.retention is None or started < self._due:
            return 0
        self._due = started + self.interval  # also after a failure: not in a tight loop
        expired = expire_files(self.db, self.storage, retention=self.retention)
        if expired >= ROUND_LIMIT:
            self._due = started
        if expired:
            log.info("retention: the files of %d finished task(s) deleted", expired)
        return expired
