"""GET /files/... : signed downloads with Range support (Starlette's FileResponse)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from openimagine.api.context import AppContext, get_context

router = APIRouter()

MEDIA_TYPES = {"mp4": "video/mp4", "png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@router.api_route("/files/{key:path}", methods=["GET", "HEAD"], include_in_schema=False)
def download(
    key: str,
    expires: str | None = None,
    sig: str | None = None,
    ctx: AppContext = Depends(get_context),
) -> FileResponse:
    path = ctx.storage.verify(key, expires, sig)
    media_type = MEDIA_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=3600"},
    )
