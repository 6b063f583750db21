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
from fastapi.security import HTTPBearer

from openimagine.api.context import AppContext, get_context
from openimagine.api.middleware import RATELIMIT_STATE
from openimagine.errors import RateLimited, Unauthorized
from openimagine.services.accounts import Principal, authenticate

T = TypeVar("T")

# For the OpenAPI document only: the check itself is ``require_principal``.
bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer oi_...")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_principal(ctx: AppContext, request: Request) -> Principal:
    """The calling account, after the failed-auth and plan limits; blocking."""
    address = request.client.host if request.client else "unknown"
    blocked = ctx.limiter.auth_blocked(address)
    if blocked is not None:
        raise RateLimited(
            "Too many failed authentication attempts, please try again later",
            retry_after=blocked.retry_after,
        )
    token = _bearer(request)
    principal = authenticate(ctx.db, token) if token is not None else None
    if principal is None:
        ctx.limiter.record_auth_failure(address)
        if token is None:
            raise Unauthorized("Unauthorized: missing Authorization: Bearer <key> header")
        raise Unauthorized("Unauthorized: invalid or revoked API key")
    window = ctx.limiter.hit_account(principal.account_id, principal.plan)
    setattr(request.state, RATELIMIT_STATE, window.headers)
    if not window.allowed:
        raise RateLimited(
            f"Rate limit exceeded: {window.limit} requests per minute on the "
            f"{principal.plan} plan",
            retry_after=window.retry_after,
        )
    return principal


async def authenticated(request: Request, call: Callable[[AppContext, Principal], T], *,
                        writes: bool) -> T:
    """Authenticate, then ``call(ctx, principal)``.

    Reads run right on the event loop when nothing in them can block: SQLite in
    WAL mode never makes a reader wait, and the in-memory limiter is a dict.
    Everything else (writes, which may queue on SQLite's lock; PostgreSQL or
    Redis round trips) goes in one trip to the API's small thread pool. A hop
    per request costs more than the query itself, and threads waiting for the
    GIL behind each other add milliseconds to every response.
    """
    ctx = get_context(request)

    def work() -> T:
        return call(ctx, require_principal(ctx, request))

    if not writes and ctx.nonblocking_reads:
        return work()
    return await asyncio.get_running_loop().run_in_executor(ctx.executor, work)
