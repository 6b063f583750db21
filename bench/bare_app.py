"""The yardstick: a bare Starlette JSON endpoint under the same uvicorn settings."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

PAYLOAD = {
    "code": 200,
    "message": "success",
    "data": {
        "task_id": "task_0123456789abcdefghijkl",
        "status": "completed",
        "created_at": "2026-11-29T12:00:00Z",
        "consumed_credits": 40,
        "error_message": None,
        "request": {
            "mode": "fun",
            "prompt": "a beautiful landscape with mountains",
            "ratio": "1:1",
        },
        "response": [],
        "progress": 100,
    },
}


async def status(_request):  # type: ignore[no-untyped-def]
    return JSONResponse(PAYLOAD)


app = Starlette(routes=[Route("/v1/status", status)])
