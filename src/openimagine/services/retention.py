"""Retention: a finished task's stored files go ``OPENIMAGINE_RETENTION_DAYS`` after it
finished; its row stays.

The workers' janitor (``Janitor``: the embedded pool runs one, and so does every
Celery worker's sweeper) takes finished tasks whose files are older than the
retention, oldest first and in batches, deletes their videos, stills and stored
inputs through the storage (a folder or S3; a file already gone is fine), and
only then sets their ``files_expired_at``. Their status answers ``response: []``
with ``"files_expired": true``; the OpenAI face's ``expires_at`` is when the
files go (``expires_at``).

Deleting before marking is what makes it safe to stop anywhere: a process killed
mid-batch, or a deletion that fails (the bucket unreachable), leaves those tasks
unmarked, and a later round deletes what is left and marks them. Several workers
may run it at once: two that pick the same task both delete its files (the second
finds them gone) and the first mark wins; on PostgreSQL an advisory lock lets one
janitor at a time run a round, so they rarely do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from openimagine.services.tasks import stored_keys
from openimagine.storage import Storage
from openimagine.store.db import Database, Record, rows_changed
from openimagine.store.models import Task
from openimagine.timeutil import as_utc, utcnow

log = logging.getLogger("openimagine.worker")

# Tasks claimed per transaction, and at most per round: a round stays short when
# retention is first turned on over a long history; the next round goes on at once.
BATCH = 100
ROUND_LIMIT = 500
# The PostgreSQL advisory lock of a janitor's round (any constant key of our own).
JANITOR_LOCK = 0x6F696A61


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
    oldest first; how many tasks this call marked expired."""
    now = utcnow() if now is None else now
    with _one_janitor(db) as ours:
        if not ours:
            return 0  # another worker's janitor is running a round
        done = 0
        while done < limit:
            wanted = min(batch, limit - done)
            due = _due(db, now - retention, wanted)
            deleted: list[str] = []
            try:
                for task in due:
                    for key in stored_keys(task):
                        storage.delete(key)
                    deleted.append(task.id)
            finally:  # a failure keeps the rest unmarked, for a later round
                done += _mark(db, deleted, now)
            if len(due) < wanted:
                break
        return done


@contextmanager
def _one_janitor(db: Database) -> Iterator[bool]:
    """On PostgreSQL, whether this janitor holds the round's advisory lock (held on
    a connection of its own until the round ends); elsewhere always True."""
    if db.is_sqlite:
        yield True
        return
    with db.sql.connect() as connection:
        ours = bool(connection.scalar(select(func.pg_try_advisory_lock(JANITOR_LOCK))))
        try:
            yield ours
        finally:
            if ours:
                connection.scalar(select(func.pg_advisory_unlock(JANITOR_LOCK)))
            connection.commit()


def _due(db: Database, cutoff: datetime, count: int) -> Sequence[Record]:
    # Reads the partial index ``tasks_files_kept``. ``finished_at`` is set only when
    # a task ends (completed, or failed: cancelled tasks too) and never again.
    with db.read() as session:
        return session.execute(
            select(Task.id, Task.outputs, Task.images)
            .where(Task.files_expired_at.is_(None), Task.finished_at < cutoff)
            .order_by(Task.finished_at)
            .limit(count)
        ).all()


def _mark(db: Database, ids: list[str], now: datetime) -> int:
    """Mark ``ids`` expired; how many this call marked (not another janitor before)."""
    if not ids:
        return 0
    with db.write() as session:
        return rows_changed(
            session.execute(
                update(Task)
                .where(Task.id.in_(ids), Task.files_expired_at.is_(None))
                .values(files_expired_at=now)
                .execution_options(synchronize_session=False)
            )
        )


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
