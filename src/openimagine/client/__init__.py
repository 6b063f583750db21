"""A Python client for openimagine, and for any Grok Imagine-compatible video API.

    from openimagine.client import Client

    client = Client(api_key="oi_...", base_url="http://127.0.0.1:8000")
    task = client.generate_and_wait("a beautiful landscape with mountains", mode="fun")
    paths = client.download(task, "videos")

``AsyncClient`` has the same methods, to ``await``. Errors are ``OpenImagineError``
subclasses chosen by HTTP status (see ``_errors.py``); which requests are
retried, and why ``generate`` is retried only when it provably was not
processed, is described in ``_base.py``.
"""

from openimagine.client._async_client import AsyncClient
from openimagine.client._base import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL
from openimagine.client._client import Client
from openimagine.client._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    OpenImagineError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
)
from openimagine.client._models import Account, RecentTask, Task, TaskRequest

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Account",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "NotFoundError",
    "OpenImagineError",
    "PermissionDeniedError",
    "RateLimitError",
    "RecentTask",
    "ServerError",
    "Task",
    "TaskFailedError",
    "TaskRequest",
    "TaskTimeoutError",
]
