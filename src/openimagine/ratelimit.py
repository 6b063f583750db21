"""Per-account request limits by plan, and per-address limits on failed
authentication, with the ``limits`` library.

The sliding-window counter costs O(1) per hit in every storage (a moving
window keeps one timestamp per request). The storage is a URL: ``memory://``
in one process, ``redis://...`` to share limits between API replicas.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from openimagine.settings import Settings


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
        self.storage = storage_from_string(settings.ratelimit_url, **options)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.plans = {plan: RateLimitItemPerMinute(n) for plan, n in settings.rate_limits.items()}
        self.auth_failures = RateLimitItemPerMinute(settings.auth_failure_limit)
        # Memory storage answers without I/O; any other storage is a network hop.
        self.in_process = settings.ratelimit_url.startswith("memory://")

    def _window(self, item: RateLimitItemPerMinute, key: str, allowed: bool) -> Window:
        stats = self.limiter.get_window_stats(item, key)
        # The sliding-window counter weighs the previous window by the share
        # of the current one still to run; windows are aligned to multiples
        # of the period. The limit is whole again once no hit weighs: at the
        # end of the current window if only the previous one has hits, one
        # period later if the current one has some.
        period = item.get_expiry()
        now = time.time()
        left = period - now % period
        previous, _, current, _ = self.storage.get_sliding_window(item.key_for(key), period)
        full_in = left + period if current else left if previous else 0.0
        return Window(allowed, item.amount, max(0, stats.remaining), math.ceil(now + full_in),
                      stats.reset_time)

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
