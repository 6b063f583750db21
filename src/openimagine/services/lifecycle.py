"""Tasks from the worker's side: claim, heartbeat, finish, fail with refund,
and re-queue of expired leases.

Every write after the claim is fenced by (attempt, lease owner, status), so a
worker whose lease was taken over can write neither a result nor a refund.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.orm import Session

from openimagine.engines.base import EngineFailure
from openimagine.services import ledger, webhooks
from openimagine.store.db import Database, rows_changed
from openimagine.store.models import Account, Task, TaskStatus
from openimagine.timeutil import utcnow

ENGINE_FAILED = EngineFailure.public_message


@dataclass(frozen=True)
class Claim:
    task_id: str
    attempt: int
    owner: str
    account_id: int
    prompt: str
    mode: str
    ratio: str
    images: list[str]
    model: str
    # A relay's upstream jobs from an earlier attempt (see ``save_upstream``).
    upstream: dict | None = None
    # This task's own render options (None: the model's settings).
    variations: int | None = None
    duration: float | None = None
    resolution: int | None = None


def _fenced(claim: Claim):  # type: ignore[no-untyped-def]
    return (
        Task.id == claim.task_id,
        Task.attempts == claim.attempt,
        Task.lease_owner == claim.owner,
        Task.status == TaskStatus.PROCESSING,
    )


# The accounts with pending tasks of a model, found by skipping through the
# ``tasks_queue`` index (model, status, account_id, created_at) one account at
# a time, and among them the one to serve next: fewest tasks running, then the
# one served least recently (never served first), then the oldest waiting
# task. It reads a few index entries per waiting account, never the backlog or
# the history. ``{priority}`` puts plans first when asked.
_NEXT_ACCOUNT = """
WITH RECURSIVE waiting(account_id) AS (
    SELECT (SELECT t.account_id FROM tasks t WHERE t.model = :model AND t.status = 'pending'
            ORDER BY t.account_id LIMIT 1)
  UNION ALL
    SELECT (SELECT t.account_id FROM tasks t
            WHERE t.model = :model AND t.status = 'pending' AND t.account_id > w.account_id
            ORDER BY t.account_id LIMIT 1)
    FROM waiting w WHERE w.account_id IS NOT NULL
)
SELECT w.account_id FROM waiting w JOIN accounts a ON a.id = w.account_id
ORDER BY {priority}a.tasks_processing, a.served_at IS NOT NULL, a.served_at,
         (SELECT t.created_at FROM tasks t WHERE t.model = :model AND t.status = 'pending'
            AND t.account_id = w.account_id ORDER BY t.created_at LIMIT 1),
         w.account_id
LIMIT 1
"""
PLAN_PRIORITY = "CASE a.plan WHEN 'enterprise' THEN 0 WHEN 'pro' THEN 1 ELSE 2 END, "
_NEXT_ACCOUNT_FAIR = text(_NEXT_ACCOUNT.format(priority=""))
_NEXT_ACCOUNT_BY_PLAN = text(_NEXT_ACCOUNT.format(priority=PLAN_PRIORITY))


def claim_next(
    db: Database,
    *,
    owner: str,
    model: str,
    lease_seconds: float,
    task_id: str | None = None,
    plan_priority: bool = False,
) -> Claim | None:
    """Take a pending task of ``model`` (or exactly ``task_id``) with one atomic statement.

    Fair among accounts: the oldest pending task of the account with the fewest
    tasks running (of any model); among those, the account served least recently
    (a worker with one slot has nothing running when it claims: without this
    it would serve the oldest backlog first), then the oldest waiting task. So a
    small account's task starts at the next free slot however long another's
    backlog.
    With ``plan_priority``, enterprise accounts come before pro before free, and
    fairness holds within a plan. The account is chosen in the claim's own
    transaction; its task is taken with ``SKIP LOCKED`` on PostgreSQL, and if
    concurrent claimers hold every one of its tasks, the oldest task of any
    account is taken instead, so a claim never waits and never comes back empty
    while a task is free.
    """
    with db.write() as session:
        if task_id is not None:
            return _claim(session, owner, model, lease_seconds, Task.id == task_id)
        chosen = session.scalar(
            _NEXT_ACCOUNT_BY_PLAN if plan_priority else _NEXT_ACCOUNT_FAIR, {"model": model}
        )
        if chosen is None:
            return None
        return _claim(session, owner, model, lease_seconds, Task.account_id == chosen) or _claim(
            session, owner, model, lease_seconds
        )


def _claim(
    session: Session, owner: str, model: str, lease_seconds: float, *which: ColumnElement[bool]
) -> Claim | None:
    """Claim the oldest pending task of ``model`` that matches ``which``, skipping locked rows."""
    now = utcnow()
    candidate = (
        select(Task.id)
        .where(Task.status == TaskStatus.PENDING, Task.model == model, *which)
        .order_by(Task.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(Task)
        .where(Task.id == candidate.scalar_subquery(), Task.status == TaskStatus.PENDING)
        .values(
            status=TaskStatus.PROCESSING,
            attempts=Task.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Task.started_at, now),
            progress=0,
        )
        .returning(
            Task.id,
            Task.attempts,
            Task.account_id,
            Task.prompt,
            Task.mode,
            Task.ratio,
            Task.images,
            Task.model,
            Task.upstream,
            Task.variations,
            Task.duration,
            Task.resolution,
        )
    )
    row = session.execute(statement).first()
    if row is None:
        return None
    session.execute(update(Account).where(Account.id == row.account_id).values(served_at=now))
    return Claim(
        row.id,
        row.attempts,
        owner,
        row.account_id,
        row.prompt,
        row.mode,
        row.ratio,
        list(row.images or []),
        row.model,
        row.upstream,
        row.variations,
        row.duration,
        row.resolution,
    )


def renew(db: Database, claim: Claim, *, lease_seconds: float, progress: int | None) -> bool:
    """Extend the lease (and record progress); False when the lease is no longer ours."""
    values: dict[str, object] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    if progress is not None:
        values["progress"] = max(0, min(99, progress))
    with db.write() as session:
        return (
            rows_changed(session.execute(update(Task).where(*_fenced(claim)).values(**values))) == 1
        )


def save_upstream(db: Database, claim: Claim, state: dict) -> bool:
    """Record a relay's upstream jobs on the task (before polling them); False if fenced out."""
    with db.write() as session:
        return (
            rows_changed(
                session.execute(update(Task).where(*_fenced(claim)).values(upstream=state))
            )
            == 1
        )


def complete(
    db: Database,
    claim: Claim,
    *,
    outputs: list[str],
    seeds: list[int],
    rendered_by: str | None = None,
    media: dict | None = None,
) -> bool:
    with db.write() as session:
        changed = rows_changed(
            session.execute(
                update(Task)
                .where(*_fenced(claim))
                .values(
                    status=TaskStatus.COMPLETED,
                    outputs=outputs,
                    seeds=seeds,
                    progress=100,
                    rendered_by=rendered_by or claim.model,
                    media=media,
                    finished_at=utcnow(),
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        )
        if changed == 1:  # its webhooks, in the same transaction (the outbox)
            webhooks.enqueue(session, claim.task_id, "completed")
    return changed == 1


def _fail_and_refund(
    session: Session,
    task_id: str,
    account_id: int,
    price: int,
    message: str,
    detail: str,
    *conditions,
) -> bool:  # type: ignore[no-untyped-def]
    changed = rows_changed(
        session.execute(
            update(Task)
            .where(Task.id == task_id, *conditions)
            .values(
                status=TaskStatus.FAILED,
                error_message=message,
                error_detail=detail[:4000],
                consumed_credits=0,
                finished_at=utcnow(),
                lease_owner=None,
                lease_expires_at=None,
            )
        )
    )
    if changed != 1:
        return False
    if price:
        ledger.refund_task(session, account_id, task_id, price)
    webhooks.enqueue(session, task_id, "failed")
    return True


def fail(db: Database, claim: Claim, *, message: str, detail: str) -> bool:
    """Mark the task failed and refund it, in one transaction; False if fenced out."""
    with db.write() as session:
        price = session.scalar(select(Task.price).where(Task.id == claim.task_id)) or 0
        return _fail_and_refund(
            session, claim.task_id, claim.account_id, price, message, detail, *_fenced(claim)[1:]
        )


def release(db: Database, claim: Claim) -> bool:
    """Give an unfinished task back to the queue (graceful shutdown): the attempt is not counted."""
    with db.write() as session:
        return (
            rows_changed(
                session.execute(
                    update(Task)
                    .where(*_fenced(claim))
                    .values(
                        status=TaskStatus.PENDING,
                        attempts=Task.attempts - 1,
                        lease_owner=None,
                        lease_expires_at=None,
                        progress=0,
                    )
                )
            )
            == 1
        )


def reap_expired(
    db: Database, *, max_attempts: int, on_requeue: Callable[[str, str], None] | None = None
) -> tuple[int, int]:
    """Re-queue tasks whose lease expired; fail (and refund) those out of attempts.

    Returns (re-queued, failed). Safe to run from every worker at once: each
    change is conditional on the row still being expired and unchanged.
    ``on_requeue(task_id, model)`` is called after each re-queue commits (the
    Celery workers publish the task again from there).
    """
    now = utcnow()
    with db.read() as session:
        expired = session.execute(
            select(Task.id, Task.attempts, Task.account_id, Task.price, Task.model).where(
                Task.status == TaskStatus.PROCESSING, Task.lease_expires_at < now
            )
        ).all()
    requeued = failed = 0
    for row in expired:
        still_expired = (
            Task.status == TaskStatus.PROCESSING,
            Task.attempts == row.attempts,
            Task.lease_expires_at < now,
        )
        changed = 0
        with db.write() as session:
            if row.attempts >= max_attempts:
                detail = f"lease expired on attempt {row.attempts} of {max_attempts}"
                failed += _fail_and_refund(
                    session,
                    row.id,
                    row.account_id,
                    row.price,
                    ENGINE_FAILED,
                    detail,
                    *still_expired,
                )
            else:
                changed = rows_changed(
                    session.execute(
                        update(Task)
                        .where(Task.id == row.id, *still_expired)
                        .values(
                            status=TaskStatus.PENDING,
                            lease_owner=None,
                            lease_expires_at=None,
                            dispatched_at=now,
                            progress=0,
                        )
                    )
                )
                requeued += changed
        if changed and on_requeue is not None:
            on_requeue(row.id, row.model)
    return requeued, failed


def pending_by_model(db: Database) -> dict[str, int]:
    """How many tasks wait, per model."""
    with db.read() as session:
        rows = session.execute(
            select(Task.model, func.count())
            .where(Task.status == TaskStatus.PENDING)
            .group_by(Task.model)
        ).all()
    return {model: count for model, count in rows}


def take_stale_pending(db: Database, *, model: str, older_than: float, limit: int) -> list[str]:
    """Up to ``limit`` tasks of ``model`` pending for ``older_than`` seconds since they were
    last dispatched, oldest first, marked dispatched now.

    The rows are locked from the SELECT to the commit (skipping rows another
    sweeper holds), so sweepers on several machines never publish the same
    stale task twice in one round. (Two statements, not ``UPDATE ... WHERE id
    IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)``: PostgreSQL may run that
    subquery more than once and update more than ``n`` rows.)
    """
    if limit <= 0:
        return []
    now = utcnow()
    last = func.coalesce(Task.dispatched_at, Task.created_at)
    with db.write() as session:
        ids = list(
            session.scalars(
                select(Task.id)
                .where(
                    Task.status == TaskStatus.PENDING,
                    Task.model == model,
                    last < now - timedelta(seconds=older_than),
                )
                .order_by(last)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if ids:
            session.execute(update(Task).where(Task.id.in_(ids)).values(dispatched_at=now))
    return ids


CANCELLED = "Task cancelled"


def cancel(db: Database, task_id: str, account_id: int) -> bool:
    """Fail the account's unfinished task with ``Task cancelled`` and refund it, in one
    transaction; False when it had finished already (nothing changes). A running
    task's worker finds its lease gone at its next heartbeat and stops its engine
    (a relay stops polling); its late result is fenced out."""
    with db.write() as session:
        price = session.scalar(select(Task.price).where(Task.id == task_id)) or 0
        return _fail_and_refund(
            session,
            task_id,
            account_id,
            price,
            CANCELLED,
            "cancelled by its owner",
            Task.account_id == account_id,
            Task.status.in_((TaskStatus.PENDING, TaskStatus.PROCESSING)),
        )
