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
from dataclasses import dataclass

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
        threading.Thread(target=self._purge_forever, name="ratelimit-purge",
                         daemon=True).start()

    def _MemoryStorage__schedule_expiry(self) -> None:  # the stock per-hit timer: off
        pass

    def _purge_forever(self) -> None:
        while True:
            time.sleep(self.PURGE_SECONDS)
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Window:
    allowed: bool
    limit: int
    remaining: int
    # Epoch seconds at which the whole limit is available again (the header).
    reset: int
    # Epoch seconds at which the next single request is allowed (Retry-After).
    next_allowed: float

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.next_allowed - time.time()))


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        options = {"key_prefix": settings.ratelimit_prefix} if settings.ratelimit_prefix else {}
        storage = (QuietMemoryStorage() if settings.ratelimit_url.startswith("memory://")
                   else storage_from_string(settings.ratelimit_url, **options))
        if not isinstance(storage, Storage) or not isinstance(storage,
                                                              SlidingWindowCounterSupport):
            raise ValueError(f"{settings.ratelimit_url}: a synchronous storage with the "
                             "sliding-window counter is needed (memory://, redis://, ...)")
        self.storage: Storage = storage
        self._windows: SlidingWindowCounterSupport = storage  # the same object
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.plans = {plan: RateLimitItemPerMinute(n) for plan, n in settings.rate_limits.items()}
        self.auth_failures = RateLimitItemPerMinute(settings.auth_failure_limit)
        # Memory storage answers without I/O; any other storage is a network hop.
        self.in_process = settings.ratelimit_url.startswith("memory://")

    def _window(self, item: RateLimitItemPerMinute, key: str, allowed: bool) -> Window:
        """The headers' figures from one storage read (a Redis round trip)."""
        # The sliding-window counter weighs the previous window by the share
        # of the current one still to run; windows are aligned to multiples of
        # the period (the same arithmetic as limits' own get_window_stats).
        # The limit is whole again once no hit weighs: at the end of the
        # current window if only the previous one has hits, one period later
        # if the current one has some.
        period = item.get_expiry()
        previous, previous_ttl, current, _ = self._windows.get_sliding_window(
            item.key_for(key), period)
        now = time.time()
        left = period - now % period
        used = math.floor(previous * previous_ttl / period + current)
        full_in = left + period if current else left if previous else 0.0
        # Only a refused request needs the time the next one fits.
        next_allowed = now if allowed else self.limiter.get_window_stats(item, key).reset_time
        return Window(allowed, item.amount, max(0, item.amount - used), math.ceil(now + full_in),
                      next_allowed)

    def hit_account(self, account_id: int, plan: str) -> Window:
        item = self.plans[plan]
        key = f"account:{account_id}"
        return self._window(item, key, self.limiter.hit(item, key))

    def auth_blocked(self, address: str) -> Window | None:
        """The address's window when it has used up its failed attempts, else None."""
        key = f"authfail:{address}"
        if self.limiter.test(self.auth_failures, key):
            return None
        return self._window(self.auth_failures, key, False)

    def record_auth_failure(self, address: str) -> None:
        self.limiter.hit(self.auth_failures, f"authfail:{address}")

    def reset(self) -> None:
        self.storage.reset()
