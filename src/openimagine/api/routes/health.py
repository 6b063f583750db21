"""GET /healthz (the process answers) and GET /readyz (the database answers)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from openimagine.api.context import AppContext, get_context
from openimagine.api.envelope import envelope_schema, ok
from openimagine.errors import ServiceUnavailable

router = APIRouter()


@router.get(
    "/healthz",
    responses=envelope_schema(
        {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    ),
)
async def healthz() -> JSONResponse:
    return ok({"status": "ok"})


@router.get(
    "/readyz",
    responses=envelope_schema(
        {
            "type": "object",
            "required": ["status", "engine", "models"],
            "properties": {
                "status": {"const": "ready"},
                "engine": {"type": "string"},
                "models": {"type": "array", "items": {"type": "string"}},
            },
        }
    ),
)
def readyz(ctx: AppContext = Depends(get_context)) -> JSONResponse:
    try:
        ctx.db.ping()
    except Exception:
        raise ServiceUnavailable("Service unavailable: the database is not reachable") from None
    default = ctx.catalog.get(ctx.catalog.default)
    return ok({"status": "ready", "engine": default.engine, "models": ctx.catalog.names})
