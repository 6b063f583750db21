"""Job control on the Grok face: ``POST /v1/cancel``, ``GET /v1/tasks`` and the live
status stream ``GET /v1/status/stream`` (``api/stream.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from openimagine.api.auth import (
    REQUIRES_KEY,
    authenticated,
)
from openimagine.api.bodies import LIMIT_PARAMETER, page_size, parse_json, query
from openimagine.api.context import AppContext, get_context
from openimagine.api.envelope import envelope_errors, envelope_schema, event_stream, json_body, ok
from openimagine.api.fastpath import valid_task_id, wanted_task_id
from openimagine.api.routes.status import STATUS_SCHEMA, TASK_ID_BODY, TASK_ID_SCHEMA, caller_task
from openimagine.api.stream import stream_response
from openimagine.errors import Conflict, InvalidRequest, NotFound
from openimagine.services import lifecycle, tasks
from openimagine.services.accounts import Principal
from openimagine.store.models import TaskStatus

router = APIRouter()

STATUSES = tuple(str(status) for status in TaskStatus)


def cancel_task(ctx: AppContext, principal: Principal, task_id: str) -> dict[str, Any]:
    """Cancel the account's unfinished task (refunded once); the status data after.
    A task cancelled before answers the same again; any other finished one is 409."""
    if not valid_task_id(task_id):
        raise NotFound("Task not found")
    if not lifecycle.cancel(ctx.db, task_id, principal.account_id):
        task = tasks.get_task(ctx.db, principal, task_id)  # NotFound if not the account's
        if task.error_message != lifecycle.CANCELLED:
            raise Conflict(
                f"Task {task_id} is already {task.status}; only a pending or "
                "processing task can be cancelled"
            )
    return tasks.task_view(tasks.get_task(ctx.db, principal, task_id), ctx.storage)


@router.post(
    "/v1/cancel",
    responses={**STATUS_SCHEMA, **envelope_errors(400, 401, 404, 409, 413, 429)},
    openapi_extra={**REQUIRES_KEY, **json_body(TASK_ID_BODY)},
)
async def cancel(request: Request) -> JSONResponse:
    """Cancel a pending or running task: it ends failed with "Task cancelled", refunded."""
    raw = await request.body()

    def run(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        body = parse_json(raw)
        if body is None:
            raise InvalidRequest("Malformed JSON body")
        task_id = wanted_task_id(body.get("task_id") if isinstance(body, dict) else None)
        if not task_id:
            raise InvalidRequest("The task_id parameter is required")
        return cancel_task(ctx, principal, task_id)

    return ok(await authenticated(request, run, writes=True))


TASKS_SCHEMA = envelope_schema(
    {
        "type": "object",
        "properties": {
            "tasks": {
                "type": "array",
                "items": STATUS_SCHEMA[200]["content"]["application/json"]["schema"]["properties"][
                    "data"
                ],
            },
            "has_more": {"type": "boolean"},
            "next": {"type": ["string", "null"], "description": "pass as after= for the next page"},
        },
    },
    400,
    401,
    404,
    429,
)


@router.get(
    "/v1/tasks",
    responses=TASKS_SCHEMA,
    openapi_extra={
        **REQUIRES_KEY,
        "parameters": [
            {
                "name": "status",
                "in": "query",
                "required": False,
                "schema": {"enum": list(STATUSES)},
            },
            LIMIT_PARAMETER,
            {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
    },
)
async def list_tasks(request: Request) -> JSONResponse:
    """The caller's tasks, newest first, a page at a time (``next`` → ``after``)."""

    def page(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        # After the key and the rate limit, as on every call.
        params = query(request, "status", "limit", "after")
        status = params.get("status")  # "" too must be one of them
        limit = params.get("limit")
        after = params.get("after") or None
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"Unknown status {status!r}: use one of {', '.join(STATUSES)}")
        count = page_size(limit)
        rows, more = tasks.list_tasks(
            ctx.db, principal, after=after, limit=count, ascending=False, status=status
        )
        return {
            "tasks": [tasks.task_view(row, ctx.storage) for row in rows],
            "has_more": more,
            "next": rows[-1].id if more else None,
        }

    return ok(await authenticated(request, page, writes=False))


STREAM_DOC = event_stream(
    "text/event-stream: a `status` event (the GET /v1/status data) now and on every change, "
    "a comment every 15 s, closed after the final event",
    STATUS_SCHEMA[200]["content"]["application/json"]["schema"]["properties"]["data"],
)


@router.get(
    "/v1/status/stream",
    responses={**STREAM_DOC, **envelope_errors(400, 401, 404, 429)},
    openapi_extra={
        **REQUIRES_KEY,
        "parameters": [
            {"name": "task_id", "in": "query", "required": True, "schema": TASK_ID_SCHEMA}
        ],
    },
)
async def status_stream(request: Request) -> Response:
    """A task's status as it changes (server-sent events), until it is final."""
    ctx = get_context(request)
    task = await caller_task(ctx, request, query(request, "task_id").get("task_id"))
    assert ctx.hub is not None
    return stream_response(ctx.hub, task, lambda row: tasks.task_view(row, ctx.storage))
