"""The one place where exceptions become HTTP responses, all in the envelope."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    return JSONResponse(
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenImagineError)
    async def _ours(_request: Request, exc: OpenImagineError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(_from_http_exception(exc))
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return error_response(InvalidRequest(f"{where}: {first.get('msg', 'invalid value')}"))

    @app.exception_handler(OperationalError)
    async def _database(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc.orig)
        return error_response(
            ServiceUnavailable("Service unavailable, please try again later.")
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return error_response(InternalError("Internal server error"))
