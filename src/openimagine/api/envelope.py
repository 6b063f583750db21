"""The success half of the envelope (errors are in ``api/errors.py``)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class EnvelopeResponse(JSONResponse):
    """Every answer of the API, success and error alike. orjson writes the same
    compact UTF-8 JSON as Starlette's encoder at a fraction of the cost, which
    showed on status polls."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def ok(data: Any) -> JSONResponse:
    return EnvelopeResponse({"code": 200, "message": "success", "data": data})


# The error statuses an operation may answer, as OpenAPI describes them.
ERROR_REASONS = {
    400: "invalid request",
    401: "missing, invalid or revoked API key",
    402: "insufficient credits",
    403: "bad or expired signature",
    404: "not found",
    409: "conflict: already finished, or the Idempotency-Key is in use",
    413: "body or input image too large",
    422: "Idempotency-Key reused for another request",
    429: "rate limit, failed-authentication limit or too many unfinished tasks",
    500: "server error",
    503: "service unavailable (database, rate-limit storage, full queue)",
}

# The error half of the envelope (``api/errors.py`` writes it).
ERROR_ENVELOPE: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message", "error"],
    "properties": {
        "code": {"type": "integer", "description": "the HTTP status", "example": 400},
        "message": {"type": "string"},
        "error": {"type": "string", "example": "INVALID_REQUEST"},
    },
}


def error_answers(schema: dict[str, Any], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answers for each of ``statuses``, and 500 and 503 (any operation can
    answer those), whose body is ``schema``: the envelope here, OpenAI's error object
    on the OpenAI face."""
    return {
        status: {
            "description": ERROR_REASONS[status],
            "content": {"application/json": {"schema": schema}},
        }
        for status in (*statuses, 500, 503)
    }


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a required JSON body of ``schema`` (routes read their
    bodies themselves, so FastAPI cannot infer it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def envelope_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``error_answers`` in the envelope ``{"code","message","error"}``."""
    return error_answers(ERROR_ENVELOPE, *statuses)


def envelope_schema(data_schema: dict[str, Any], *errors: int) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI response description for ``{"code","message","data"}``, and
    ``envelope_errors(*errors)`` beside it."""
    success = {
        "type": "object",
        "required": ["code", "message", "data"],
        "properties": {
            "code": {"const": 200},
            "message": {"const": "success"},
            "data": data_schema,
        },
    }
    return {
        200: {"description": "success", "content": {"application/json": {"schema": success}}},
        **envelope_errors(*errors),
    }


def event_stream(description: str, data_schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI 200 answer of server-sent events: each a ``status`` event whose data
    is JSON matching ``data_schema`` (OpenAPI 3.1: ``schema`` describes one event)."""
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": "status"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data_schema,
            },
        },
    }
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event}}}}
