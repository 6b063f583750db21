"""GET /files/... : signed downloads with Range support (Starlette's FileResponse)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from openimagine.api.context import AppContext, get_context
from openimagine.errors import NotFound
from openimagine.storage import LocalStorage, media_type

router = APIRouter()


@router.api_route("/files/{key:path}", methods=["GET", "HEAD"], include_in_schema=False)
def download(
    key: str,
    expires: str | None = None,
    sig: str | None = None,
    ctx: AppContext = Depends(get_context),
) -> FileResponse:
    if not isinstance(ctx.storage, LocalStorage):
        # Object storage hands out its own presigned URLs; nothing is served here.
        raise NotFound("File not found")
    path = ctx.storage.verify(key, expires, sig)
    return FileResponse(
        path,
        media_type=media_type(path.name),
        headers={"Cache-Control": "private, max-age=3600"},
    )
