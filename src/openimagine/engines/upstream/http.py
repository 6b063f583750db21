"""What every relay shares: calling an upstream with retries, and choosing among
a model's upstreams.

- ``Upstreams`` spreads a model's jobs over its ``base_urls`` by fewest jobs in
  flight, and skips an upstream that refused a connection or answered 5xx/429
  for a cool-down. One per model per process, shared by its running tasks.
- ``call`` sends one request and sorts the answer: ``Transient`` (connection
  errors, timeouts, 429, 5xx: worth retrying, with the server's Retry-After),
  ``Rejected`` (any other non-2xx: retrying will not help), or the response.
- ``backoff`` is full-jitter exponential backoff, never shorter than a
  Retry-After the upstream asked for, never past the task's deadline.

The API key travels only in the Authorization header, and only to the
upstream's own host (a video URL on a CDN gets none); ``scrub`` keeps it out
of every message that may reach a log or ``error_detail``.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

# How long an upstream that refused a connection or answered 5xx is skipped.
COOLDOWN_SECONDS = 15.0
# Backoff between retries: first about BASE, doubling, at most CAP seconds.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
# Per-request limits (the model's ``timeout`` bounds the whole task).
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
BODY_EXCERPT = 300


class Transient(Exception):
    """Worth retrying: the upstream was unreachable, slow, busy or broken for now."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        cool_down: bool = True,
        body: Any = None,
    ) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        # Connection refused and 5xx say "this server is down": skip it for a while.
        self.cool_down = cool_down
        # The JSON body of an HTTP answer (a 5xx may still describe a failed job).
        self.body = body


class Rejected(Exception):
    """A non-2xx answer that retrying will not change (4xx other than 429)."""

    def __init__(self, status: int, body: Any, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:BODY_EXCERPT]}")
        self.status = status
        self.body = body


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; raises ``Transient`` or ``Rejected`` for answers that are not 2xx."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise Transient(
            f"{method} {url}: timed out ({type(exc).__name__})", cool_down=False
        ) from None
    except httpx.TransportError as exc:
        raise Transient(f"{method} {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise Transient(
            f"{method} {url}: HTTP {response.status_code}: {response.text[:BODY_EXCERPT]}",
            retry_after=retry_after_seconds(response),
            body=json_body(response),
        )
    if response.status_code >= 400:
        raise Rejected(response.status_code, json_body(response), response.text)
    return response


def backoff(attempt: int, *, retry_after: float | None, deadline: float) -> float:
    """Seconds to wait before try ``attempt`` (1, 2, ...), within the deadline."""
    delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(0.0, min(delay, deadline - time.monotonic()))


def same_host(url: str, base_url: str) -> bool:
    left, right = urlsplit(url), urlsplit(base_url)
    return (left.scheme, left.netloc) == (right.scheme, right.netloc)


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


@dataclass
class _State:
    in_flight: int = 0
    down_until: float = 0.0


class Upstreams:
    """A model's base URLs: fewest jobs in flight first, skipping those cooling down."""

    def __init__(self, base_urls: tuple[str, ...]) -> None:
        self._states = {url: _State() for url in base_urls}
        self._lock = threading.Lock()

    def candidates(self) -> list[str]:
        """Up ones, least busy first; when all are cooling down, all of them (soonest up first)."""
        now = time.monotonic()
        with self._lock:
            items = list(self._states.items())
            up = [url for url, state in items if state.down_until <= now]
            if up:
                # Ties go to a random one, so idle upstreams share the work.
                return sorted(up, key=lambda url: (self._states[url].in_flight, random.random()))
            return [url for url, _ in sorted(items, key=lambda item: item[1].down_until)]

    def any_up(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(state.down_until <= now for state in self._states.values())

    def mark_down(self, url: str, seconds: float | None = None) -> None:
        with self._lock:
            if url in self._states:
                self._states[url].down_until = time.monotonic() + max(
                    COOLDOWN_SECONDS, seconds or 0.0
                )

    def started(self, url: str) -> None:
        with self._lock:
            if url in self._states:
                self._states[url].in_flight += 1

    def finished(self, url: str) -> None:
        with self._lock:
            if url in self._states:
                self._states[url].in_flight = max(0, self._states[url].in_flight - 1)


_registry: dict[str, Upstreams] = {}
_registry_lock = threading.Lock()


def upstreams_of(model_name: str, base_urls: tuple[str, ...]) -> Upstreams:
    """The process-wide ``Upstreams`` of a model (shared by its tasks and by the models
    that fall back to it)."""
    with _registry_lock:
        found = _registry.get(model_name)
        if found is None or set(found._states) != set(base_urls):
            found = _registry[model_name] = Upstreams(base_urls)
        return found


@dataclass(frozen=True)
class Link:
    """One upstream as a relay talks to it: its base URL and key, over a shared client."""

    client: httpx.Client
    base_url: str
    api_key: str | None
    # ``time.monotonic()`` by which the task must be done: no request waits past it.
    deadline: float

    def timeout(self) -> httpx.Timeout:
        left = max(0.1, self.deadline - time.monotonic())
        return httpx.Timeout(min(READ_TIMEOUT, left), connect=min(CONNECT_TIMEOUT, left))

    def headers(self, url: str) -> dict[str, str]:
        """The key, for the upstream's own host only (never for a CDN's video URL)."""
        if self.api_key and same_host(url, self.base_url):
            return {"Authorization": f"Bearer {self.api_key}"}
        return {}

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return call(
            self.client, method, url, headers=self.headers(url), timeout=self.timeout(), **kwargs
        )


def new_client() -> httpx.Client:
    # Timeouts are set per request (``Link.timeout``), within the task's deadline.
    return httpx.Client(follow_redirects=False)
