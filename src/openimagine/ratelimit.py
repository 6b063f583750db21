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
    reset: int  # epoch seconds

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset - time.time()))


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.storage = storage_from_string(settings.ratelimit_url)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.plans = {plan: RateLimitItemPerMinute(n) for plan, n in settings.rate_limits.items()}
        self.auth_failures = RateLimitItemPerMinute(settings.auth_failure_limit)
        # Memory storage answers without I/O; any other storage is a network hop.
        self.in_process = settings.ratelimit_url.startswith("memory://")

    def _window(self, item: RateLimitItemPerMinute, key: str, allowed: bool) -> Window:
        stats = self.limiter.get_window_stats(item, key)
        return Window(allowed, item.amount, max(0, stats.remaining), math.ceil(stats.reset_time))

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
