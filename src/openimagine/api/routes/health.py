"""GET /healthz (the process answers) and GET /readyz (the database answers)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from openimagine.api.context import AppContext, get_context
from openimagine.api.envelope import ok
from openimagine.errors import ServiceUnavailable

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return ok({"status": "ok"})


@router.get("/readyz")
def readyz(ctx: AppContext = Depends(get_context)) -> JSONResponse:
    try:
        ctx.db.ping()
    except Exception:
        raise ServiceUnavailable("Service unavailable: the database is not reachable") from None
    default = ctx.catalog.get(ctx.catalog.default)
    return ok({"status": "ready", "engine": default.engine, "models": ctx.catalog.names})
