"""Live status for both faces: ``GET /v1/status/stream`` and ``GET /v1/videos/{id}/events``.

One ``StatusHub`` per API process serves every open stream, so a stream costs a
coroutine and a queue, never a thread: the hub reads all watched tasks in ONE
query per round and hands each stream the rows whose status or progress moved.
A round runs every ``ROUND_SECONDS`` (polling: it sees what any worker on any
machine wrote, since the database row is the truth), and at once when poked:
the in-process worker pokes it after each progress write and each outcome, and
on PostgreSQL the hub LISTENs to ``openimagine_tasks``, which every task write
NOTIFYs (a trigger, migration 0006), so a change made on another machine
reaches every replica's streams without waiting for a round.

A stream sends one ``status`` event at once and one on every change, a comment
every ``PING_SECONDS`` (sse-starlette's ping), and ends after the final event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from openimagine.store.db import Database, Record
from openimagine.store.models import FINAL_STATUSES, TASK_VIEW_COLUMNS, Task

log = logging.getLogger("openimagine.api")

ROUND_SECONDS = 1.0
PING_SECONDS = 15
# The PostgreSQL channel a trigger on tasks notifies (migration 0006).
CHANNEL = "openimagine_tasks"


class StatusHub:
    def __init__(self, db: Database, *, round_seconds: float = ROUND_SECONDS) -> None:
        self.db = db
        self.round_seconds = round_seconds
        self._watchers: dict[str, set[asyncio.Queue[Record]]] = {}
        self._seen: dict[str, tuple[str, int]] = {}
        self._poked = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def poke(self) -> None:
        """Something changed: read now, not at the next round. Safe from any thread."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            self._loop.call_soon_threadsafe(self._poked.set)

    def watch(self, task_id: str, first: Record) -> asyncio.Queue[Record]:
        queue: asyncio.Queue[Record] = asyncio.Queue()
        self._watchers.setdefault(task_id, set()).add(queue)
        self._seen.setdefault(task_id, (first.status, first.progress))
        return queue

    def unwatch(self, task_id: str, queue: asyncio.Queue[Record]) -> None:
        queues = self._watchers.get(task_id)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self._watchers[task_id]
            self._seen.pop(task_id, None)

    async def run(self, stop: asyncio.Event, read: Callable[[list[str]], Any]) -> None:
        """Rounds until ``stop``; ``read(ids)`` runs the query (off the loop if it blocks)."""
        self._loop = asyncio.get_running_loop()
        listener = asyncio.create_task(self._listen(stop)) if not self.db.is_sqlite else None
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), self.round_seconds)
                self._poked.clear()
                if self._watchers:
                    try:
                        rows = await read(list(self._watchers))
                    except Exception:
                        log.warning("live status: reading watched tasks failed", exc_info=True)
                        continue
                    self._hand_out(rows)
        finally:
            if listener is not None:
                listener.cancel()

    def _hand_out(self, rows: list[Record]) -> None:
        for row in rows:
            now = (row.status, row.progress)
            if self._seen.get(row.id) == now:
                continue
            self._seen[row.id] = now
            for queue in self._watchers.get(row.id, ()):
                queue.put_nowait(row)

    async def _listen(self, stop: asyncio.Event) -> None:
        """PostgreSQL: poke on every NOTIFY of a task write; on any trouble, rounds
        alone still carry every change (a little later)."""
        try:
            import psycopg
        except ImportError:
            return
        url = self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    async for _ in conn.notifies():
                        self.poke()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("live status: LISTEN failed; polling meanwhile", exc_info=True)
                await asyncio.sleep(5)


def read_tasks(db: Database, ids: list[str]) -> list[Record]:
    with db.connect() as connection:
        return list(connection.execute(select(*TASK_VIEW_COLUMNS).where(Task.id.in_(ids))))


def stream_response(
    hub: StatusHub, first: Record, view: Callable[[Record], dict[str, Any]]
) -> EventSourceResponse:
    """``text/event-stream`` of ``view(task)``: now, on each change, until final."""
    task_id = first.id

    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(data=orjson.dumps(view(first)).decode(), event="status")
        if first.status in FINAL_STATUSES:
            return
        queue = hub.watch(task_id, first)
        try:
            while True:
                row = await queue.get()
                yield ServerSentEvent(data=orjson.dumps(view(row)).decode(), event="status")
                if row.status in FINAL_STATUSES:
                    return
        finally:
            hub.unwatch(task_id, queue)

    return EventSourceResponse(
        events(),
        ping=PING_SECONDS,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
