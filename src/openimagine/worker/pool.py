"""The worker pool: N loops that claim tasks from the database, run each in a
thread, renew its lease while it runs, and re-queue expired leases.

Runs inside ``openimagine serve`` (embedded) or alone as ``openimagine worker``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from openimagine.engines import create_engine
from openimagine.engines.base import Engine
from openimagine.moderation import load_policy
from openimagine.services import lifecycle
from openimagine.settings import Settings
from openimagine.storage import Storage
from openimagine.store.db import Database
from openimagine.worker.heartbeat import PROGRESS_TICK, Heartbeat
from openimagine.worker.runner import Outcome, Runner

log = logging.getLogger("openimagine.worker")

def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class WorkerPool:
    def __init__(self, settings: Settings, db: Database, storage: Storage, *,
                 size: int | None = None, wakeup: asyncio.Event | None = None,
                 engine: Engine | None = None) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.size = settings.workers if size is None else size
        self.wakeup = wakeup or asyncio.Event()
        self.name = worker_name()
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=max(1, self.size),
                                            thread_name_prefix="openimagine-task")
        self._cancels: set[threading.Event] = set()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # Load the engine before the first claim: the first task does not pay for it.
        engine = self._engine
        if engine is None:
            engine = await loop.run_in_executor(None, create_engine, self.settings)
        runner = Runner(self.settings, self.db, self.storage, engine,
                        load_policy(self.settings))
        self.ready.set()
        log.info("worker %s: %d loop(s), engine %s", self.name, self.size, engine.info.name)
        try:
            await asyncio.gather(
                self._reaper(stop),
                *(self._loop(index, runner, stop) for index in range(self.size)),
            )
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def cancel_running(self) -> None:
        """Ask running engines to stop at their next step; their tasks go back to the queue."""
        for event in list(self._cancels):
            event.set()

    async def _sleep_until(self, stop: asyncio.Event, seconds: float,
                           also: asyncio.Event | None = None) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if also is not None:
            waiters.append(asyncio.ensure_future(also.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _reaper(self, stop: asyncio.Event) -> None:
        interval = max(0.2, min(self.settings.heartbeat_seconds, 5.0))
        while not stop.is_set():
            try:
                requeued, failed = await asyncio.to_thread(
                    lifecycle.reap_expired, self.db, max_attempts=self.settings.max_attempts)
                if requeued:
                    self.wakeup.set()
                if requeued or failed:
                    log.warning("expired leases: %d re-queued, %d failed", requeued, failed)
            except Exception:
                log.exception("reaper failed; trying again")
            await self._sleep_until(stop, interval)

    async def _loop(self, index: int, runner: Runner, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Cleared before the claim, not after: a submission that commits while
            # the claim is in flight must still wake this loop, not wait a poll.
            self.wakeup.clear()
            try:
                claim = await asyncio.to_thread(
                    lifecycle.claim_next, self.db, owner=self.name,
                    engine=runner.engine.info.name, lease_seconds=self.settings.lease_seconds)
            except Exception:
                log.exception("claiming failed; trying again")
                claim = None
            if claim is None:
                await self._sleep_until(stop, self.settings.poll_seconds, self.wakeup)
                continue
            outcome = await self._execute(runner, claim)
            log.info("task %s: %s", claim.task_id, outcome.status)

    async def _execute(self, runner: Runner, claim: lifecycle.Claim) -> Outcome:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        heartbeat = Heartbeat(self.settings, self.db, claim, cancelled)
        self._cancels.add(cancelled)
        future = loop.run_in_executor(self._executor, runner.run, claim,
                                      heartbeat.progress.report, cancelled)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=PROGRESS_TICK)
                if done:
                    return future.result()
                if heartbeat.due():
                    await asyncio.to_thread(heartbeat.beat)
        except asyncio.CancelledError:
            # The thread goes on and writes the final state itself (released
            # when the engine honours the flag); only this coroutine stops.
            cancelled.set()
            raise
        finally:
            self._cancels.discard(cancelled)
