"""OpenAI's error object for every error on ``/v1/videos``: the openai SDK picks its
exception class by the HTTP status, and reads ``type`` and ``code``."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from openimagine.errors import ServiceError

# HTTP status -> (type, code) as OpenAI's API answers them.
KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_quota"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "payload_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
# Codes of our own errors that say more than the status alone.
CODES = {"TOO_MANY_TASKS": "too_many_tasks"}


def openai_error_body(error: ServiceError) -> dict:
    kind, code = KINDS.get(error.status, ("server_error", None))
    return {
        "error": {
            "message": error.public_message,
            "type": kind,
            "param": getattr(error, "param", None),
            "code": CODES.get(error.code, code),
        }
    }


def openai_error_response(error: ServiceError) -> Response:
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        # Both: the SDK prefers the millisecond header, proxies know the standard one.
        headers["Retry-After"] = str(retry_after)
        headers["retry-after-ms"] = str(int(retry_after * 1000))
    return Response(
        orjson.dumps(openai_error_body(error)),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )
