"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on every request):
the request body cap, and the rate-limit headers that authentication leaves
in the request state."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openimagine.api.errors import error_response, is_openai_path
from openimagine.errors import PayloadTooLarge

# Where authentication leaves the rate-limit headers (ASGI header pairs) in
# the request state, for whatever sends the response to add.
RATELIMIT_STATE = "ratelimit_headers"


def ratelimit_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The ``X-RateLimit-*`` headers authentication left, and on the OpenAI face
    OpenAI's ``x-ratelimit-*-requests`` beside them (the same budget)."""
    headers: list[tuple[bytes, bytes]] = scope.get("state", {}).get(RATELIMIT_STATE) or []
    if headers and is_openai_path(scope.get("path", "")):
        values = dict(headers)
        reset_in = max(0, int(values[b"x-ratelimit-reset"]) - int(time.time()))
        headers = [
            *headers,
            (b"x-ratelimit-limit-requests", values[b"x-ratelimit-limit"]),
            (b"x-ratelimit-remaining-requests", values[b"x-ratelimit-remaining"]),
            (b"x-ratelimit-reset-requests", b"%ds" % reset_in),
        ]
    return headers


class EnvelopeMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(
            f"Request body too large: the limit is {self.max_body_bytes} bytes"
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await error_response(too_large, scope["path"])(scope, receive, send)
                return

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise too_large
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = ratelimit_headers(scope)
                if extra:
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, capped_receive, send_with_headers)
