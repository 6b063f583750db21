"""The client's error tree, and the one map from an HTTP response to it.

Like openai-python's ``_exceptions.py``: every error the SDK raises is an
``OpenImagineError`` carrying the HTTP ``status`` (None when no response
came), the envelope's ``code`` (``"INVALID_REQUEST"``, ...) and ``message``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openimagine.client._models import Task


class OpenImagineError(Exception):
    """Base of every error raised by the SDK."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return self.message


class APIConnectionError(OpenImagineError):
    """No HTTP response: the server could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the client's timeout."""


class APIStatusError(OpenImagineError):
    """The server answered with an error status (4xx or 5xx)."""

    status: int

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message, status=status, code=code)


class InvalidRequestError(APIStatusError):
    """400 INVALID_REQUEST, or 413 PAYLOAD_TOO_LARGE."""


class AuthenticationError(APIStatusError):
    """401 UNAUTHORIZED: missing, unknown or revoked API key."""


class InsufficientCreditsError(APIStatusError):
    """402 INSUFFICIENT_CREDITS: the balance is below the price of one generation."""


class PermissionDeniedError(APIStatusError):
    """403 FORBIDDEN: e.g. a file URL whose signature is wrong or expired."""


class NotFoundError(APIStatusError):
    """404 NOT_FOUND: unknown task (or another account's), or unknown route."""


class RateLimitError(APIStatusError):
    """429 RATE_LIMITED. ``retry_after`` is the server's wait in seconds, when it said."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the server failed (500) or cannot take work right now (503)."""


class TaskFailedError(OpenImagineError):
    """The task ended ``failed``; ``error_message`` is the server's reason."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.error_message = task.error_message or "unknown error"
        super().__init__(f"task {task.task_id} failed: {self.error_message}", code="TASK_FAILED")


class TaskTimeoutError(OpenImagineError, TimeoutError):
    """``generate_and_wait`` gave up before the task finished (the task goes on)."""

    def __init__(self, task: Task, timeout: float) -> None:
        self.task = task
        self.timeout = timeout
        super().__init__(
            f"task {task.task_id} still {task.status} after {timeout:g}s", code="TIMEOUT"
        )


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def make_status_error(
    status: int, message: str, code: str | None, *, retry_after: float | None = None
) -> APIStatusError:
    """The one status-to-exception map."""
    if status == 429:
        return RateLimitError(message, status=status, code=code, retry_after=retry_after)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIStatusError
    return cls(message, status=status, code=code)
