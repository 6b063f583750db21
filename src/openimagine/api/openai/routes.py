"""``/v1/videos``: OpenAI's Videos API on openimagine's tasks (see ``videos.py``).

Errors on these paths are OpenAI error objects (``api/errors.py`` chooses by
path); authentication, the plan's rate limit, credits and storage are the
Grok face's. ``GET /v1/videos/{id}`` is also answered below FastAPI's stack
(``api/fastpath.py``), like ``GET /v1/status``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import FileResponse, RedirectResponse, Response

from openimagine import inputs
from openimagine.api.auth import (
    REQUIRES_KEY,
    authenticated,
    run_blocking,
)
from openimagine.api.bodies import LIMIT_PARAMETER, json_object, page_size, parse_json, query
from openimagine.api.context import AppContext, get_context
from openimagine.api.envelope import event_stream
from openimagine.api.fastpath import path_tail, valid_task_id, wanted_task_id
from openimagine.api.openai import schemas
from openimagine.api.openai.videos import (
    BadField,
    VideoRequest,
    image_url_of,
    parse_prompt,
    parse_seconds,
    parse_size,
    poll_after_ms,
    video_object,
    video_price,
)
from openimagine.api.routes.status import caller_task
from openimagine.api.stream import stream_response
from openimagine.api.submit import submit_task
from openimagine.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from openimagine.services import idempotency, lifecycle, tasks, webhooks
from openimagine.services.accounts import Principal
from openimagine.storage import LocalStorage
from openimagine.store.db import Record
from openimagine.store.models import TaskStatus
from openimagine.timeutil import rfc3339

router = APIRouter()
PREFIX = "/v1/videos/"
VARIANTS = {"video": "video/mp4", "thumbnail": "image/webp", "spritesheet": "image/jpeg"}


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def _video(ctx: AppContext, task: Record) -> dict[str, Any]:
    return video_object(task, ctx.catalog.models.get(task.model), ctx.settings.retention)


def _expired(task: Record, doing: str) -> str:
    """Why ``doing`` is refused on a video whose files the retention janitor deleted."""
    return (
        f"Video {task.id}'s files expired at {rfc3339(task.files_expired_at)} "
        f"(files are kept for a while after a video finishes): {doing}"
    )


def _own_task(ctx: AppContext, principal: Principal, video_id: str) -> Record:
    wanted = wanted_task_id(video_id)
    if not valid_task_id(wanted):
        raise NotFound(f"No video found with id '{wanted[:64]}'")
    try:
        return tasks.get_task(ctx.db, principal, wanted)
    except NotFound:
        raise NotFound(f"No video found with id '{wanted}'") from None


# -- create ------------------------------------------------------------------------


async def _read_fields(request: Request, ctx: AppContext) -> tuple[dict[str, Any], list[bytes]]:
    """The create body as fields (multipart, form or JSON) and the uploaded image, if any."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        try:
            form = await request.form(max_files=1, max_fields=32)
        except Exception as exc:  # a malformed multipart body from python-multipart
            raise InvalidRequest(f"Malformed form body: {exc}") from None
        fields: dict[str, Any] = {}
        uploads: list[bytes] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "input_reference":
                    raise BadField(name, f"unexpected file field {name!r}")
                data = await value.read()
                if len(data) > ctx.settings.fetch_max_bytes:
                    raise PayloadTooLarge(
                        f"input_reference is over {ctx.settings.fetch_max_bytes} bytes"
                    )
                if inputs.sniff_image_type(data) is None:
                    raise BadField(
                        "input_reference", "input_reference must be a JPEG, PNG or WebP image"
                    )
                uploads.append(data)
            else:
                fields[name] = value
        return fields, uploads
    raw = await request.body()
    return json_object(raw, "The request body must be a JSON object or multipart form"), []


def _parse_create(ctx: AppContext, fields: dict[str, Any], uploads: list[bytes]) -> VideoRequest:
    name = fields.get("model")
    if name is not None and (not isinstance(name, str) or name not in ctx.catalog.models):
        raise BadField(
            "model", f"Unknown model {name!r}: use one of {', '.join(ctx.catalog.names)}"
        )
    model, info = ctx.model(name)
    prompt = parse_prompt(fields.get("prompt"))
    ratio, resolution = parse_size(fields.get("size"), model, info)
    duration = parse_seconds(fields.get("seconds"))
    url = image_url_of(fields)
    refs = [url] if url else []
    if (refs or uploads) and not info.image_input:
        raise BadField("input_reference", f"The {model.name} model does not take images")
    if refs and uploads:
        raise BadField(
            "input_reference", "give input_reference as a file or as an image_url, not both"
        )
    webhook = fields.get("webhook")
    if webhook is not None:
        _check_webhook(ctx, webhook)
    return VideoRequest(model, prompt, ratio, resolution, duration, refs, webhook)


def _check_webhook(ctx: AppContext, webhook: object) -> None:
    problem = webhooks.url_problem(webhook, allow_private=ctx.settings.allow_private_urls)
    if problem:
        raise BadField("webhook", f"webhook {problem}")


def _create(
    ctx: AppContext,
    principal: Principal,
    wanted: VideoRequest,
    uploads: list[bytes],
    remixed_from: str | None = None,
    idempotent: idempotency.IdempotentRequest | None = None,
) -> tuple[Record, bool]:
    """The new task (or, for a replayed Idempotency-Key, the one made before) and
    whether it was replayed."""
    new = tasks.NewTask(
        wanted.prompt,
        "normal",
        wanted.ratio,
        wanted.image_refs,
        variations=1,
        duration=wanted.duration,
        resolution=wanted.resolution,
        remixed_from=remixed_from,
        face=webhooks.OPENAI_FACE,
        callback_url=wanted.webhook,
    )
    submitted = submit_task(
        ctx,
        principal,
        wanted.model,
        new,
        price=video_price(wanted.model),
        uploads=uploads,
        idempotent=idempotent,
    )
    return tasks.get_task(ctx.db, principal, submitted.task_id), submitted.replayed


@router.post(
    "/v1/videos",
    responses=schemas.responses(schemas.VIDEO, 400, 401, 402, 409, 413, 422, 429),
    openapi_extra={**REQUIRES_KEY, "requestBody": schemas.CREATE_BODY},
)
async def create_video(request: Request) -> Response:
    """Start a video job (one video, priced at the model's price over its variations)."""
    ctx = get_context(request)
    key = request.headers.get("idempotency-key")
    if key is not None:
        idempotency.check_key(key)
    principal = await authenticated(request, lambda _ctx, principal: principal, writes=False)
    fields, uploads = await _read_fields(request, ctx)
    wanted = _parse_create(ctx, fields, uploads)
    idempotent = (
        None
        if key is None
        else idempotency.IdempotentRequest(
            key, "videos", idempotency.fingerprint("videos", fields, uploads)
        )
    )
    task, replayed = await run_blocking(
        ctx, lambda: _create(ctx, principal, wanted, uploads, idempotent=idempotent), writes=True
    )
    return _json(
        _video(ctx, task), headers={idempotency.REPLAYED_HEADER: "true"} if replayed else None
    )


# -- read ----------------------------------------------------------------------------


@router.get(
    "/v1/videos/{video_id}",
    responses=schemas.responses(schemas.VIDEO, 401, 404, 429),
    openapi_extra={
        **REQUIRES_KEY,
        "parameters": [  # read by hand, see below
            {"name": "video_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
    },
)
async def retrieve_video(request: Request) -> Response:
    """A video job, with ``openai-poll-after-ms`` (about the time it still needs)."""
    ctx = get_context(request)
    video_id = path_tail(request, PREFIX)  # no router fills it on the fast path

    try:
        task = await caller_task(ctx, request, video_id)
    except NotFound:
        raise NotFound(f"No video found with id '{video_id.strip()[:64]}'") from None
    return _json(_video(ctx, task), headers={"openai-poll-after-ms": str(poll_after_ms(task))})


@router.get(
    "/v1/videos/{video_id}/events",
    responses={
        **event_stream(
            "text/event-stream: a `status` event (the Video object) now and on every change, a "
            "comment every 15 s, closed after the final event",
            schemas.VIDEO,
        ),
        **schemas.responses(None, 401, 404, 429),
    },
    openapi_extra=REQUIRES_KEY,
)
async def video_events(request: Request, video_id: str) -> Response:
    """A video job as it changes (server-sent events), until it is final."""
    ctx = get_context(request)
    task = await authenticated(
        request, lambda ctx, principal: _own_task(ctx, principal, video_id), writes=False
    )
    assert ctx.hub is not None
    return stream_response(ctx.hub, task, lambda row: _video(ctx, row))


LIST_PARAMETERS = [
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
    LIMIT_PARAMETER,
    {
        "name": "order",
        "in": "query",
        "required": False,
        "schema": {"enum": ["asc", "desc"], "default": "desc"},
    },
]


@router.get(
    "/v1/videos",
    responses=schemas.responses(schemas.LIST, 400, 401, 404, 429),
    openapi_extra={**REQUIRES_KEY, "parameters": LIST_PARAMETERS},
)
async def list_videos(request: Request) -> Response:
    """The caller's video jobs, newest first (``order=asc``: oldest), ``after`` a cursor."""

    def page(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        # After the key and the rate limit, as on every call.
        params = query(request, "after", "limit", "order")
        try:
            limit = page_size(params.get("limit"))
        except InvalidRequest as exc:
            raise BadField("limit", exc.message) from None
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadField("order", "order must be asc or desc")
        after = params.get("after") or None
        rows, more = tasks.list_tasks(
            ctx.db, principal, after=after, limit=limit, ascending=order == "asc"
        )
        data = [_video(ctx, row) for row in rows]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    return _json(await authenticated(request, page, writes=False))


@router.get(
    "/v1/videos/{video_id}/content",
    responses={**schemas.CONTENT, **schemas.responses(None, 400, 401, 404, 429)},
    openapi_extra={
        **REQUIRES_KEY,
        "parameters": [
            {
                "name": "variant",
                "in": "query",
                "required": False,
                "schema": {"enum": list(VARIANTS), "default": "video"},
            }
        ],
    },
)
async def download_content(request: Request, video_id: str) -> Response:
    """The MP4 (Range requests work), its WebP thumbnail or its JPEG spritesheet."""
    variant = query(request, "variant").get("variant", "video")
    if variant not in VARIANTS:
        raise BadField("variant", "variant must be video, thumbnail or spritesheet")

    def find(ctx: AppContext, principal: Principal) -> Record:
        return _own_task(ctx, principal, video_id)

    ctx = get_context(request)
    task = await authenticated(request, find, writes=False)
    if task.files_expired_at is not None:
        raise NotFound(_expired(task, "its content is no longer available"))
    if task.status != TaskStatus.COMPLETED or not task.outputs:
        raise NotFound(
            f"Video {video_id} has no content: it is {video_object(task, None)['status']}"
        )
    key = task.outputs[0] if variant == "video" else tasks.still_key(task.id, variant)
    if isinstance(ctx.storage, LocalStorage):
        path = ctx.storage.path(key)
        if not path.is_file():
            raise NotFound(f"Video {video_id} has no {variant}")
        return FileResponse(path, media_type=VARIANTS[variant])
    # Object storage: the client follows a short-lived presigned URL.
    return RedirectResponse(ctx.storage.url(key), status_code=307)


# -- change --------------------------------------------------------------------------


@router.delete(
    "/v1/videos/{video_id}",
    responses=schemas.responses(schemas.DELETED, 401, 404, 429),
    openapi_extra=REQUIRES_KEY,
)
async def delete_video(request: Request, video_id: str) -> Response:
    """Delete a video job and its files (an unfinished one is cancelled and refunded first)."""

    def delete(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        task = _own_task(ctx, principal, video_id)
        lifecycle.cancel(ctx.db, task.id, principal.account_id)
        gone = tasks.mark_deleted(ctx.db, principal, task.id)
        for key in tasks.stored_keys(gone):
            ctx.storage.delete(key)
        return {"id": task.id, "object": "video.deleted", "deleted": True}

    return _json(await authenticated(request, delete, writes=True))


@router.post(
    "/v1/videos/{video_id}/cancel",
    responses=schemas.responses(schemas.VIDEO, 401, 404, 409, 429),
    openapi_extra=REQUIRES_KEY,
)
async def cancel_video(request: Request, video_id: str) -> Response:
    """Cancel a queued or running video: it ends failed (code ``cancelled``), refunded."""

    def cancel(ctx: AppContext, principal: Principal) -> Record:
        task = _own_task(ctx, principal, video_id)
        if not lifecycle.cancel(ctx.db, task.id, principal.account_id) and (
            task.error_message != lifecycle.CANCELLED
        ):
            raise Conflict(f"Video {task.id} is already {video_object(task, None)['status']}")
        return _own_task(ctx, principal, video_id)

    ctx = get_context(request)
    return _json(_video(ctx, await authenticated(request, cancel, writes=True)))


@router.post(
    "/v1/videos/{video_id}/remix",
    responses=schemas.responses(schemas.VIDEO, 400, 401, 402, 404, 409, 413, 429),
    openapi_extra={**REQUIRES_KEY, "requestBody": schemas.REMIX_BODY},
)
async def remix_video(request: Request, video_id: str) -> Response:
    """A new video with the source's model, size, seconds and images, and a new prompt."""
    raw = await request.body()

    def remix(ctx: AppContext, principal: Principal) -> Record:
        body = parse_json(raw)  # after the key and the rate limit, as on every call
        prompt = parse_prompt(body.get("prompt") if isinstance(body, dict) else None)
        webhook = body.get("webhook") if isinstance(body, dict) else None
        if webhook is not None:
            _check_webhook(ctx, webhook)
        source = _own_task(ctx, principal, video_id)
        if source.files_expired_at is not None:
            raise InvalidRequest(_expired(source, "it can no longer be remixed"))
        if source.status != TaskStatus.COMPLETED:  # a valid request, the wrong moment: 409
            raise Conflict(
                f"Only a completed video can be remixed; {source.id} is "
                f"{video_object(source, None)['status']}"
            )
        model = ctx.catalog.models.get(source.model)
        if model is None:
            raise InvalidRequest(f"The model {source.model!r} of {source.id} is no longer served")
        # The source's stored inputs are copied: the remix keeps them if the source goes.
        refs = [ref for ref in source.images if not ref.startswith(tasks.STORED_PREFIX)]
        uploads = [
            ctx.storage.read_bytes(ref[len(tasks.STORED_PREFIX) :])
            for ref in source.images
            if ref.startswith(tasks.STORED_PREFIX)
        ]
        wanted = VideoRequest(
            model, prompt, source.ratio, source.resolution, source.duration, refs, webhook
        )
        return _create(ctx, principal, wanted, uploads, remixed_from=source.id)[0]

    ctx = get_context(request)
    return _json(_video(ctx, await authenticated(request, remix, writes=True)))
