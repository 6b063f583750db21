"""GET and POST /v1/status"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from openimagine.api.auth import (
    REQUIRES_KEY,
    authenticated,
    require_principal,
    require_principal_and_task,
    require_principal_and_task_async,
    run_blocking,
)
from openimagine.api.bodies import parse_json, query
from openimagine.api.context import AppContext, get_context
from openimagine.api.envelope import envelope_errors, envelope_schema, json_body, ok
from openimagine.api.fastpath import valid_task_id, wanted_task_id
from openimagine.errors import InvalidRequest, NotFound
from openimagine.services import tasks
from openimagine.services.accounts import Principal
from openimagine.store.db import Record
from openimagine.store.models import TaskStatus

router = APIRouter()

STATUS_SCHEMA = envelope_schema(
    {
        "type": "object",
        "properties": {
            "task_id": {"type": "string"},
            "status": {"enum": [str(status) for status in TaskStatus]},
            "created_at": {"type": "string", "format": "date-time"},
            "consumed_credits": {"type": "integer"},
            "error_message": {"type": ["string", "null"]},
            "request": {"type": "object"},
            "response": {"type": "array", "items": {"type": "string", "format": "uri"}},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "files_expired": {
                "type": "boolean",
                "description": "present (true) once the retention janitor deleted the task's files",
            },
        },
    }
)


async def caller_task(ctx: AppContext, request: Request, task_id: object) -> Record:
    """The caller's task ``task_id`` (401 and 429 first, as on every /v1 call; a
    missing id is 400; another account's task is NotFound like a missing one): on
    the event loop where the reads can be awaited (PostgreSQL, ``ctx.async_reads``)
    or cannot block (SQLite), else in a thread. Both faces' hot reads use it."""
    wanted = wanted_task_id(task_id)
    if ctx.async_reads and valid_task_id(wanted):
        _, task = await require_principal_and_task_async(ctx, request, wanted)
        if task is None:
            raise NotFound("Task not found")
        return task
    return await run_blocking(ctx, lambda: _task_of(ctx, request, wanted), writes=False)


def _task_of(ctx: AppContext, request: Request, wanted: str) -> Record:
    if not valid_task_id(wanted):
        require_principal(ctx, request)
        if not wanted:
            raise InvalidRequest("The task_id parameter is required")
        raise NotFound("Task not found")
    _, task = require_principal_and_task(ctx, request, wanted)
    if task is None:  # missing, or another account's: the same answer
        raise NotFound("Task not found")
    return task


async def _status(ctx: AppContext, request: Request, task_id: object) -> dict[str, Any]:
    return tasks.task_view(await caller_task(ctx, request, task_id), ctx.storage)


# Not blank (a task id is printable ASCII; any other string is simply not found).
TASK_ID_SCHEMA = {"type": "string", "minLength": 1, "pattern": r"\S"}
TASK_ID_BODY = {
    "type": "object",
    "required": ["task_id"],
    "properties": {"task_id": TASK_ID_SCHEMA},
}

# The query parameter is read by hand (``api/fastpath.py`` says why): declared here.
TASK_ID_PARAMETER = {
    "parameters": [{"name": "task_id", "in": "query", "required": True, "schema": TASK_ID_SCHEMA}],
    **REQUIRES_KEY,
}


@router.get(
    "/v1/status",
    responses={**STATUS_SCHEMA, **envelope_errors(400, 401, 404, 429)},
    openapi_extra=TASK_ID_PARAMETER,
)
async def status_get(request: Request) -> JSONResponse:
    """A task's status; completed tasks list freshly signed video URLs."""
    ctx = get_context(request)
    return ok(await _status(ctx, request, query(request, "task_id").get("task_id")))


@router.post(
    "/v1/status",
    responses={**STATUS_SCHEMA, **envelope_errors(400, 401, 404, 413, 429)},
    # The contract's form. The server also takes the task_id query parameter when the
    # body has none, which a schema cannot say (one of two places) and so leaves out.
    openapi_extra={**REQUIRES_KEY, **json_body(TASK_ID_BODY)},
)
async def status_post(request: Request) -> JSONResponse:
    """The same, with ``{"task_id": "..."}`` in the body."""
    raw = await request.body()

    def view(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        body = parse_json(raw, empty={})  # after the key and the rate limit
        task_id = body.get("task_id") if isinstance(body, dict) else None
        if task_id is None:
            task_id = query(request, "task_id").get("task_id")
        wanted = wanted_task_id(task_id)
        if not wanted:
            raise InvalidRequest("The task_id parameter is required")
        if not valid_task_id(wanted):
            raise NotFound("Task not found")
        return tasks.task_view(tasks.get_task(ctx.db, principal, wanted), ctx.storage)

    return ok(await authenticated(request, view, writes=False))
