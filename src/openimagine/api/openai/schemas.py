"""What the OpenAPI document says of the OpenAI face: the Video object, the list
page, the deleted object, the error object, and the create body (multipart or
JSON). Shapes follow the openai SDK's ``types/video*.py``."""

from __future__ import annotations

from typing import Any

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string", "examples": ["invalid_request_error"]},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        },
    }},
}
VIDEO: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "model", "status", "progress", "created_at", "seconds", "size"],
    "properties": {
        "id": {"type": "string", "description": "the task id (also GET /v1/status?task_id=)"},
        "object": {"const": "video"},
        "model": {"type": "string"},
        "status": {"enum": ["queued", "in_progress", "completed", "failed"]},
        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        "created_at": {"type": "integer"},
        "completed_at": {"type": ["integer", "null"]},
        "expires_at": {"type": ["integer", "null"]},
        "prompt": {"type": ["string", "null"]},
        "seconds": {"type": "string"},
        "size": {"type": "string", "examples": ["1280x720"]},
        "remixed_from_video_id": {"type": ["string", "null"]},
        "error": {"oneOf": [{"type": "null"}, {
            "type": "object",
            "properties": {
                "code": {"enum": ["moderation_blocked", "invalid_input", "network_error",
                                  "video_build_failed", "cancelled"]},
                "message": {"type": "string"},
            },
        }]},
    },
}
LIST: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data", "has_more"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": VIDEO},
        "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]},
        "has_more": {"type": "boolean"},
    },
}
DELETED: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "deleted"],
    "properties": {"id": {"type": "string"}, "object": {"const": "video.deleted"},
                   "deleted": {"const": True}},
}
_CREATE_FIELDS: dict[str, Any] = {
    "prompt": {"type": "string", "minLength": 1, "maxLength": 32000},
    "model": {"type": "string", "description": "one of GET /v1/models (default: the default)"},
    "seconds": {"type": "string", "examples": ["4", "8", "12"]},
    "size": {"type": "string", "examples": ["720x1280", "1280x720"]},
}
CREATE_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["prompt"],
            "properties": {**_CREATE_FIELDS,
                           "input_reference": {"type": "string", "format": "binary"},
                           "input_reference[image_url]": {"type": "string"}},
        }},
        "application/json": {"schema": {
            "type": "object", "required": ["prompt"],
            "properties": {**_CREATE_FIELDS, "input_reference": {
                "type": "object", "properties": {"image_url": {"type": "string"}}}},
        }},
    },
}
REMIX_BODY: dict[str, Any] = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["prompt"],
        "properties": {"prompt": _CREATE_FIELDS["prompt"]},
    }}},
}
CONTENT: dict[int | str, dict[str, Any]] = {200: {
    "description": "the video (Range requests work), thumbnail or spritesheet",
    "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}},
                "image/webp": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
}}
_REASONS = {400: "invalid request", 401: "missing or invalid API key",
            402: "insufficient credits", 404: "no such video", 409: "already finished",
            413: "body too large",
            429: "rate limit or too many tasks", 500: "server error",
            503: "service unavailable"}


def responses(success: dict[str, Any] | None, *errors: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answers of an operation: ``success`` (200) and each error status as an
    OpenAI error object (500 and 503 can always happen)."""
    answers: dict[int | str, dict[str, Any]] = {}
    if success is not None:
        answers[200] = {"description": "success",
                        "content": {"application/json": {"schema": success}}}
    for status in (*errors, 500, 503):
        answers[status] = {"description": _REASONS[status],
                           "content": {"application/json": {"schema": ERROR}}}
    return answers
