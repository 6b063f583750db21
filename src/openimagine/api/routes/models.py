"""GET /v1/models: the models this deployment serves, in OpenAI's list shape, so
``openai.OpenAI(base_url=...).models.list()`` works unchanged."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from openimagine.api.auth import REQUIRES_KEY, authenticated
from openimagine.api.context import AppContext
from openimagine.api.envelope import envelope_errors
from openimagine.services.accounts import Principal

router = APIRouter()

# OpenAI's ``created`` is when the model was made; here, when this process began serving it.
STARTED = int(time.time())

MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"const": "openimagine"},
        "default": {"type": "boolean", "description": "used when a request names no model"},
        "price": {"type": "integer", "description": "credits per POST /v1/generate task"},
        "variations": {"type": "integer", "description": "videos per POST /v1/generate task"},
        "modes": {"type": "array", "items": {"type": "string"}},
        "ratios": {"type": "array", "items": {"type": "string"}},
        "max_images": {"type": "integer"},
    },
}
LIST_SCHEMA: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the models",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["object", "data"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {"type": "array", "items": MODEL_SCHEMA},
                    },
                }
            }
        },
    },
    **envelope_errors(401, 429),
}


def _models(ctx: AppContext, _principal: Principal) -> dict[str, Any]:
    data = []
    for name, model in ctx.catalog.models.items():
        info = ctx.infos[name]
        # What a client needs to choose and pay; never engines, upstreams or keys.
        data.append(
            {
                "id": name,
                "object": "model",
                "created": STARTED,
                "owned_by": "openimagine",
                "default": name == ctx.catalog.default,
                "price": model.price,
                "variations": model.variations,
                "modes": list(info.modes),
                "ratios": list(info.ratios),
                "max_images": info.max_images if info.image_input else 0,
            }
        )
    return {"object": "list", "data": data}


@router.get("/v1/models", responses=LIST_SCHEMA, openapi_extra=REQUIRES_KEY)
async def list_models(request: Request) -> Response:
    """The models served here (OpenAI's list shape; pick one with ``model`` on submit)."""
    listing = await authenticated(request, _models, writes=False)
    return Response(orjson.dumps(listing), media_type="application/json")
