"""The webhook deliverer: a small loop in every API and worker process that sends
the outbox's due deliveries (``services/webhooks.py``).

Each try claims one delivery under a lease (so no other process sends it
meanwhile), renders the event, signs it as Standard Webhooks says (the
``standardwebhooks`` package), POSTs it through the same SSRF guard as image
fetches (every address checked, no proxy from the environment, no redirects
followed), and logs the answer. A ``task.*`` event carries the task's
``/v1/status`` data as it is at the try, so its video URLs are freshly signed;
``webhook-id`` is the event's id on every try.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import orjson
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from openimagine import __version__
from openimagine.inputs.fetch import AddressPolicy, guarded_transport
from openimagine.inputs.refs import FetchFailed
from openimagine.patterns import whole_number
from openimagine.services import tasks, webhooks
from openimagine.settings import Settings
from openimagine.storage import Storage
from openimagine.store.db import Database
from openimagine.store.models import TASK_VIEW_COLUMNS, DeliveryStatus, Task
from openimagine.timeutil import rfc3339, utcnow

log = logging.getLogger("openimagine.webhooks")

# Sends at once per process.
CONCURRENCY = 4
# A claim's lease outlasts the longest try by this much.
LEASE_MARGIN = 15.0
USER_AGENT = f"openimagine-webhooks/{__version__}"


def render(db: Database, storage: Storage, due: webhooks.Due) -> bytes:
    """The event's JSON body."""
    payload: dict[str, Any]
    if due.event_type.startswith("video."):
        # OpenAI's event shape: what the openai SDK's ``webhooks.unwrap`` reads.
        payload = {
            "id": due.event_id,
            "object": "event",
            "created_at": int(due.created_at.timestamp()),
            "type": due.event_type,
            "data": {"id": due.task_id},
        }
    else:
        with db.connect() as connection:
            task = connection.execute(
                select(*TASK_VIEW_COLUMNS).where(Task.id == due.task_id)
            ).one()
        payload = {
            "id": due.event_id,
            "type": due.event_type,
            "timestamp": rfc3339(due.created_at),
            "data": tasks.task_view(task, storage),
        }
    return orjson.dumps(payload)


def signed_headers(event_id: str, at: datetime, body: bytes, keys: list[str]) -> dict[str, str]:
    """Standard Webhooks headers; one ``v1`` signature per key (two after a rotation)."""
    text = body.decode()
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(Webhook(key).sign(event_id, at, text) for key in keys),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    seconds = whole_number(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        storage: Storage,
        *,
        name: str,
        concurrency: int = CONCURRENCY,
        policy: AddressPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.name = name
        self.concurrency = concurrency
        self.lease_seconds = settings.webhook_timeout + LEASE_MARGIN
        self.poll_seconds = max(0.05, settings.poll_seconds)
        self.client = httpx.Client(
            transport=guarded_transport(
                policy or AddressPolicy.from_settings(settings), max_connections=concurrency
            ),
            # A proxy from the environment would be the only address checked.
            trust_env=False,
            follow_redirects=False,
        )

    def claim(self) -> webhooks.Due | None:
        first_delay = self.settings.webhook_retry_schedule[0]
        if not webhooks.has_due(self.db, first_delay):
            return None
        return webhooks.claim_due(
            self.db, owner=self.name, lease_seconds=self.lease_seconds, first_delay=first_delay
        )

    def deliver(self, due: webhooks.Due) -> str:
        """One try of ``due``; its status afterwards."""
        keys = webhooks.signing_secrets(self.db, due)
        if keys is None:
            webhooks.cancel(self.db, due)
            return DeliveryStatus.CANCELLED
        at = utcnow().replace(microsecond=0)  # the signed timestamp is whole seconds
        try:
            body = render(self.db, self.storage, due)
        except Exception as exc:  # noqa: BLE001 - logged, and tried again on schedule
            log.exception("webhook %s: cannot render the event", due.event_id)
            outcome = webhooks.Outcome(None, 0, f"cannot render the event: {type(exc).__name__}")
        else:
            outcome = self.send(due.url, body, signed_headers(due.event_id, at, body, keys))
        status = (
            webhooks.record(
                self.db, due, outcome, schedule=self.settings.webhook_retry_schedule, at=at
            )
            or "taken over by another process"
        )
        log.log(
            logging.INFO if outcome.delivered else logging.WARNING,
            "webhook %s (%s, try %d) to %s: %s -> %s",
            due.event_id,
            due.event_type,
            due.attempt,
            due.url,
            outcome.status_code or outcome.error,
            status,
        )
        return status

    def send(self, url: str, body: bytes, headers: dict[str, str]) -> webhooks.Outcome:
        started = time.monotonic()
        try:
            # The body of the answer is never read: its status and headers say it all.
            with self.client.stream(
                "POST", url, content=body, headers=headers, timeout=self.settings.webhook_timeout
            ) as response:
                status = response.status_code
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
        except (FetchFailed, httpx.HTTPError, httpx.InvalidURL) as exc:
            latency = int((time.monotonic() - started) * 1000)
            return webhooks.Outcome(None, latency, str(exc) or type(exc).__name__)
        latency = int((time.monotonic() - started) * 1000)
        error = None if 200 <= status < 300 else f"HTTP {status}"
        return webhooks.Outcome(status, latency, error, retry_after)

    def _deliver_logged(self, due: webhooks.Due) -> None:
        try:
            self.deliver(due)
        except Exception:
            # Its lease runs out and it is due again: tried once more, not lost.
            log.exception("webhook %s: delivery failed", due.event_id)

    def run(self, stop: threading.Event) -> None:
        """Send due deliveries, ``concurrency`` at once, until ``stop`` is set (the
        tries under way finish first)."""
        slots = threading.BoundedSemaphore(self.concurrency)
        try:
            with ThreadPoolExecutor(
                self.concurrency, thread_name_prefix="openimagine-webhook"
            ) as pool:
                while not stop.is_set():
                    if not slots.acquire(timeout=self.poll_seconds):
                        continue
                    try:
                        due = self.claim()
                    except Exception:
                        log.exception("claiming a webhook delivery failed; trying again")
                        due = None
                    if due is None:
                        slots.release()
                        stop.wait(self.poll_seconds)
                        continue
                    pool.submit(self._deliver_logged, due).add_done_callback(
                        lambda _: slots.release()
                    )
        finally:
            self.client.close()


def start_deliverer(
    settings: Settings, db: Database, storage: Storage, *, name: str
) -> Callable[[], None]:
    """Run a ``Deliverer`` in a thread of its own; returns the function that stops it."""
    deliverer = Deliverer(settings, db, storage, name=name)
    stop = threading.Event()
    thread = threading.Thread(
        target=deliverer.run, args=(stop,), daemon=True, name="openimagine-webhooks"
    )
    thread.start()

    def stop_it() -> None:
        stop.set()
        thread.join(timeout=settings.webhook_timeout + 5)

    return stop_it
