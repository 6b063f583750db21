"""Per-account request limits by plan, and per-address limits on failed
authentication, with the ``limits`` library.

The sliding-window counter costs O(1) per hit in every storage (a moving
window keeps one timestamp per request). The storage is a URL: ``memory://``
in one process, ``redis://...`` to share limits between API replicas.
"""

from __future__ import annotations

import math
import threading
import time
from typing import NamedTuple

from limits import RateLimitItemPerMinute
from limits.storage import (
    MemoryStorage,
    SlidingWindowCounterSupport,
    Storage,
    storage_from_string,
)
from limits.strategies import SlidingWindowCounterRateLimiter

from openimagine.settings import Settings


class QuietMemoryStorage(MemoryStorage):
    """limits' memory storage, purging expired keys from one thread once a second.

    The stock storage starts a new ``threading.Timer`` every 10 ms while hits
    arrive; under load that took about a fifth of the event loop's time
    (thread starts and their locks). Expiry itself is checked on every read,
    so purging is only about memory and can wait a second.
    """

    PURGE_SECONDS = 1.0

    def __init__(self) -> None:
        super().__init__()
        threading.Thread(target=self._purge_forever, name="ratelimit-purge", daemon=True).start()

    def _MemoryStorage__schedule_expiry(self) -> None:  # the stock per-hit timer: off
        pass

    def _purge_forever(self) -> None:
        while True:
            time.sleep(self.PURGE_SECONDS)
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class Window(NamedTuple):
    allowed: bool
    limit: int
    remaining: int
    # Epoch seconds at which the whole limit is available again (the header).
    reset: int
    # Epoch seconds at which the next single request is allowed (Retry-After).
    next_allowed: float

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The contract's ``X-RateLimit-*`` headers, as ASGI header pairs."""
        return [
            (b"x-ratelimit-limit", b"%d" % self.limit),
            (b"x-ratelimit-remaining", b"%d" % self.remaining),
            (b"x-ratelimit-reset", b"%d" % self.reset),
        ]

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.next_allowed - time.time()))


# Addresses with recent failed authentications the in-memory limiter keeps in mind.
FAILED_ADDRESSES_KEPT = 100_000
# Longest wait for the shared limit storage before a request fails with 503.
STORAGE_TIMEOUT_SECONDS = 2.0


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        options: dict[str, float | str | bool] = (
            {"key_prefix": settings.ratelimit_prefix} if settings.ratelimit_prefix else {}
        )
        if settings.ratelimit_url.startswith("redis"):
            # A Redis that stopped answering must fail requests fast, not hold
            # them for the operating system's TCP timeouts (minutes).
            options.update(
                socket_connect_timeout=STORAGE_TIMEOUT_SECONDS,
                socket_timeout=STORAGE_TIMEOUT_SECONDS,
            )
        # wrap_exceptions: a storage that cannot be reached (Redis down)
        # raises limits' StorageError, which the API answers with a 503.
        storage = (
            QuietMemoryStorage()
            if settings.ratelimit_url.startswith("memory://")
            else storage_from_string(settings.ratelimit_url, wrap_exceptions=True, **options)
        )
        if not isinstance(storage, Storage) or not isinstance(storage, SlidingWindowCounterSupport):
            raise ValueError(
                f"{settings.ratelimit_url}: a synchronous storage with the "
                "sliding-window counter is needed (memory://, redis://, ...)"
            )
        self.storage: Storage = storage
        self._windows: SlidingWindowCounterSupport = storage  # the same object
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.plans = {plan: RateLimitItemPerMinute(n) for plan, n in settings.rate_limits.items()}
        self.auth_failures = RateLimitItemPerMinute(settings.auth_failure_limit)
        # Memory storage answers without I/O; any other storage is a network hop.
        self.in_process = settings.ratelimit_url.startswith("memory://")
        # limits' storage key per (limit, identifier), built once: ``key_for``
        # would run on every request otherwise.
        self._keys: dict[tuple[int, str], str] = {}
        # With memory storage only this process records failed attempts, so an
        # address it has not seen fail within two windows (the longest a
        # sliding-window counter remembers a hit) cannot be blocked: nearly
        # every request skips that lookup. Another storage is shared: always ask.
        self._failed_lately: dict[str, float] | None = {} if self.in_process else None
        self._failures_weigh_for = 2 * self.auth_failures.get_expiry()

    def _storage_key(self, item: RateLimitItemPerMinute, identifier: str) -> str:
        key = self._keys.get((id(item), identifier))
        if key is None:
            if len(self._keys) >= 100_000:  # accounts and addresses come and go
                self._keys.clear()
            key = self._keys[(id(item), identifier)] = item.key_for(identifier)
        return key

    def _window(
        self, item: RateLimitItemPerMinute, identifier: str, allowed: bool | None = None
    ) -> Window:
        """The headers' figures from one storage read (a Redis round trip).
        ``allowed`` None: whether one more request would fit now."""
        # The sliding-window counter weighs the previous window by the share
        # of the current one still to run; windows are aligned to multiples of
        # the period (the same arithmetic as limits' own test and
        # get_window_stats). The limit is whole again once no hit weighs: at
        # the end of the current window if only the previous one has hits,
        # one period later if the current one has some.
        period = item.get_expiry()
        previous, previous_ttl, current, _ = self._windows.get_sliding_window(
            self._storage_key(item, identifier), period
        )
        now = time.time()
        left = period - now % period
        used = math.floor(previous * previous_ttl / period + current)
        full_in = left + period if current else left if previous else 0.0
        if allowed is None:
            allowed = used < item.amount
        # Only a refused request needs the time the next one fits.
        next_allowed = (
            now if allowed else self.limiter.get_window_stats(item, identifier).reset_time
        )
        return Window(
            allowed, item.amount, max(0, item.amount - used), math.ceil(now + full_in), next_allowed
        )

    def hit_account(self, account_id: int, plan: str) -> Window:
        item = self.plans[plan]
        identifier = f"account:{account_id}"
        # The strategy's ``hit``, with the key built once.
        allowed = self._windows.acquire_sliding_window_entry(
            self._storage_key(item, identifier), item.amount, item.get_expiry()
        )
        return self._window(item, identifier, allowed)

    def auth_blocked(self, address: str) -> Window | None:
        """The address's window when it has used up its failed attempts, else None."""
        if self._failed_lately is not None:
            failed_at = self._failed_lately.get(address)
            if failed_at is None or time.time() - failed_at > self._failures_weigh_for:
                return None
        window = self._window(self.auth_failures, f"authfail:{address}")
        return None if window.allowed else window

    def record_auth_failure(self, address: str) -> None:
        failed_lately = self._failed_lately
        if failed_lately is not None:
            now = time.time()
            if len(failed_lately) >= FAILED_ADDRESSES_KEPT:  # drop what no longer weighs
                # A copy first: API threads record failures concurrently.
                failed_lately = {
                    a: t
                    for a, t in list(failed_lately.items())
                    if now - t <= self._failures_weigh_for
                }
                # Still full (a spray from many addresses): stop remembering and
                # ask the storage on every request, rather than prune each time.
                self._failed_lately = (
                    failed_lately if len(failed_lately) < FAILED_ADDRESSES_KEPT else None
                )
            if self._failed_lately is not None:
                self._failed_lately[address] = now
        self.limiter.hit(self.auth_failures, f"authfail:{address}")

    def reset(self) -> None:
        self.storage.reset()
        self._failed_lately = {} if self.in_process else None
