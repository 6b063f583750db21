"""The one place where exceptions become HTTP responses: in the envelope, or in
OpenAI's error object on the OpenAI face (``/v1/videos...``), chosen by path."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from limits.errors import StorageError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from openimagine.api.envelope import EnvelopeResponse
from openimagine.api.openai.errors import openai_error_response
from openimagine.errors import (
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    ServiceUnavailable,
)

log = logging.getLogger("openimagine.api")

OPENAI_FACE = "/v1/videos"


def is_openai_path(path: str) -> bool:
    return path == OPENAI_FACE or path.startswith(OPENAI_FACE + "/")


def error_response(error: ServiceError, path: str = "") -> Response:
    if is_openai_path(path):
        return openai_error_response(error)
    retry_after = getattr(error, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return EnvelopeResponse(
        {"code": error.status, "message": error.public_message, "error": error.code},
        status_code=error.status,
        headers=headers,
    )


def _from_http_exception(exc: StarletteHTTPException) -> ServiceError:
    if exc.status_code == 404:
        return NotFound("Not found: no such endpoint")
    if exc.status_code == 405:
        return MethodNotAllowed("Method not allowed for this endpoint")
    if exc.status_code == 413:
        return PayloadTooLarge("Request body too large")
    if 400 <= exc.status_code < 500:
        return InvalidRequest(str(exc.detail))
    return InternalError("Internal server error")


def _from_validation(exc: RequestValidationError) -> ServiceError:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return InvalidRequest(f"{where}: {first.get('msg', 'invalid value')}")


def response_for(exc: Exception, path: str = "") -> Response:
    """The error answer for any exception a request to ``path`` raised (the handlers
    below, and the routes ``OpenImagineAPI`` serves directly, both answer through here)."""
    if isinstance(exc, ServiceError):
        return error_response(exc, path)
    if isinstance(exc, StarletteHTTPException):
        response = error_response(_from_http_exception(exc), path)
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if isinstance(exc, RequestValidationError):
        return error_response(_from_validation(exc), path)
    if isinstance(exc, OperationalError):
        log.error("database unavailable: %s", exc.orig)
        return error_response(
            ServiceUnavailable("Service unavailable, please try again later."), path
        )
    if isinstance(exc, StorageError):
        log.error("rate-limit storage unavailable: %s", exc.storage_error)
        return error_response(
            ServiceUnavailable("Service unavailable, please try again later."), path
        )
    log.exception("unexpected error", exc_info=exc)
    return error_response(InternalError("Internal server error"), path)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path: Starlette's 405 names
    only the first route that matched the path (``OPTIONS /v1/status``: GET, not POST)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> Response:
        response = response_for(exc, request.url.path)
        if response.status_code == 405 and (allowed := _allowed_methods(request)):
            response.headers["Allow"] = ", ".join(allowed)
        return response

    for kind in (
        ServiceError,
        StarletteHTTPException,
        RequestValidationError,
        OperationalError,
        StorageError,
        Exception,
    ):
        app.add_exception_handler(kind, handle)
