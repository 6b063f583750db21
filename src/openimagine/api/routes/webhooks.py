"""``/v1/webhooks``: the caller's webhook endpoints, its default secret (which signs
tasks' own ``callback_url``s) and the delivery log (``services/webhooks.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from openimagine.api.auth import REQUIRES_KEY, authenticated
from openimagine.api.bodies import LIMIT_PARAMETER, json_object, page_size, query
from openimagine.api.context import AppContext
from openimagine.api.envelope import envelope_schema, json_body, ok
from openimagine.errors import InvalidRequest
from openimagine.inputs.refs import url_schema
from openimagine.patterns import whole_number
from openimagine.services import webhooks
from openimagine.services.accounts import Principal
from openimagine.store.models import DeliveryStatus

router = APIRouter()


ENDPOINT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "example": "wh_3f2a9c1d0b7e6a55"},
        "url": {"type": "string"},
        "events": {"type": "array", "items": {"enum": list(webhooks.EVENT_TYPES)}},
        "created_at": {"type": "string", "format": "date-time"},
        "disabled": {"type": "boolean", "description": "the receiver answered 410 Gone"},
    },
}
CREATED = {
    **ENDPOINT,
    "properties": {
        **ENDPOINT["properties"],
        "secret": {
            "type": "string",
            "description": "whsec_...: verifies this endpoint's deliveries; shown only this once",
        },
    },
}
ATTEMPT = {
    "type": "object",
    "properties": {
        "attempt": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "status_code": {"type": ["integer", "null"], "description": "null: no answer"},
        "latency_ms": {"type": "integer"},
        "error": {"type": ["string", "null"]},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
DELIVERY = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "event_id": {"type": "string", "description": "webhook-id"},
        "type": {"enum": list(webhooks.EVENT_TYPES)},
        "task_id": {"type": "string"},
        "url": {"type": "string"},
        "status": {"enum": [str(status) for status in DeliveryStatus]},
        "created_at": {"type": "string", "format": "date-time"},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "attempts": {"type": "array", "items": ATTEMPT},
    },
}


# What a client (or a stateful fuzzer) can do with a new endpoint's id.
ADDED = envelope_schema(CREATED, 400, 401, 409, 413, 429)
ADDED[200]["links"] = {
    name: {"operationId": operation, "parameters": {"webhook_id": "$response.body#/data/id"}}
    for name, operation in (("remove", "remove_webhook"), ("deliveries", "webhook_deliveries"))
}


@router.post(
    "/v1/webhooks",
    responses=ADDED,
    openapi_extra={
        **REQUIRES_KEY,
        **json_body(
            {
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {
                        **url_schema(webhooks.MAX_URL_LENGTH),
                        "description": (
                            "not a loopback, private or link-local address unless "
                            "OPENIMAGINE_ALLOW_PRIVATE_URLS"
                        ),
                    },
                    "events": {
                        "anyOf": [
                            {
                                "type": "array",
                                "minItems": 1,
                                "items": {"enum": list(webhooks.EVENT_TYPES)},
                            },
                            {"type": "null"},
                        ],
                        "description": "default (or null): all",
                    },
                },
            }
        ),
    },
)
async def add_webhook(request: Request) -> JSONResponse:
    """Register a webhook endpoint; its signing secret is in this answer only."""
    raw = await request.body()

    def add(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        body = json_object(raw)  # after the key and the rate limit, as on every call
        url = webhooks.check_url(
            body.get("url"), "url", allow_private=ctx.settings.allow_private_urls
        )
        events = webhooks.check_events(body.get("events"))
        endpoint, secret = webhooks.add_endpoint(ctx.db, principal.account_id, url, events)
        return {**endpoint.view(), "secret": secret}

    return ok(await authenticated(request, add, writes=True))


@router.get(
    "/v1/webhooks",
    responses=envelope_schema(
        {"type": "object", "properties": {"webhooks": {"type": "array", "items": ENDPOINT}}},
        401,
        429,
    ),
    openapi_extra=REQUIRES_KEY,
)
async def list_webhooks(request: Request) -> JSONResponse:
    """The caller's webhook endpoints (without their secrets)."""

    def listing(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        return {
            "webhooks": [
                endpoint.view()
                for endpoint in webhooks.list_endpoints(ctx.db, principal.account_id)
            ]
        }

    return ok(await authenticated(request, listing, writes=False))


@router.get(
    "/v1/webhooks/default/secret",
    responses=envelope_schema(
        {"type": "object", "properties": {"key": {"type": "string", "example": "whsec_..."}}},
        401,
        429,
    ),
    openapi_extra=REQUIRES_KEY,
)
async def default_secret(request: Request) -> JSONResponse:
    """The account's default secret: it signs the deliveries to tasks' ``callback_url``."""

    def secret(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        return {"key": webhooks.default_secret(ctx.db, principal.account_id)}

    return ok(await authenticated(request, secret, writes=True))


@router.delete(
    "/v1/webhooks/{webhook_id}",
    operation_id="remove_webhook",
    responses=envelope_schema(
        {"type": "object", "properties": {"id": {"type": "string"}, "deleted": {"const": True}}},
        401,
        404,
        429,
    ),
    openapi_extra=REQUIRES_KEY,
)
async def remove_webhook(request: Request, webhook_id: str) -> JSONResponse:
    """Remove an endpoint: nothing more is sent to it (its log stays readable until then)."""

    def remove(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        webhooks.remove_endpoint(ctx.db, principal.account_id, webhook_id)
        return {"id": webhook_id, "deleted": True}

    return ok(await authenticated(request, remove, writes=True))


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    operation_id="webhook_deliveries",
    responses=envelope_schema(
        {
            "type": "object",
            "properties": {
                "deliveries": {"type": "array", "items": DELIVERY},
                "has_more": {"type": "boolean"},
                "next": {
                    "type": ["integer", "null"],
                    "description": "pass as after= for the next page",
                },
            },
        },
        400,
        401,
        404,
        429,
    ),
    openapi_extra={
        **REQUIRES_KEY,
        "parameters": [
            LIMIT_PARAMETER,
            {
                "name": "after",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
            },
        ],
    },
)
async def webhook_deliveries(request: Request, webhook_id: str) -> JSONResponse:
    """An endpoint's deliveries (``default``: those to tasks' ``callback_url``), newest
    first, each with every try: time, HTTP status, latency, next try."""

    def page(ctx: AppContext, principal: Principal) -> dict[str, Any]:
        # After the key and the rate limit, as on every call.
        params = query(request, "limit", "after")
        count, after = page_size(params.get("limit")), params.get("after")
        since = None if after is None else whole_number(after)
        if after is not None and since is None:
            raise InvalidRequest("after must be the id of a delivery")
        rows, more = webhooks.deliveries(
            ctx.db, principal.account_id, webhook_id, limit=count, after=since
        )
        return {"deliveries": rows, "has_more": more, "next": rows[-1]["id"] if more else None}

    return ok(await authenticated(request, page, writes=False))
