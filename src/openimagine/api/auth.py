"""Bearer authentication and the per-plan rate limit.

``authenticated`` runs the check and the route's own service call in ONE trip
to the thread pool: the database and a Redis limiter are blocking calls, and
each trip costs about as much as a cheap query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

from openimagine.api.context import AppContext, get_context
from openimagine.api.middleware import RATELIMIT_STATE
from openimagine.errors import RateLimited, Unauthorized
from openimagine.services.accounts import (
    Principal,
    authenticate,
    authenticate_with_summary_async,
    authenticate_with_task,
    authenticate_with_task_async,
)
from openimagine.store.db import Record

T = TypeVar("T")

# For the OpenAPI document only (the check itself is ``require_principal``): a
# FastAPI security dependency would cost every request a dependency solve.
BEARER_SCHEME = {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer oi_..."}
REQUIRES_KEY: dict[str, object] = {"security": [{"bearer": []}]}


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _check_address(ctx: AppContext, request: Request) -> str:
    address = request.client.host if request.client else "unknown"
    blocked = ctx.limiter.auth_blocked(address)
    if blocked is not None:
        raise RateLimited(
            "Too many failed authentication attempts, please try again later",
            retry_after=blocked.retry_after,
        )
    return address


def _admit(
    ctx: AppContext, request: Request, address: str, token: str | None, principal: Principal | None
) -> Principal:
    """Count a failed authentication, or the account's request against its plan."""
    if principal is None:
        ctx.limiter.record_auth_failure(address)
        if token is None:
            raise Unauthorized("Unauthorized: missing Authorization: Bearer <key> header")
        raise Unauthorized("Unauthorized: invalid or revoked API key")
    window = ctx.limiter.hit_account(principal.account_id, principal.plan)
    setattr(request.state, RATELIMIT_STATE, window.headers)
    if not window.allowed:
        raise RateLimited(
            f"Rate limit exceeded: {window.limit} requests per minute on the {principal.plan} plan",
            retry_after=window.retry_after,
        )
    return principal


def require_principal(ctx: AppContext, request: Request) -> Principal:
    """The calling account, after the failed-auth and plan limits; blocking."""
    address = _check_address(ctx, request)
    token = _bearer(request)
    principal = authenticate(ctx.db, token) if token is not None else None
    return _admit(ctx, request, address, token, principal)


def require_principal_and_task(
    ctx: AppContext, request: Request, task_id: str
) -> tuple[Principal, Record | None]:
    """``require_principal`` and the caller's task in one database round trip."""
    address = _check_address(ctx, request)
    token = _bearer(request)
    principal, task = (
        authenticate_with_task(ctx.db, token, task_id) if token is not None else (None, None)
    )
    return _admit(ctx, request, address, token, principal), task


async def require_principal_and_task_async(
    ctx: AppContext, request: Request, task_id: str
) -> tuple[Principal, Record | None]:
    """``require_principal_and_task`` on the event loop, without a thread: only
    where ``ctx.async_reads`` (PostgreSQL through psycopg, the in-memory limiter,
    whose checks are dict lookups)."""
    address = _check_address(ctx, request)
    token = _bearer(request)
    principal, task = (
        await authenticate_with_task_async(ctx.db, token, task_id)
        if token is not None
        else (None, None)
    )
    return _admit(ctx, request, address, token, principal), task


async def require_principal_with_summary_async(
    ctx: AppContext, request: Request
) -> tuple[Principal, dict]:
    """``require_principal`` and the account's ``summary`` in one round trip, on the
    event loop: only where ``ctx.async_reads`` (as ``require_principal_and_task_async``)."""
    address = _check_address(ctx, request)
    token = _bearer(request)
    principal, summary = (
        await authenticate_with_summary_async(ctx.db, token) if token is not None else (None, None)
    )
    admitted = _admit(ctx, request, address, token, principal)
    assert summary is not None  # admitted: the key named an account
    return admitted, summary


async def authenticated(
    request: Request, call: Callable[[AppContext, Principal], T], *, writes: bool
) -> T:
    """Authenticate, then ``call(ctx, principal)``.

    Reads run right on the event loop when nothing in them can block: SQLite in
    WAL mode never makes a reader wait, and the in-memory limiter is a dict.
    Everything else (writes, which may queue on SQLite's lock; PostgreSQL or
    Redis round trips) goes in one trip to the API's small thread pool. A hop
    per request costs more than the query itself, and threads waiting for the
    GIL behind each other add milliseconds to every response.
    """
    ctx = get_context(request)
    return await run_blocking(
        ctx, lambda: call(ctx, require_principal(ctx, request)), writes=writes
    )


async def run_blocking(ctx: AppContext, work: Callable[[], T], *, writes: bool) -> T:
    """On the event loop when nothing in ``work`` can block (see ``authenticated``),
    else in the API's thread pool."""
    if not writes and ctx.nonblocking_reads:
        return work()
    return await asyncio.get_running_loop().run_in_executor(ctx.executor, work)
