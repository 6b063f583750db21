"""``Idempotency-Key`` on the submit routes (Stripe's scheme): a retried submit
never creates or bills a second task.

- ``begin`` claims the key for the account with one INSERT (the unique
  constraint decides between concurrent requests). A key already used for the
  same request answers its task again (a replay); for another request, 422;
  while the first request still runs, 409 (clients retry).
- The task is recorded on the key by ``record`` inside the transaction that
  creates the task and debits it, so "task created" and "key answered" commit
  together: a crash leaves either both or neither.
- A request that fails (402, 400 after parsing, ...) gives the key back
  (``abandon``): nothing was created, so a retry may try again.
- Keys older than ``KEEP`` are forgotten: the key may be used afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openimagine.errors import Conflict, IdempotencyKeyReused, InvalidRequest
from openimagine.store.db import Database, rows_changed
from openimagine.store.models import IdempotencyKey
from openimagine.timeutil import utcnow

KEEP = timedelta(hours=24)
REPLAYED_HEADER = "Idempotent-Replayed"
# A key whose first request left no answer this long after it began was
# abandoned by a process that died between claiming it and creating the task.
ABANDONED_AFTER = timedelta(minutes=5)
MAX_KEY = 255


@dataclass(frozen=True)
class Claimed:
    """The key, held by this request until ``record`` or ``abandon``."""

    row_id: int


@dataclass(frozen=True)
class Replay:
    """The key was used for this very request before: its task."""

    task_id: str


def check_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_KEY or not (value.isascii() and value.isprintable()):
        raise InvalidRequest(
            f"The Idempotency-Key header must be 1 to {MAX_KEY} printable ASCII characters"
        )
    return value


def fingerprint(route: str, fields: dict[str, Any], uploads: Sequence[bytes] = ()) -> str:
    """The request as parsed, not as bytes: a retry that encodes the same fields
    differently (another multipart boundary, other key order) is the same request."""
    digest = hashlib.sha256(route.encode())
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for data in uploads:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def begin(
    db: Database, account_id: int, key: str, route: str, request_hash: str
) -> Claimed | Replay:
    now = utcnow()
    with db.write() as session:
        # Forget this account's key if it is older than the retention.
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.account_id == account_id,
                IdempotencyKey.key == key,
                IdempotencyKey.created_at < now - KEEP,
            )
        )
    try:
        with db.write() as session:
            row = IdempotencyKey(
                account_id=account_id,
                key=key,
                route=route,
                request_hash=request_hash,
                task_id=None,
                created_at=now,
            )
            session.add(row)
            session.flush()
            return Claimed(row.id)
    except IntegrityError:
        pass  # the key is taken: by this request before, or by another one
    with db.write() as session:
        found = session.execute(
            select(IdempotencyKey).where(
                IdempotencyKey.account_id == account_id, IdempotencyKey.key == key
            )
        ).scalar_one()
        if found.route != route or found.request_hash != request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with another "
                "request; use a new key for a new request"
            )
        if found.task_id is not None:
            return Replay(found.task_id)
        taken_over = session.execute(
            update(IdempotencyKey)
            .where(
                IdempotencyKey.id == found.id,
                IdempotencyKey.task_id.is_(None),
                IdempotencyKey.created_at < now - ABANDONED_AFTER,
            )
            .values(created_at=now)
            # Decided by the database alone: SQLite hands back naive datetimes,
            # which Python cannot compare with ``now`` to sync the session.
            .execution_options(synchronize_session=False)
        )
        if rows_changed(taken_over) == 1:
            return Claimed(found.id)
    raise Conflict(
        "A request with this Idempotency-Key is still being handled; retry it in a moment"
    )


def record(session: Session, claimed: Claimed, task_id: str) -> None:
    """In the transaction that creates ``task_id``: the key's answer."""
    session.execute(
        update(IdempotencyKey).where(IdempotencyKey.id == claimed.row_id).values(task_id=task_id)
    )


def abandon(db: Database, claimed: Claimed) -> None:
    """The request failed before creating a task: a retry may use the key again."""
    with db.write() as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.id == claimed.row_id, IdempotencyKey.task_id.is_(None)
            )
        )


def forget_expired(db: Database, *, limit: int = 1000) -> int:
    """Delete up to ``limit`` keys past the retention; the workers' reapers call it
    every round. An idle round only reads (no write lock on SQLite)."""
    with db.read() as session:
        ids = list(
            session.scalars(
                select(IdempotencyKey.id)
                .where(IdempotencyKey.created_at < utcnow() - KEEP)
                .limit(limit)
            )
        )
    if ids:
        with db.write() as session:
            session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(ids)))
    return len(ids)


@dataclass(frozen=True)
class IdempotentRequest:
    """A submit that came with an ``Idempotency-Key``."""

    key: str
    route: str
    request_hash: str
