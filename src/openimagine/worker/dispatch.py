"""Telling workers that a task is waiting: the one call the API makes after a
submission commits.

- ``WakeupDispatcher`` (embedded): sets the asyncio event that the in-process
  claimer of the task's model sleeps on, so it claims at once instead of at
  its next poll.
- ``CeleryDispatcher`` (``OPENIMAGINE_BROKER_URL``): publishes a message with
  the task id to the model's queue, ``openimagine.<model>``.

A notice is only a hint: the database row is the truth. ``notify`` never
raises; a notice that is lost (broker down, publish failed) leaves the task
pending, and the workers' sweeper publishes it again (``worker/sweeper.py``).
A notice delivered twice is harmless: only one claim can win the row.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from openimagine.worker import queues

if TYPE_CHECKING:
    from celery import Celery  # type: ignore[import-untyped]

    from openimagine.settings import Settings

log = logging.getLogger("openimagine.dispatch")


class Dispatcher(Protocol):
    def notify(self, task_id: str, model: str) -> None:
        """Tell the workers of ``model`` that ``task_id`` is pending (after the commit)."""
        ...


class WakeupDispatcher:
    """Embedded: wake the in-process claimer of the task's model. Safe from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._events: dict[str, asyncio.Event] = {}

    def event(self, model: str) -> asyncio.Event:
        """The event ``model``'s claimer sleeps on."""
        return self._events.setdefault(model, asyncio.Event())

    def notify(self, task_id: str, model: str) -> None:
        event = self.event(model)
        if self._loop is None:
            event.set()
            return
        try:
            # asyncio.Event is not thread-safe; the API calls this from its thread pool.
            self._loop.call_soon_threadsafe(event.set)
        except RuntimeError:
            pass  # the loop is closed: the server is shutting down


class CeleryDispatcher:
    """Publish ``openimagine.run(task_id)`` to the queue ``openimagine.<model>``."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def notify(self, task_id: str, model: str) -> None:
        try:
            self.app.send_task(
                queues.TASK_NAME, args=[task_id], queue=queues.queue_name(model), ignore_result=True
            )
        except Exception:
            log.warning(
                "could not publish task %s; the sweeper will publish it again",
                task_id,
                exc_info=True,
            )

    def queue_depth(self, model: str) -> int | None:
        """Messages ready in the model's queue (0 if it does not exist yet); None if unknown."""
        return queues.queue_depth(self.app, model)


def create_dispatcher(settings: Settings) -> Dispatcher:
    """Celery when a broker is configured; otherwise the embedded wakeup event."""
    if settings.broker_url:
        return CeleryDispatcher(queues.create_celery_app(settings))
    return WakeupDispatcher()
