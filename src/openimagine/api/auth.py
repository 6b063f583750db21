"""Bearer authentication and the per-plan rate limit, as one dependency."""

from __future__ import annotations

from fastapi import Depends, Request

from openimagine.api.context import AppContext, get_context
from openimagine.api.middleware import RATELIMIT_STATE
from openimagine.errors import RateLimited, Unauthorized
from openimagine.services.accounts import Principal, authenticate


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_principal(request: Request, ctx: AppContext = Depends(get_context)) -> Principal:
    """Runs in the thread pool: one database read and the limiter's hits."""
    address = request.client.host if request.client else "unknown"
    blocked = ctx.limiter.auth_blocked(address)
    if blocked is not None:
        raise RateLimited(
            "Too many failed authentication attempts, please try again later",
            retry_after=blocked.retry_after,
        )
    token = _bearer(request)
    principal = None
    if token is not None:
        with ctx.db.read() as session:
            principal = authenticate(session, token)
    if principal is None:
        ctx.limiter.record_auth_failure(address)
        if token is None:
            raise Unauthorized("Unauthorized: missing Authorization: Bearer <key> header")
        raise Unauthorized("Unauthorized: invalid or revoked API key")
    window = ctx.limiter.hit_account(principal.account_id, principal.plan)
    request.state.__setattr__(RATELIMIT_STATE, window.headers)
    if not window.allowed:
        raise RateLimited(
            f"Rate limit exceeded: {window.limit} requests per minute on the "
            f"{principal.plan} plan",
            retry_after=window.retry_after,
        )
    return principal
