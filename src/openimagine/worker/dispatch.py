"""Telling workers that a task is waiting: the one call the API makes after a
submission commits.

- ``WakeupDispatcher`` (embedded): sets the asyncio event that the in-process
  worker pool sleeps on, so it claims at once instead of at its next poll.
- ``CeleryDispatcher`` (``OPENIMAGINE_BROKER_URL``): publishes a message with
  the task id to the engine's queue, ``openimagine.<engine>``.

A notice is only a hint: the database row is the truth. ``notify`` never
raises; a notice that is lost (broker down, publish failed) leaves the task
pending, and the workers' sweeper publishes it again (``worker/sweeper.py``).
A notice delivered twice is harmless: only one claim can win the row.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from celery import Celery  # type: ignore[import-untyped]

    from openimagine.settings import Settings

log = logging.getLogger("openimagine.dispatch")


class Dispatcher(Protocol):
    def notify(self, task_id: str, engine: str) -> None:
        """Tell the workers of ``engine`` that ``task_id`` is pending (after the commit)."""
        ...


class WakeupDispatcher:
    """Embedded: wake the in-process worker pool. Safe to call from any thread."""

    def __init__(self, event: asyncio.Event | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.event = event or asyncio.Event()
        self._loop = loop

    def notify(self, task_id: str, engine: str) -> None:
        if self._loop is None:
            self.event.set()
            return
        try:
            # asyncio.Event is not thread-safe; the API calls this from its thread pool.
            self._loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:
            pass  # the loop is closed: the server is shutting down


class CeleryDispatcher:
    """Publish ``openimagine.run(task_id)`` to the queue ``openimagine.<engine>``."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def notify(self, task_id: str, engine: str) -> None:
        from openimagine.worker.celery_app import TASK_NAME, queue_name

        try:
            self.app.send_task(TASK_NAME, args=[task_id], queue=queue_name(engine),
                               ignore_result=True)
        except Exception:
            log.warning("could not publish task %s; the sweeper will publish it again",
                        task_id, exc_info=True)

    def queue_depth(self, engine: str) -> int | None:
        """Messages ready in the engine's queue (0 if it does not exist yet); None if unknown."""
        from openimagine.worker.celery_app import queue_depth

        return queue_depth(self.app, engine)


def create_dispatcher(settings: Settings) -> Dispatcher:
    """Celery when a broker is configured; otherwise the embedded wakeup event."""
    if settings.broker_url:
        from openimagine.worker.celery_app import create_celery_app

        return CeleryDispatcher(create_celery_app(settings))
    return WakeupDispatcher()
