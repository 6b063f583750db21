"""What the sync and async clients share: configuration, the retry policy,
request bodies and response parsing. No I/O happens here.

Retry policy (``max_retries`` extra attempts, jittered exponential backoff):

- ``GET /v1/status``, ``GET /v1/account`` and downloads are reads: they are
  retried on any connection error or timeout, and on 408, 429, 500, 502, 503
  and 504.
- ``POST /v1/generate`` goes with an ``Idempotency-Key`` (a fresh UUID, or the
  caller's) that its retries reuse, so the server answers a retry with the
  first attempt's task and never bills twice: it is retried like a read, and
  on 409 (the first attempt is still being handled).
- On 429 and 503 the wait is the server's ``Retry-After`` (seconds or an HTTP
  date), else the time until ``X-RateLimit-Reset``; a wait over
  ``MAX_RETRY_AFTER`` seconds is not slept through: the error is raised.
"""

from __future__ import annotations

import base64
import email.utils
import json
import os
import random
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from openimagine import __version__
from openimagine.client._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InvalidRequestError,
    OpenImagineError,
    TaskFailedError,
    make_status_error,
)
from openimagine.client._models import Task
from openimagine.imagetypes import sniff_image_type

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# Longer server-requested waits are raised rather than slept through.
MAX_RETRY_AFTER = 60.0

ENV_BASE_URL = "OPENIMAGINE_BASE_URL"
ENV_API_KEY = "OPENIMAGINE_API_KEY"

RETRYABLE_READ_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Answers given before any work was done: safe to retry even for a POST.
REJECTED_BEFORE_WORK = frozenset({429, 503})

ImageInput = str | os.PathLike[str]
Images = ImageInput | Sequence[ImageInput] | None


def resolve_config(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    key = api_key or os.environ.get(ENV_API_KEY) or ""
    if not key.strip():
        raise OpenImagineError(
            f"no API key: pass api_key=... or set {ENV_API_KEY}", code="NO_API_KEY"
        )
    url = (base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL).strip()
    if not url.startswith(("http://", "https://")):
        raise OpenImagineError(
            f"base URL must start with http:// or https://, got {url!r}", code="BAD_BASE_URL"
        )
    return key.strip(), url.rstrip("/")


def download_headers() -> dict[str, str]:
    return {"User-Agent": f"openimagine-python/{__version__}"}


def default_headers(api_key: str) -> dict[str, str]:
    return {
        **download_headers(),
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
    }


# --- image references -------------------------------------------------------


def image_ref(value: ImageInput) -> str:
    """An ``http(s)`` URL or data URI as given; a local file as a data URI."""
    if isinstance(value, str) and value.startswith(("http://", "https://", "data:")):
        return value
    path = Path(value)
    if not path.is_file():
        raise InvalidRequestError(
            f"image {str(value)!r} is neither an http(s) URL, a data URI nor an existing file",
            status=400,
            code="INVALID_REQUEST",
        )
    data = path.read_bytes()
    kind = sniff_image_type(data)
    if kind is None:
        raise InvalidRequestError(
            f"image {str(path)!r} is not a JPEG, PNG or WebP file",
            status=400,
            code="INVALID_REQUEST",
        )
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def generate_body(
    prompt: str, *, mode: str | None, ratio: str | None, images: Images
) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt}
    if mode is not None:
        body["mode"] = mode
    if ratio is not None:
        body["ratio"] = ratio
    if images is not None:
        items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if items:
            body["images"] = [image_ref(item) for item in items]
    return body


# --- responses --------------------------------------------------------------


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def effective_status(response: httpx.Response) -> int:
    """The HTTP status, or the envelope's ``code`` when a server reports an
    error only in the body of a 200."""
    status = response.status_code
    if status < 400:
        body = _json(response)
        code = body.get("code") if isinstance(body, dict) else None
        if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
            return code
    return status


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """``Retry-After`` (seconds or HTTP date), else ``X-RateLimit-Reset``."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            number = float(reset)
        except ValueError:
            return None
        # Epoch seconds (the contract); small numbers are read as a delay.
        return max(0.0, number - time.time()) if number > 1_000_000_000 else max(0.0, number)
    return None


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The mapped error for a response whose (effective) status is 4xx or 5xx."""
    status = effective_status(response)
    body = _json(response)
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        text = response.text.strip()[:200] if response.text else ""
        message = f"HTTP {status}: {text}" if text else f"HTTP {status} {response.reason_phrase}"
    code = body.get("error") if isinstance(body, dict) else None
    retry_after = retry_after_seconds(response.headers) if status == 429 else None
    return make_status_error(
        status, message, code if isinstance(code, str) else None, retry_after=retry_after
    )


def raise_for_response(response: httpx.Response) -> dict[str, Any]:
    """The envelope's ``data``, or the mapped error."""
    if effective_status(response) >= 400:
        raise error_from_response(response)
    body = _json(response)
    if not isinstance(body, dict):
        raise APIStatusError(
            f"unexpected response from {response.request.url}: not JSON",
            status=response.status_code,
        )
    data = body.get("data")
    return data if isinstance(data, dict) else {}


# --- retries ----------------------------------------------------------------


def backoff(attempt: int) -> float:
    """Jittered exponential backoff: 0.5 s, 1 s, 2 s ... up to 8 s, minus up to 25%."""
    delay = min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())


def never_sent(error: Exception) -> bool:
    """True when the request provably did not reach the server."""
    return isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))


def retry_delay_after_error(
    error: Exception, *, attempt: int, max_retries: int, idempotent: bool
) -> float | None:
    """Seconds to wait before retrying after a transport error, or None to raise."""
    if attempt >= max_retries:
        return None
    if never_sent(error) or (idempotent and isinstance(error, httpx.TransportError)):
        return backoff(attempt)
    return None


def retry_delay_after_response(
    response: httpx.Response,
    *,
    attempt: int,
    max_retries: int,
    idempotent: bool,
    keyed: bool = False,
) -> float | None:
    """Seconds to wait before retrying after this response, or None to stop."""
    if attempt >= max_retries:
        return None
    status = effective_status(response)
    retryable = (
        RETRYABLE_KEYED_STATUSES
        if keyed
        else (RETRYABLE_READ_STATUSES if idempotent else REJECTED_BEFORE_WORK)
    )
    if status not in retryable:
        return None
    if status in REJECTED_BEFORE_WORK:
        wait = retry_after_seconds(response.headers)
        if wait is not None:
            if wait > MAX_RETRY_AFTER:
                return None
            # A little jitter on top, so that clients told the same second
            # do not all come back at once.
            return wait + random.uniform(0, 0.1 * max(wait, 1.0))
    return backoff(attempt)


def connection_error(error: Exception, url: object) -> APIConnectionError:
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"request to {url} timed out")
    return APIConnectionError(f"cannot reach {url}: {error or type(error).__name__}")


def download_path(directory: Path, task_id: str, index: int) -> Path:
    return directory / f"{task_id}-{index}.mp4"


def ensure_downloadable(task: Task) -> None:
    """Raise unless ``task`` is completed with at least one URL."""
    if task.failed:
        raise TaskFailedError(task)
    if not task.completed:
        raise OpenImagineError(
            f"task {task.task_id} is {task.status}: nothing to download yet", code="NOT_COMPLETED"
        )
    if task.files_expired:
        raise OpenImagineError(
            f"task {task.task_id}'s files expired: the server's retention deleted them",
            code="FILES_EXPIRED",
        )


IDEMPOTENCY_HEADER = "Idempotency-Key"
# A keyed submit may be retried after any failure: the key makes a second
# attempt answer the first one's task. 409: the first attempt is still running.
RETRYABLE_KEYED_STATUSES = RETRYABLE_READ_STATUSES | {409}
STREAM_PATH = "/v1/status/stream"
# The server sends a comment every 15 s; a stream silent for longer is dead.
STREAM_READ_TIMEOUT = 45.0


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


class SSEParser:
    """Server-sent events, a line at a time: ``feed`` returns the data of each
    ``status`` event (parsed JSON) once its blank line arrives."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        if line == "":
            event, data = self._event, self._data
            self._event, self._data = "message", []
            if event == "status" and data:
                parsed: dict[str, Any] = json.loads("\n".join(data))
                return parsed
            return None
        if line.startswith(":"):
            return None  # a keep-alive comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None
