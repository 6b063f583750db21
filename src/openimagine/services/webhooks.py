"""Webhooks (Standard Webhooks): an account's endpoints and default secret, the
outbox written in the transaction that finishes a task, claims of due
deliveries, and the delivery log. Sending is ``worker/deliverer.py``.

A task's end makes one event (``task.*`` for a task of ``/v1/generate``,
``video.*`` for one of ``/v1/videos``) and one delivery row per receiver: each
of the account's endpoints that takes that event type, and the task's own
callback URL. The rows are written by ``enqueue`` inside the transaction that
writes the task's final state, so no end goes unannounced however a process
dies. Any process may claim a due row (one atomic UPDATE, ``SKIP LOCKED`` on
PostgreSQL) under a lease; the lease, not a lock, keeps two processes from
sending the same try, and a process that dies mid-send leaves a row that is
due again when its lease runs out (at least once).
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openimagine.errors import AccountNotFound, Conflict, InvalidRequest, NotFound
from openimagine.inputs.fetch import is_public_address
from openimagine.inputs.refs import url_problem as http_url_problem
from openimagine.store.db import Database, rows_changed
from openimagine.store.models import (
    Account,
    DeliveryStatus,
    Task,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookSecret,
)
from openimagine.timeutil import as_utc, rfc3339, utcnow

EVENT_TYPES = ("task.completed", "task.failed", "video.completed", "video.failed")
# ``tasks.face`` of a task made on the OpenAI face (``/v1/videos``).
OPENAI_FACE = "openai"
# The name of the per-task callbacks in the API (``/v1/webhooks/default/...``).
DEFAULT = "default"
MAX_ENDPOINTS = 20
MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
# After a rotation the previous default secret signs too, for this long.
ROTATION_OVERLAP = timedelta(days=1)
# The longest wait a receiver's Retry-After may ask for (the schedule's own longest).
MAX_RETRY_AFTER = 86400.0


def new_secret() -> str:
    """``whsec_`` and the base64 of 32 random bytes (the key Standard Webhooks signs with)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def event_type(face: str | None, status: str) -> str:
    return f"{'video' if face == OPENAI_FACE else 'task'}.{status}"


# --- URLs -----------------------------------------------------------------------------


def url_problem(url: object, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot receive webhooks, or None. Its shape (the same rules as an
    image URL), and a literal address the SSRF policy refuses; names are resolved
    and checked at each try."""
    if not isinstance(url, str) or not url:
        return "must be an http(s) URL"
    if url.lower().startswith("data:"):
        return "must be an http(s) URL"
    if len(url) > MAX_URL_LENGTH:  # shorter than an image URL may be: it is stored per task
        return f"must be at most {MAX_URL_LENGTH} characters"
    problem = http_url_problem(url)
    if problem:
        return problem
    if not allow_private:
        try:
            address = ipaddress.ip_address(urlsplit(url).hostname or "")
        except ValueError:
            return None
        if not is_public_address(address):
            return "must not point at a loopback, private or link-local address"
    return None


def check_url(url: object, field: str, *, allow_private: bool) -> str:
    """``url`` as a webhook receiver, or ``InvalidRequest`` naming ``field``."""
    problem = url_problem(url, allow_private=allow_private)
    if problem:
        raise InvalidRequest(f"{field} {problem}")
    assert isinstance(url, str)
    return url


def check_events(events: object) -> list[str]:
    """The event types asked for (None: all of them), or ``InvalidRequest``."""
    if events is None:
        return list(EVENT_TYPES)
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(event, str) for event in events)
    ):
        raise InvalidRequest(
            "events must be a non-empty array of event types: " + ", ".join(EVENT_TYPES)
        )
    unknown = [event for event in events if event not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"Unknown event type {unknown[0]!r}: use " + ", ".join(EVENT_TYPES))
    return [event for event in EVENT_TYPES if event in events]


# --- endpoints and secrets ------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    events: list[str]
    created_at: datetime
    disabled_at: datetime | None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "created_at": rfc3339(self.created_at),
            # A receiver that answered 410 Gone: nothing more is sent to it.
            "disabled": self.disabled_at is not None,
        }


def _endpoint(row: WebhookEndpoint) -> Endpoint:
    return Endpoint(row.id, row.url, list(row.events), row.created_at, row.disabled_at)


def account_id(db: Database, name: str) -> int:
    """The id of the account called ``name`` (the CLI names accounts)."""
    with db.read() as session:
        found = session.scalar(select(Account.id).where(Account.name == name))
    if found is None:
        raise AccountNotFound(f"no account named {name!r}")
    return found


def add_endpoint(
    db: Database, account: int, url: str, events: Sequence[str]
) -> tuple[Endpoint, str]:
    """A new endpoint and its secret (shown to the caller this once)."""
    secret = new_secret()
    with db.write() as session:
        count = len(
            session.scalars(
                select(WebhookEndpoint.id).where(
                    WebhookEndpoint.account_id == account, WebhookEndpoint.deleted_at.is_(None)
                )
            ).all()
        )
        if count >= MAX_ENDPOINTS:
            raise Conflict(
                f"An account may have at most {MAX_ENDPOINTS} webhook endpoints; remove one first"
            )
        row = WebhookEndpoint(
            id="wh_" + secrets.token_hex(8),
            account_id=account,
            url=url,
            events=list(events),
            secret=secret,
            created_at=utcnow(),
        )
        session.add(row)
    return _endpoint(row), secret


def list_endpoints(db: Database, account: int) -> list[Endpoint]:
    with db.read() as session:
        rows = session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.account_id == account, WebhookEndpoint.deleted_at.is_(None))
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        ).all()
    return [_endpoint(row) for row in rows]


def _own_endpoint(session: Session, account: int, endpoint_id: str) -> WebhookEndpoint:
    row = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id,
            WebhookEndpoint.account_id == account,
            WebhookEndpoint.deleted_at.is_(None),
        )
    )
    if row is None:
        raise NotFound(f"No webhook endpoint '{endpoint_id}'")
    return row


def _stop_endpoint(session: Session, endpoint_id: str) -> None:
    """Nothing more goes to the endpoint: its waiting deliveries are cancelled."""
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.CANCELLED, next_attempt_at=None, lease_owner=None)
    )


def remove_endpoint(db: Database, account: int, endpoint_id: str) -> None:
    """Remove the account's endpoint (``NotFound`` if it has none by that id); its
    waiting deliveries are cancelled, its log is kept."""
    with db.write() as session:
        row = _own_endpoint(session, account, endpoint_id)
        row.deleted_at = utcnow()
        _stop_endpoint(session, endpoint_id)


def default_secret(db: Database, account: int, *, rotate: bool = False) -> str:
    """The account's default secret (made on first use); ``rotate``: a new one, the
    old one still signing for ``ROTATION_OVERLAP``."""
    for _ in range(2):
        with db.write() as session:
            row = session.get(WebhookSecret, account)
            if row is not None and not rotate:
                return row.secret
            if row is not None:
                row.previous_secret, row.secret = row.secret, new_secret()
                row.rotated_at = utcnow()
                return row.secret
        try:
            with db.write() as session:
                secret = new_secret()
                session.add(WebhookSecret(account_id=account, secret=secret, created_at=utcnow()))
            return secret
        except IntegrityError:
            continue  # made at the same moment by another request: read (or rotate) it
    raise AssertionError("unreachable")


def signing_secrets(db: Database, due: Due) -> list[str] | None:
    """The secrets that sign ``due`` (the default secret, and the previous one for a
    day after a rotation); None when its endpoint is gone or disabled."""
    if due.endpoint_id is None:
        with db.read() as session:
            row = session.get(WebhookSecret, due.account_id)
        if row is None:  # never asked for yet: made now, so its owner can read it later
            return [default_secret(db, due.account_id)]
        keys = [row.secret]
        if (
            row.previous_secret
            and row.rotated_at is not None
            and (as_utc(row.rotated_at) > utcnow() - ROTATION_OVERLAP)
        ):
            keys.append(row.previous_secret)
        return keys
    with db.read() as session:
        endpoint = session.get(WebhookEndpoint, due.endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None or endpoint.disabled_at is not None:
        return None
    return [endpoint.secret]


# --- the outbox -----------------------------------------------------------------------


def enqueue(session: Session, task_id: str, status: str) -> int:
    """Write the deliveries announcing that ``task_id`` ended with ``status``
    (``completed`` or ``failed``), in the caller's transaction; how many."""
    task = session.execute(
        select(Task.account_id, Task.face, Task.callback_url).where(Task.id == task_id)
    ).one()
    kind = event_type(task.face, status)
    targets: list[tuple[str | None, str]] = [
        (row.id, row.url)
        for row in session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.events).where(
                WebhookEndpoint.account_id == task.account_id,
                WebhookEndpoint.deleted_at.is_(None),
                WebhookEndpoint.disabled_at.is_(None),
            )
        )
        if kind in row.events
    ]
    if task.callback_url:
        targets.append((None, task.callback_url))
    now = utcnow()
    event_id = "evt_" + secrets.token_hex(16)
    for endpoint_id, url in targets:
        session.add(
            WebhookDelivery(
                event_id=event_id,
                event_type=kind,
                account_id=task.account_id,
                task_id=task_id,
                endpoint_id=endpoint_id,
                url=url,
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    return len(targets)


@dataclass(frozen=True)
class Due:
    """A delivery claimed for one try."""

    id: int
    event_id: str
    event_type: str
    account_id: int
    task_id: str
    endpoint_id: str | None
    url: str
    created_at: datetime
    attempt: int
    owner: str


def _due(now: datetime, first_delay: float) -> Any:
    # The first try waits ``first_delay`` after the task's end; later ones are due at
    # their ``next_attempt_at``, which the try before set.
    if not first_delay:
        return WebhookDelivery.next_attempt_at <= now
    return or_(
        and_(WebhookDelivery.attempts > 0, WebhookDelivery.next_attempt_at <= now),
        WebhookDelivery.next_attempt_at <= now - timedelta(seconds=first_delay),
    )


def has_due(db: Database, first_delay: float = 0.0) -> bool:
    """Whether some delivery is due: a read, so idle processes never take SQLite's
    write lock to find nothing."""
    with db.connect() as connection:
        return (
            connection.execute(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.status == DeliveryStatus.PENDING, _due(utcnow(), first_delay)
                )
                .limit(1)
            ).first()
            is not None
        )


def claim_due(
    db: Database, *, owner: str, lease_seconds: float, first_delay: float = 0.0
) -> Due | None:
    """Take the longest-due delivery for one try, with one atomic statement; while
    the lease lasts no other process takes it."""
    now = utcnow()
    due = (WebhookDelivery.status == DeliveryStatus.PENDING, _due(now, first_delay))
    candidate = (
        select(WebhookDelivery.id)
        .where(*due)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == candidate.scalar_subquery(), *due)
        .values(
            attempts=WebhookDelivery.attempts + 1,
            lease_owner=owner,
            next_attempt_at=now + timedelta(seconds=lease_seconds),
        )
        .returning(
            WebhookDelivery.id,
            WebhookDelivery.event_id,
            WebhookDelivery.event_type,
            WebhookDelivery.account_id,
            WebhookDelivery.task_id,
            WebhookDelivery.endpoint_id,
            WebhookDelivery.url,
            WebhookDelivery.created_at,
            WebhookDelivery.attempts,
        )
    )
    with db.write() as session:
        row = session.execute(statement).first()
    if row is None:
        return None
    return Due(
        row.id,
        row.event_id,
        row.event_type,
        row.account_id,
        row.task_id,
        row.endpoint_id,
        row.url,
        as_utc(row.created_at),
        row.attempts,
        owner,
    )


@dataclass(frozen=True)
class Outcome:
    """One try: the HTTP status (None: no answer), how long it took, why it failed."""

    status_code: int | None
    latency_ms: int
    error: str | None = None
    # Seconds the receiver asked us to wait (``Retry-After``).
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def record(
    db: Database, due: Due, outcome: Outcome, *, schedule: Sequence[float], at: datetime
) -> str | None:
    """Log the try and set what comes next: delivered, another try after the
    schedule's next wait (longer if the receiver asked), or failed once the schedule
    is spent or the receiver answered 410 (which also disables its endpoint).
    Returns the delivery's status; None when the try was no longer this process's
    to decide (its lease ran out and another process took the delivery over)."""
    now = utcnow()
    next_at: datetime | None = None
    if outcome.delivered:
        status = DeliveryStatus.DELIVERED
    elif outcome.status_code == 410 or due.attempt >= len(schedule):
        status = DeliveryStatus.FAILED
    else:
        status = DeliveryStatus.PENDING
        wait = schedule[due.attempt]
        if outcome.retry_after is not None:
            wait = max(wait, min(outcome.retry_after, MAX_RETRY_AFTER))
        next_at = now + timedelta(seconds=wait)
    with db.write() as session:
        session.add(
            WebhookAttempt(
                delivery_id=due.id,
                attempt=due.attempt,
                at=at,
                status_code=outcome.status_code,
                latency_ms=outcome.latency_ms,
                error=(outcome.error or None) and outcome.error[:300],
                next_attempt_at=next_at,
            )
        )
        # Fenced: a process whose lease ran out (another took the row over) only logs.
        changed = rows_changed(
            session.execute(
                update(WebhookDelivery)
                .where(*_still_held(due), WebhookDelivery.attempts == due.attempt)
                .values(status=status, next_attempt_at=next_at, lease_owner=None)
            )
        )
        if outcome.status_code == 410 and due.endpoint_id is not None:
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == due.endpoint_id, WebhookEndpoint.disabled_at.is_(None))
                .values(disabled_at=now)
            )
            _stop_endpoint(session, due.endpoint_id)
    return status if changed == 1 else None


def _still_held(due: Due) -> tuple[ColumnElement[bool], ...]:
    """The fence of every write after a claim: still this process's, still pending."""
    return (
        WebhookDelivery.id == due.id,
        WebhookDelivery.lease_owner == due.owner,
        WebhookDelivery.status == DeliveryStatus.PENDING,
    )


def cancel(db: Database, due: Due) -> None:
    """Drop a claimed delivery whose endpoint is gone or disabled, unsent."""
    with db.write() as session:
        session.execute(
            update(WebhookDelivery)
            .where(*_still_held(due))
            .values(status=DeliveryStatus.CANCELLED, next_attempt_at=None, lease_owner=None)
        )


# --- the log --------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return rfc3339(value) if value is not None else None


def deliveries(
    db: Database,
    account: int,
    endpoint_id: str | None,
    *,
    limit: int = 20,
    after: int | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """The deliveries to one of the account's endpoints (``DEFAULT``: to its tasks'
    callback URLs; None: to every receiver), newest first, each with its tries; and
    whether more follow. ``after``: the id of the last delivery of the page before."""
    query = select(WebhookDelivery).where(WebhookDelivery.account_id == account)
    with db.read() as session:
        if endpoint_id == DEFAULT:
            query = query.where(WebhookDelivery.endpoint_id.is_(None))
        elif endpoint_id is not None:
            _own_endpoint(session, account, endpoint_id)
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        if after is not None:
            query = query.where(WebhookDelivery.id < after)
        rows = session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)).all()
        page = rows[:limit]
        tries: dict[int, list[dict[str, Any]]] = {row.id: [] for row in page}
        if page:
            for attempt in session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id.in_(list(tries)))
                .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt, WebhookAttempt.id)
            ):
                tries[attempt.delivery_id].append(
                    {
                        "attempt": attempt.attempt,
                        "at": _time(attempt.at),
                        "status_code": attempt.status_code,
                        "latency_ms": attempt.latency_ms,
                        "error": attempt.error,
                        "next_attempt_at": _time(attempt.next_attempt_at),
                    }
                )
    return [
        {
            "id": row.id,
            "event_id": row.event_id,
            "type": row.event_type,
            "task_id": row.task_id,
            "url": row.url,
            "status": row.status,
            "created_at": _time(row.created_at),
            "next_attempt_at": _time(row.next_attempt_at)
            if row.status == DeliveryStatus.PENDING
            else None,
            "attempts": tries[row.id],
        }
        for row in page
    ], len(rows) > limit
