"""GET /v1/account: the caller's plan, balance, rate limit and recent usage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from openimagine.api.auth import (
    REQUIRES_KEY,
    authenticated,
    require_principal_with_summary_async,
)
from openimagine.api.context import AppContext, get_context
from openimagine.api.envelope import envelope_schema, ok
from openimagine.services import accounts, tasks
from openimagine.services.accounts import Principal
from openimagine.settings import PLANS

router = APIRouter()

RECENT_TASKS = 10

ACCOUNT_SCHEMA = envelope_schema(
    {
        "type": "object",
        "properties": {
            "account": {"type": "string"},
            "plan": {"enum": list(PLANS)},
            "balance": {"type": "integer", "description": "credits"},
            "price": {
                "type": "integer",
                "description": "credits per generation of the default model",
            },
            "rate_limit": {
                "type": "object",
                "properties": {"requests_per_minute": {"type": "integer"}},
            },
            "max_in_flight": {
                "type": "integer",
                "description": "unfinished tasks the plan allows at once",
            },
            "usage": {
                "type": "object",
                "properties": {
                    "tasks": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                        "description": "task counts by status",
                    },
                    "credits_spent": {"type": "integer", "description": "debits less refunds"},
                    "recent_tasks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "task_id": {"type": "string"},
                                "status": {"type": "string"},
                                "created_at": {"type": "string", "format": "date-time"},
                            },
                        },
                    },
                },
            },
        },
    },
    401,
    429,
)


def _account(ctx: AppContext, principal: Principal) -> dict[str, Any]:
    info = accounts.summary(ctx.db, account_id=principal.account_id)
    return _answer(ctx, info, tasks.recent_tasks(ctx.db, principal, limit=RECENT_TASKS))


def _answer(ctx: AppContext, info: dict[str, Any], recent: list[dict]) -> dict[str, Any]:
    return {
        "account": info["account"],
        "plan": info["plan"],
        "balance": info["balance"],
        # The default model's; GET /v1/models lists every model's.
        "price": ctx.catalog.get(ctx.catalog.default).price,
        "rate_limit": {"requests_per_minute": ctx.settings.rate_limits.get(info["plan"])},
        "max_in_flight": ctx.settings.max_in_flight.get(info["plan"]),
        "usage": {
            **info["usage"],
            "recent_tasks": recent,
        },
    }


@router.get("/v1/account", responses=ACCOUNT_SCHEMA, openapi_extra=REQUIRES_KEY)
async def account(request: Request) -> JSONResponse:
    """The calling account: plan, balance, rate limit, task counts and the last tasks."""
    ctx = get_context(request)
    if ctx.async_reads:
        # PostgreSQL: two awaited reads on the loop (key + usage, recent tasks),
        # not three in a thread whose GIL traffic slows every status poll.
        principal, info = await require_principal_with_summary_async(ctx, request)
        return ok(
            _answer(
                ctx, info, await tasks.recent_tasks_async(ctx.db, principal, limit=RECENT_TASKS)
            )
        )
    return ok(await authenticated(request, _account, writes=False))
