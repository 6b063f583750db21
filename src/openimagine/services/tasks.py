"""Tasks from the client's side: submit (debit in the same transaction) and view."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, select

from openimagine.errors import NotFound
from openimagine.services import ledger
from openimagine.services.accounts import Principal
from openimagine.storage import Storage
from openimagine.store.db import Database, Record
from openimagine.store.models import Task
from openimagine.timeutil import rfc3339

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


def submit(db: Database, principal: Principal, new: NewTask, *, task_id: str, model: str,
           engine: str, price: int) -> str:
    """Create the task and debit its price in one transaction (402 leaves nothing behind)."""
    with db.write() as session:
        session.add(
            Task(
                id=task_id,
                account_id=principal.account_id,
                status="pending",
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
                price=price,
                consumed_credits=price,
                progress=0,
                outputs=[],
                seeds=[],
                attempts=0,
            )
        )
        session.flush()
        ledger.debit_for_task(session, principal.account_id, task_id, price)
    return task_id


# Built once: status polling is the hottest path. Core rows, not ORM objects.
_TASK_OF_ACCOUNT = select(Task.__table__).where(
    Task.id == bindparam("task_id"), Task.account_id == bindparam("account_id"),
    Task.deleted_at.is_(None),  # deleted by its owner: gone for every face
)


def get_task(db: Database, principal: Principal, task_id: str) -> Record:
    """The task row (attributes as on ``Task``); another account's task is ``NotFound``
    exactly like a missing one."""
    row = db.fetch_first(_TASK_OF_ACCOUNT,
                         {"task_id": task_id, "account_id": principal.account_id})
    if row is None:
        raise NotFound("Task not found")
    return row


def recent_tasks(db: Database, principal: Principal, *, limit: int = 10) -> list[dict]:
    """The account's latest tasks, newest first (``GET /v1/account``)."""
    query = (
        select(Task.id, Task.status, Task.created_at)
        .where(Task.account_id == principal.account_id)
        .order_by(Task.created_at.desc(), Task.id.desc())
        .limit(limit)
    )
    with db.connect() as connection:
        rows = connection.execute(query).all()
    return [{"task_id": r.id, "status": r.status, "created_at": rfc3339(r.created_at)}
            for r in rows]


def image_url(ref: str, storage: Storage) -> str:
    return storage.url(ref[len(STORED_PREFIX):]) if ref.startswith(STORED_PREFIX) else ref


def task_view(task: Task | Record, storage: Storage) -> dict:
    """The ``data`` object of ``/v1/status``, with signed URLs (see ``storage``)."""
    request: dict[str, object] = {"mode": task.mode, "prompt": task.prompt, "ratio": task.ratio}
    if task.images:
        request["images"] = [image_url(ref, storage) for ref in task.images]
    completed = task.status == "completed"
    return {
        "task_id": task.id,
        "status": task.status,
        "created_at": rfc3339(task.created_at),
        "consumed_credits": task.consumed_credits,
        "error_message": task.error_message if task.status == "failed" else None,
        "request": request,
        "response": [storage.url(key) for key in task.outputs] if completed else [],
        "progress": 100 if completed else task.progress,
    }
