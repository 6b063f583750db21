"""What the OpenAPI document says of the OpenAI face: the Video object, the list
page, the deleted object, the error object, and the create body (multipart or
JSON). Shapes follow the openai SDK's ``types/video*.py``."""

from __future__ import annotations

from typing import Any

from openimagine.api.bodies import text_schema
from openimagine.api.envelope import error_answers
from openimagine.api.openai import videos
from openimagine.api.openapi import CATALOG
from openimagine.inputs.refs import image_ref_schema, url_schema
from openimagine.services import webhooks

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "examples": ["invalid_request_error"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
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
        "error": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "properties": {
                        "code": {
                            "enum": [
                                "moderation_blocked",
                                "invalid_input",
                                "network_error",
                                "video_build_failed",
                                "cancelled",
                            ]
                        },
                        "message": {"type": "string"},
                    },
                },
            ]
        },
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
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "video.deleted"},
        "deleted": {"const": True},
    },
}
# The rules come from where the server checks them (``videos.py``, ``bodies.py``,
# ``inputs.refs``, ``webhooks``); the models from the catalog (``api/openapi.py``).
WEBHOOK: dict[str, Any] = {
    **url_schema(webhooks.MAX_URL_LENGTH),
    "description": "openimagine extension: an http(s) URL told when this video ends "
    "(video.completed / video.failed); not a loopback, private or "
    "link-local address unless OPENIMAGINE_ALLOW_PRIVATE_URLS",
}
# In JSON bodies, null is as good as leaving a field out.
WEBHOOK_OR_NULL: dict[str, Any] = {"anyOf": [WEBHOOK, {"type": "null"}]}
_CREATE_FIELDS: dict[str, Any] = {
    "prompt": text_schema(videos.MAX_PROMPT),
    "model": {
        "type": "string",
        CATALOG: "models",
        "description": "one of GET /v1/models (default: the default)",
    },
    "size": {
        "type": "string",
        "pattern": videos.SIZE_PATTERN,
        "examples": ["720x1280", "1280x720"],
        "description": "WIDTHxHEIGHT (default: 9:16 at the model's resolution)",
    },
    "webhook": WEBHOOK,
}
_SECONDS: dict[str, Any] = {
    "type": "string",
    "pattern": videos.SECONDS_PATTERN,
    "examples": ["4", "8", "12"],
}
CREATE_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    **_CREATE_FIELDS,
                    "seconds": _SECONDS,
                    # Not documented: the field input_reference[image_url] (a URL
                    # instead of the file; both at once is 400), which the one
                    # schema of a form cannot make exclusive of the file.
                    "input_reference": {
                        "type": "string",
                        "format": "binary",
                        "description": "a JPEG, PNG or WebP image",
                    },
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    **_CREATE_FIELDS,
                    "model": {"anyOf": [{"type": "string"}, {"type": "null"}], CATALOG: "models"},
                    "webhook": WEBHOOK_OR_NULL,
                    "size": {"anyOf": [_CREATE_FIELDS["size"], {"type": "null"}]},
                    "seconds": {
                        "anyOf": [
                            _SECONDS,
                            {"type": "integer", "minimum": 1, "maximum": videos.MAX_SECONDS},
                            {"type": "null"},
                        ]
                    },
                    "input_reference": {
                        "anyOf": [
                            {
                                "type": "object",
                                "properties": {
                                    "image_url": {"anyOf": [image_ref_schema(), {"type": "null"}]}
                                },
                            },
                            {"type": "null"},
                        ]
                    },
                },
            }
        },
    },
}
REMIX_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "properties": {"prompt": _CREATE_FIELDS["prompt"], "webhook": WEBHOOK_OR_NULL},
            }
        }
    },
}
CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the video (Range requests work), thumbnail or spritesheet",
        "content": {
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def responses(success: dict[str, Any] | None, *errors: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answers of an operation: ``success`` (200) and each error status as an
    OpenAI error object (500 and 503 can always happen)."""
    answers: dict[int | str, dict[str, Any]] = {}
    if success is not None:
        answers[200] = {
            "description": "success",
            "content": {"application/json": {"schema": success}},
        }
    return {**answers, **error_answers(ERROR, *errors)}
