"""POST /v1/generate"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, WithJsonSchema

from openimagine import inputs
from openimagine.api.auth import REQUIRES_KEY, authenticated
from openimagine.api.bodies import json_object, text_schema, trimmed
from openimagine.api.context import AppContext
from openimagine.api.envelope import envelope_schema, json_body, ok
from openimagine.api.openapi import CATALOG
from openimagine.api.submit import Submitted, submit_task
from openimagine.catalog import Model
from openimagine.engines.base import EngineInfo
from openimagine.errors import InvalidRequest
from openimagine.inputs.refs import image_ref_schema, url_schema
from openimagine.services import idempotency, tasks, webhooks
from openimagine.services.accounts import Principal

MAX_PROMPT = 5000

router = APIRouter()


# What parse_image_refs takes (built from its own rules).
ImageRef = Annotated[str, WithJsonSchema(image_ref_schema())]


class GenerateBody(BaseModel):
    """Documents the body in OpenAPI; validation is ``parse_generate`` so that every
    message is the contract's own. Both take their rules from the same places: the
    prompt's from ``bodies.text_schema``, the images' from ``inputs.refs``, the
    callback's from ``webhooks``, and the models, modes and ratios from the catalog
    (``api/openapi.py`` fills in the deployment's)."""

    prompt: str = Field(json_schema_extra=text_schema(MAX_PROMPT))
    # null is the default, as the server reads it.
    mode: str | None = Field("normal", json_schema_extra={CATALOG: "modes"})
    ratio: str | None = Field("1:1", json_schema_extra={CATALOG: "ratios"})
    images: Annotated[list[ImageRef], Field(max_length=inputs.MAX_IMAGES)] | ImageRef | None = (
        Field(
            None,
            description="up to 7 http(s) URLs or data URIs (the model's "
            "max_images, GET /v1/models)",
        )
    )
    model: str | None = Field(
        None,
        json_schema_extra={CATALOG: "models"},
        description="one of GET /v1/models (openimagine extension; "
        "default: the deployment's default model)",
    )
    callback_url: Annotated[str, WithJsonSchema(url_schema(webhooks.MAX_URL_LENGTH))] | None = (
        Field(
            None,
            description="an http(s) URL told when the task ends (task.completed / "
            "task.failed, Standard Webhooks signed with the account's "
            "default secret); not a loopback, private or link-local "
            "address unless OPENIMAGINE_ALLOW_PRIVATE_URLS",
        )
    )


def _choice(body: dict[str, Any], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRequest(f"Unknown {name} {value!r}: use one of {', '.join(allowed)}")
    return value


def _storable(text: str) -> bool:
    """False for text no database can keep: NUL (PostgreSQL) or an unpaired
    surrogate from a ``\\ud800`` JSON escape (not UTF-8 encodable)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Generation:
    model: Model
    prompt: str
    mode: str
    ratio: str
    refs: list[str]
    callback_url: str | None = None


def _model(body: dict[str, Any], ctx: AppContext) -> tuple[Model, EngineInfo]:
    name = body.get("model")
    if name is not None and (not isinstance(name, str) or name not in ctx.catalog.models):
        raise InvalidRequest(f"Unknown model {name!r}: use one of {', '.join(ctx.catalog.names)}")
    return ctx.model(name)


def parse_generate(raw: bytes, ctx: AppContext) -> Generation:
    """The request's fields from the body, or ``InvalidRequest``."""
    body = json_object(raw)
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("The prompt parameter is required")
    if not isinstance(prompt, str):
        raise InvalidRequest("The prompt parameter must be a string")
    prompt = trimmed(prompt)
    if not prompt:
        raise InvalidRequest("The prompt parameter must not be empty")
    if len(prompt) > MAX_PROMPT:
        raise InvalidRequest(f"The prompt parameter must be at most {MAX_PROMPT} characters")
    if not _storable(prompt):
        raise InvalidRequest("The prompt parameter contains a NUL or an unpaired surrogate")
    model, info = _model(body, ctx)
    mode = _choice(body, "mode", "normal", info.modes)
    ratio = _choice(body, "ratio", "1:1", info.ratios)
    try:
        refs = inputs.parse_image_refs(body.get("images"))
    except inputs.InvalidImageReference as exc:
        raise InvalidRequest(str(exc)) from None
    for index, ref in enumerate(refs):
        if not _storable(ref):
            raise InvalidRequest(f"images[{index}] contains a NUL or an unpaired surrogate")
    if refs and not info.image_input:
        raise InvalidRequest(f"The {model.name} model does not take images; send a prompt only")
    if len(refs) > info.max_images:
        raise InvalidRequest(f"The {model.name} model takes at most {info.max_images} images")
    callback_url = body.get("callback_url")
    if callback_url is not None:
        callback_url = webhooks.check_url(
            callback_url, "callback_url", allow_private=ctx.settings.allow_private_urls
        )
    return Generation(model, prompt, mode, ratio, refs, callback_url)


def _submit(ctx: AppContext, principal: Principal, raw: bytes, key: str | None) -> Submitted:
    wanted = parse_generate(raw, ctx)
    new = tasks.NewTask(
        wanted.prompt, wanted.mode, wanted.ratio, wanted.refs, callback_url=wanted.callback_url
    )
    idempotent = None
    if key is not None:
        fields = {
            "model": wanted.model.name,
            "prompt": wanted.prompt,
            "mode": wanted.mode,
            "ratio": wanted.ratio,
            "images": wanted.refs,
        }
        if wanted.callback_url is not None:  # only when sent: older keys' hashes stay valid
            fields["callback_url"] = wanted.callback_url
        idempotent = idempotency.IdempotentRequest(
            key, "generate", idempotency.fingerprint("generate", fields)
        )
    return submit_task(
        ctx, principal, wanted.model, new, price=wanted.model.price, idempotent=idempotent
    )


@router.post(
    "/v1/generate",
    openapi_extra={**REQUIRES_KEY, **json_body(GenerateBody.model_json_schema())},
    responses=envelope_schema(
        {"type": "object", "properties": {"task_id": {"type": "string"}}},
        400,
        401,
        402,
        409,
        413,
        422,
        429,
    ),
)
async def generate(request: Request) -> JSONResponse:
    """Submit a generation; its price is debited with the task in one transaction."""
    raw = await request.body()
    key = request.headers.get("idempotency-key")
    if key is not None:
        idempotency.check_key(key)
    submitted = await authenticated(
        request, lambda ctx, principal: _submit(ctx, principal, raw, key), writes=True
    )
    response = ok({"task_id": submitted.task_id})
    if submitted.replayed:
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return response
