"""GET and POST /v1/status"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from openimagine.api.auth import authenticated, bearer_scheme
from openimagine.api.context import AppContext
from openimagine.api.envelope import envelope_schema, ok
from openimagine.errors import InvalidRequest, NotFound
from openimagine.services import tasks
from openimagine.services.accounts import Principal

router = APIRouter(dependencies=[Depends(bearer_scheme)])

STATUS_SCHEMA = envelope_schema(
    {
        "type": "object",
        "properties": {
            "task_id": {"type": "string"},
            "status": {"enum": ["pending", "processing", "completed", "failed"]},
            "created_at": {"type": "string", "format": "date-time"},
            "consumed_credits": {"type": "integer"},
            "error_message": {"type": ["string", "null"]},
            "request": {"type": "object"},
            "response": {"type": "array", "items": {"type": "string", "format": "uri"}},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        },
    }
)


def _status(task_id: object):  # type: ignore[no-untyped-def]
    def call(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequest("The task_id parameter is required")
        if not task_id.strip().isascii() or not task_id.strip().isprintable():
            # Task ids are printable ASCII; anything else (a NUL, an unpaired
            # surrogate) is unknown and must not reach the database driver.
            raise NotFound("Task not found")
        task = tasks.get_task(ctx.db, principal, task_id.strip())
        return tasks.task_view(task, ctx.storage)

    return call


@router.get("/v1/status", responses=STATUS_SCHEMA)
async def status_get(request: Request, task_id: str | None = None) -> JSONResponse:
    """A task's status; completed tasks list freshly signed video URLs."""
    return ok(await authenticated(request, _status(task_id), writes=False))


@router.post("/v1/status", responses=STATUS_SCHEMA)
async def status_post(request: Request) -> JSONResponse:
    """The same, with ``{"task_id": "..."}`` in the body."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        body = None
    task_id = body.get("task_id") if isinstance(body, dict) else None
    if task_id is None:
        task_id = request.query_params.get("task_id")

    def call(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        if body is None:
            raise InvalidRequest("Malformed JSON body")
        return _status(task_id)(ctx, principal)

    return ok(await authenticated(request, call, writes=False))
