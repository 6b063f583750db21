"""What the routes share: built once by ``create_app`` from the settings."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request

from openimagine.api.stream import StatusHub
from openimagine.catalog import Catalog, Model
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
    catalog: Catalog
    # Blocking work of requests (database, Redis limiter) runs here.
    executor: ThreadPoolExecutor
    # Tells the workers about a new task, after its commit: the wakeup event
    # of the model's in-process claimer (embedded) or a Celery message (broker).
    dispatcher: Dispatcher = field(default_factory=WakeupDispatcher)
    # Live status streams of this process (``api/stream.py``).
    hub: StatusHub | None = None
    # What each model takes (modes, ratios, images), read once at start.
    infos: dict[str, EngineInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.infos = {model.name: model.info() for model in self.catalog.models.values()}

    def model(self, name: str | None) -> tuple[Model, EngineInfo]:
        """The model a request names (``None``: the default) and what it takes."""
        chosen = self.catalog.default if name is None else name
        return self.catalog.get(chosen), self.infos[chosen]

    @property
    def nonblocking_reads(self) -> bool:
        return self.db.is_sqlite and self.limiter.in_process

    @property
    def async_reads(self) -> bool:
        """Hot reads may await the database on the event loop (PostgreSQL through
        psycopg's async driver) and the limiter cannot block (in memory)."""
        return self.db.async_reads and self.limiter.in_process


def get_context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]
