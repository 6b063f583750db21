"""What the routes share: built once by ``create_app`` from the settings."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request

from openimagine.engines.base import EngineInfo
from openimagine.ratelimit import RateLimiter
from openimagine.settings import Settings
from openimagine.storage import Storage
from openimagine.store.db import Database
from openimagine.worker.dispatch import Dispatcher, WakeupDispatcher


@dataclass
class AppContext:
    settings: Settings
    db: Database
    storage: Storage
    limiter: RateLimiter
    engine: EngineInfo
    # Blocking work of requests (database, Redis limiter) runs here.
    executor: ThreadPoolExecutor
    # Set on every submission so that an in-process worker starts at once
    # instead of waiting for its next poll.
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Tells the workers about a new task, after its commit: the wakeup event
    # (embedded) or a Celery message (with a broker).
    dispatcher: Dispatcher = field(default_factory=WakeupDispatcher)


    @property
    def nonblocking_reads(self) -> bool:
        return self.db.is_sqlite and self.limiter.in_process


def get_context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]
