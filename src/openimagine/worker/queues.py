"""The Celery side shared by whoever publishes and whoever consumes: the task
name, one queue per model (``openimagine.<model>``), the app's broker settings
and a queue's depth. The API and the sweeper need only this module; the
consumer (``celery_app.py``) builds on it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from openimagine.settings import Settings

if TYPE_CHECKING:
    from celery import Celery  # type: ignore[import-untyped]

log = logging.getLogger("openimagine.worker")

TASK_NAME = "openimagine.run"
# Seconds a worker child may take to start, model load included (Celery's default is 4).
ENGINE_LOAD_SECONDS = 900.0


def queue_name(model: str) -> str:
    return f"openimagine.{model}"


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app for ``settings.broker_url``, configured for long GPU tasks;
    creating it connects to nothing. It can publish ``TASK_NAME`` by name (the
    API's side); ``celery_app.run_worker`` registers the task itself."""
    try:
        from celery import Celery
    except ImportError:
        raise RuntimeError(
            "OPENIMAGINE_BROKER_URL needs Celery: pip install 'openimagine[scale]'"
        ) from None

    if not settings.broker_url:
        raise ValueError("create_celery_app needs settings.broker_url")
    app = Celery("openimagine", broker=settings.broker_url, set_as_current=False)
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith(("amqp", "pyamqp")):
        # Publisher confirms: send_task returns once the broker has the message.
        transport_options["confirm_publish"] = True
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue_name(settings.engine),
        worker_proc_alive_timeout=ENGINE_LOAD_SECONDS,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3.0,
        # A failed publish must not hold an API request for long: the sweeper
        # publishes the task again.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        # On a lost broker connection the running task goes on: its lease, not
        # the message, says who owns it, and the redelivered message is a no-op.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
    )
    return app


def queue_depth(app: Celery, model: str) -> int | None:
    """Ready messages in the model's queue; 0 if it does not exist; None if unknown."""
    try:
        with app.connection_or_acquire() as connection:
            channel = connection.channel()
            try:
                declared = channel.queue_declare(queue=queue_name(model), passive=True)
                return int(declared.message_count)
            except connection.channel_errors:
                return 0  # no such queue yet: nothing was ever published to it
            finally:
                try:
                    channel.close()
                except Exception:  # a closed channel is what we wanted anyway
                    log.debug("closing the channel failed", exc_info=True)
    except Exception:
        log.debug("cannot read the depth of %s", queue_name(model), exc_info=True)
        return None
