"""The error tree. Each class knows its HTTP status and wire code; ``api/errors.py``
turns any of them into the contract's envelope in one place."""

from __future__ import annotations


class ServiceError(Exception):
    status: int = 500
    code: str = "INTERNAL_ERROR"
    prefix: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def public_message(self) -> str:
        return f"{self.prefix}{self.message}"


class InvalidRequest(ServiceError):
    status, code, prefix = 400, "INVALID_REQUEST", "Invalid request: "


class Unauthorized(ServiceError):
    status, code = 401, "UNAUTHORIZED"


class InsufficientCredits(ServiceError):
    status, code = 402, "INSUFFICIENT_CREDITS"


class Forbidden(ServiceError):
    status, code = 403, "FORBIDDEN"


class NotFound(ServiceError):
    status, code = 404, "NOT_FOUND"


class MethodNotAllowed(ServiceError):
    # Not in the contract's table; it still uses the envelope (see CONTRACT.md).
    status, code = 405, "METHOD_NOT_ALLOWED"


class Conflict(ServiceError):
    # A request that cannot run now: its Idempotency-Key is held by a request still
    # running, or it would cancel a finished task. Clients may retry the first kind.
    status, code = 409, "CONFLICT"


class IdempotencyKeyReused(ServiceError):
    status, code = 422, "IDEMPOTENCY_KEY_REUSED"


class PayloadTooLarge(ServiceError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class RateLimited(ServiceError):
    status, code = 429, "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class TooManyTasks(ServiceError):
    """The account has as many unfinished tasks as its plan allows (nothing was debited)."""

    status, code = 429, "TOO_MANY_TASKS"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class InternalError(ServiceError):
    status, code = 500, "INTERNAL_ERROR"


class ServiceUnavailable(ServiceError):
    status, code = 503, "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        # Sent as ``Retry-After`` when known (a full queue); None for an outage.
        self.retry_after = None if retry_after is None else max(1, retry_after)


class AccountNotFound(LookupError):
    """An administrative lookup (CLI) named an account that does not exist."""


class KeyNotFound(LookupError):
    """An administrative lookup (CLI) named a key prefix that does not exist."""
