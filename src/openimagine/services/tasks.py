"""Tasks from the client's side: submit (debit in the same transaction) and view."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, bindparam, func, select, tuple_, update
from sqlalchemy.orm import Session

from openimagine.errors import NotFound, ServiceUnavailable
from openimagine.services import ledger
from openimagine.services.accounts import Principal
from openimagine.storage import Storage
from openimagine.store.db import Database, Record
from openimagine.store.models import TASK_VIEW_COLUMNS, Task, TaskStatus
from openimagine.timeutil import rfc3339, utcnow

STORED_PREFIX = "stored:"


STILLS = {"thumbnail": "thumbnail.webp", "spritesheet": "spritesheet.jpg"}


def still_key(task_id: str, variant: str) -> str:
    """Where a task's stills (``media/stills.py``) are stored, beside its videos."""
    return f"outputs/{task_id}/{STILLS[variant]}"


def new_task_id() -> str:
    # 128 random bits; the contract asks for at least 96.
    return "task_" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class NewTask:
    prompt: str
    mode: str
    ratio: str
    # http(s) URLs as sent, and ``stored:<key>`` for inputs sent as data URIs.
    images: list[str]
    # What this task renders when not its model's (the OpenAI face: one video,
    # the size and seconds asked for); None: the model's settings.
    variations: int | None = None
    duration: float | None = None
    resolution: int | None = None
    # The task a remix starts from.
    remixed_from: str | None = None
    # The face that made it (``webhooks.OPENAI_FACE`` or None: /v1/generate) and the
    # task's own webhook receiver.
    face: str | None = None
    callback_url: str | None = None


def submit(
    db: Database,
    principal: Principal,
    new: NewTask,
    *,
    task_id: str,
    model: str,
    engine: str,
    price: int,
    max_in_flight: int | None = None,
    max_queue: int | None = None,
    also: Callable[[Session, str], None] | None = None,
) -> str:
    """Create the task and debit its price in one transaction; a refusal leaves
    nothing behind: 402 (credits), 429 ``TooManyTasks`` (the account already has
    ``max_in_flight`` unfinished tasks) or 503 (``model`` already has
    ``max_queue`` pending tasks). None: no such cap. Both caps hold under
    concurrent submissions on any number of replicas."""
    with db.write() as session:
        if max_queue is not None:
            _check_queue(session, model, max_queue)
        session.add(
            Task(
                id=task_id,
                account_id=principal.account_id,
                status=TaskStatus.PENDING,
                model=model,
                engine=engine,
                prompt=new.prompt,
                mode=new.mode,
                ratio=new.ratio,
                images=new.images,
                variations=new.variations,
                duration=new.duration,
                resolution=new.resolution,
                remixed_from=new.remixed_from,
                face=new.face,
                callback_url=new.callback_url,
                price=price,
                consumed_credits=price,
                progress=0,
                outputs=[],
                seeds=[],
                attempts=0,
            )
        )
        session.flush()
        ledger.debit_for_task(
            session, principal.account_id, task_id, price, max_in_flight=max_in_flight
        )
        if also is not None:
            # What must commit with the task or not at all (an Idempotency-Key's answer).
            also(session, task_id)
    return task_id


# PostgreSQL advisory lock space of the per-model queue caps ("oi_q").
QUEUE_LOCK = 0x6F695F71
# Seconds a client refused by a full queue is told to wait.
QUEUE_FULL_RETRY_AFTER = 10


def _check_queue(session: Session, model: str, max_queue: int) -> None:
    """``ServiceUnavailable`` when ``model`` has ``max_queue`` tasks pending.

    Counted, not kept: the count stops at the cap, on the ``tasks_queue``
    index, so it costs the same at any history. Submissions to a capped model
    take turns from here to their commit (SQLite: its write lock; PostgreSQL:
    an advisory lock per model), so two of them never both take the last place.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(QUEUE_LOCK, func.hashtext(model))))
    waiting = session.scalar(
        select(func.count()).select_from(
            select(Task.id)
            .where(Task.model == model, Task.status == TaskStatus.PENDING)
            .limit(max_queue)
            .subquery()
        )
    )
    if waiting is not None and waiting >= max_queue:
        raise ServiceUnavailable(
            f"Service unavailable: the {model} model has {max_queue} tasks waiting, "
            "its most; please try again later",
            retry_after=QUEUE_FULL_RETRY_AFTER,
        )


# Built once: status polling is the hottest path. Core rows, not ORM objects.
_TASK_OF_ACCOUNT = select(Task.__table__).where(
    Task.id == bindparam("task_id"),
    Task.account_id == bindparam("account_id"),
    Task.deleted_at.is_(None),  # deleted by its owner: gone for every face
)


def get_task(db: Database, principal: Principal, task_id: str) -> Record:
    """The task row (attributes as on ``Task``); another account's task is ``NotFound``
    exactly like a missing one."""
    row = db.fetch_first(_TASK_OF_ACCOUNT, {"task_id": task_id, "account_id": principal.account_id})
    if row is None:
        raise NotFound("Task not found")
    return row


@functools.cache
def _recent(limit: int) -> Select[str, str, datetime]:
    # Newest first on ``tasks_by_account`` (account, created_at, id): reads
    # ``limit`` rows. One statement per limit, compiled once (``fetch_all``).
    return (
        select(Task.id, Task.status, Task.created_at)
        .where(Task.account_id == bindparam("account_id"), Task.deleted_at.is_(None))
        .order_by(Task.created_at.desc(), Task.id.desc())
        .limit(limit)
    )


def recent_tasks(db: Database, principal: Principal, *, limit: int = 10) -> list[dict]:
    """The account's latest tasks, newest first (``GET /v1/account``)."""
    return _recent_view(db.fetch_all(_recent(limit), {"account_id": principal.account_id}))


async def recent_tasks_async(db: Database, principal: Principal, *, limit: int = 10) -> list[dict]:
    """``recent_tasks`` from the event loop without a thread (``db.async_reads``)."""
    return _recent_view(
        await db.fetch_all_async(_recent(limit), {"account_id": principal.account_id})
    )


def _recent_view(rows: list[Record]) -> list[dict]:
    return [
        {"task_id": r.id, "status": r.status, "created_at": rfc3339(r.created_at)} for r in rows
    ]


def image_url(ref: str, storage: Storage) -> str:
    return storage.url(ref[len(STORED_PREFIX) :]) if ref.startswith(STORED_PREFIX) else ref


def task_view(task: Task | Record, storage: Storage) -> dict:
    """The ``data`` object of ``/v1/status``, with signed URLs (see ``storage``). Once
    the retention janitor deleted the task's files (``services/retention.py``):
    ``response`` is ``[]``, ``request.images`` keeps only the http(s) URLs as sent,
    and ``files_expired`` is true (absent otherwise, like ``request.images``)."""
    expired = task.files_expired_at is not None
    request: dict[str, object] = {"mode": task.mode, "prompt": task.prompt, "ratio": task.ratio}
    images = (
        task.images
        if not expired
        else [ref for ref in task.images or [] if not ref.startswith(STORED_PREFIX)]
    )
    if images:
        request["images"] = [image_url(ref, storage) for ref in images]
    completed = task.status == TaskStatus.COMPLETED
    view = {
        "task_id": task.id,
        "status": task.status,
        "created_at": rfc3339(task.created_at),
        "consumed_credits": task.consumed_credits,
        "error_message": task.error_message if task.status == TaskStatus.FAILED else None,
        "request": request,
        "response": [storage.url(key) for key in task.outputs] if completed and not expired else [],
        "progress": 100 if completed else task.progress,
    }
    if expired:
        view["files_expired"] = True
    return view


def list_tasks(
    db: Database,
    principal: Principal,
    *,
    after: str | None,
    limit: int,
    ascending: bool,
    status: str | None = None,
) -> tuple[list[Record], bool]:
    """A page of the account's tasks by creation time (ties by id), after the task
    ``after``, of one ``status`` or all; and whether more follow. Keyset paging on
    ``tasks_by_account``: the page costs the same however long the history."""
    order = (
        (Task.created_at.asc(), Task.id.asc())
        if ascending
        else (Task.created_at.desc(), Task.id.desc())
    )
    query = select(*TASK_VIEW_COLUMNS).where(
        Task.account_id == principal.account_id, Task.deleted_at.is_(None)
    )
    if status is not None:
        query = query.where(Task.status == status)
    with db.connect() as connection:
        if after is not None:
            cursor = connection.execute(
                select(Task.created_at, Task.id).where(
                    Task.id == after, Task.account_id == principal.account_id
                )
            ).first()
            if cursor is None:
                raise NotFound(f"No task found with id '{after}'")
            later = tuple_(Task.created_at, Task.id) > tuple_(cursor.created_at, cursor.id)
            earlier = tuple_(Task.created_at, Task.id) < tuple_(cursor.created_at, cursor.id)
            query = query.where(later if ascending else earlier)
        rows = connection.execute(query.order_by(*order).limit(limit + 1)).all()
    return list(rows[:limit]), len(rows) > limit


def mark_deleted(db: Database, principal: Principal, task_id: str) -> Record:
    """Hide the account's task from every read (its ledger stays); the row as it was,
    to remove its files. ``NotFound`` when it is not the account's or already gone."""
    with db.write() as session:
        row = session.execute(
            select(*TASK_VIEW_COLUMNS).where(
                Task.id == task_id,
                Task.account_id == principal.account_id,
                Task.deleted_at.is_(None),
            )
        ).first()
        if row is None:
            raise NotFound(f"No video found with id '{task_id}'")
        session.execute(update(Task).where(Task.id == task_id).values(deleted_at=utcnow()))
    return row


def stored_keys(task: Record | Task) -> list[str]:
    """Every stored file of a task: its videos, their stills, its stored inputs."""
    keys = list(task.outputs or [])
    if keys:
        keys += [still_key(task.id, variant) for variant in STILLS]
    keys += [
        ref[len(STORED_PREFIX) :] for ref in task.images or [] if ref.startswith(STORED_PREFIX)
    ]
    return keys
