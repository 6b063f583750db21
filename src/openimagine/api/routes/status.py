"""GET and POST /v1/status"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from openimagine.api.auth import require_principal
from openimagine.api.context import AppContext, get_context
from openimagine.api.envelope import envelope_schema, ok
from openimagine.errors import InvalidRequest
from openimagine.services import tasks
from openimagine.services.accounts import Principal

router = APIRouter()

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


def _status(ctx: AppContext, principal: Principal, task_id: object) -> dict:
    if not isinstance(task_id, str) or not task_id.strip():
        raise InvalidRequest("The task_id parameter is required")
    task = tasks.get_task(ctx.db, principal, task_id.strip())
    return tasks.task_view(task, ctx.storage)


@router.get("/v1/status", responses=STATUS_SCHEMA)
def status_get(
    task_id: str | None = None,
    principal: Principal = Depends(require_principal),
    ctx: AppContext = Depends(get_context),
) -> JSONResponse:
    """A task's status; completed tasks list freshly signed video URLs."""
    return ok(_status(ctx, principal, task_id))


@router.post("/v1/status", responses=STATUS_SCHEMA)
async def status_post(
    request: Request,
    principal: Principal = Depends(require_principal),
    ctx: AppContext = Depends(get_context),
) -> JSONResponse:
    """The same, with ``{"task_id": "..."}`` in the body."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("Malformed JSON body") from None
    task_id = body.get("task_id") if isinstance(body, dict) else None
    if task_id is None:
        task_id = request.query_params.get("task_id")
    return ok(await run_in_threadpool(_status, ctx, principal, task_id))
