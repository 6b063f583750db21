"""The one place where exceptions become HTTP responses, all in the envelope."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from limits.errors import StorageError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from openimagine.api.envelope import EnvelopeResponse
from openimagine.errors import (
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    OpenImagineError,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
)

log = logging.getLogger("openimagine.api")


def error_response(error: OpenImagineError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, RateLimited) else None
    return EnvelopeResponse(
        {"code": error.status, "message": error.public_message, "error": error.code},
        status_code=error.status,
        headers=headers,
    )


def _from_http_exception(exc: StarletteHTTPException) -> OpenImagineError:
    if exc.status_code == 404:
        return NotFound("Not found: no such endpoint")
    if exc.status_code == 405:
        return MethodNotAllowed("Method not allowed for this endpoint")
    if exc.status_code == 413:
        return PayloadTooLarge("Request body too large")
    if 400 <= exc.status_code < 500:
        return InvalidRequest(str(exc.detail))
    return InternalError("Internal server error")


def _from_validation(exc: RequestValidationError) -> OpenImagineError:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return InvalidRequest(f"{where}: {first.get('msg', 'invalid value')}")


def response_for(exc: Exception) -> JSONResponse:
    """The envelope for any exception a request raised (the handlers below, and
    the routes ``OpenImagineAPI`` serves directly, both answer through here)."""
    if isinstance(exc, OpenImagineError):
        return error_response(exc)
    if isinstance(exc, StarletteHTTPException):
        response = error_response(_from_http_exception(exc))
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if isinstance(exc, RequestValidationError):
        return error_response(_from_validation(exc))
    if isinstance(exc, OperationalError):
        log.error("database unavailable: %s", exc.orig)
        return error_response(ServiceUnavailable("Service unavailable, please try again later."))
    if isinstance(exc, StorageError):
        log.error("rate-limit storage unavailable: %s", exc.storage_error)
        return error_response(ServiceUnavailable("Service unavailable, please try again later."))
    log.exception("unexpected error", exc_info=exc)
    return error_response(InternalError("Internal server error"))


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc)

    for kind in (OpenImagineError, StarletteHTTPException, RequestValidationError,
                 OperationalError, StorageError, Exception):
        app.add_exception_handler(kind, handle)
