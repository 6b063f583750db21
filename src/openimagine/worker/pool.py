"""The worker pool: for each model it serves, a claimer that takes the model's
pending tasks while it has a free slot (``concurrency`` per model), runs each in
a thread, renews its lease while it runs, and re-queues expired leases.

Models never wait on each other: each has its own claimer, slots and engine,
so a slow upstream or a busy GPU engine holds up only its own model. Runs
inside ``openimagine serve`` (embedded) or alone as ``openimagine worker``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from openimagine.catalog import Catalog, Model
from openimagine.engines.base import Engine
from openimagine.moderation import load_policy
from openimagine.services import lifecycle, retention
from openimagine.settings import Settings
from openimagine.storage import Storage
from openimagine.store.db import Database
from openimagine.worker.deliverer import start_deliverer
from openimagine.worker.dispatch import WakeupDispatcher
from openimagine.worker.heartbeat import run_with_heartbeat
from openimagine.worker.runner import Outcome, Runner, create_model_engine
from openimagine.worker.sweeper import Sweeper, sweep_interval

log = logging.getLogger("openimagine.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        storage: Storage,
        catalog: Catalog,
        *,
        models: list[Model] | None = None,
        wakeups: WakeupDispatcher | None = None,
        engines: dict[str, Engine] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.catalog = catalog
        self.models = list(catalog.models.values()) if models is None else models
        self.wakeups = wakeups or WakeupDispatcher()
        self.name = worker_name()
        self._engines = dict(engines or {})
        # Told after each progress write and each outcome (live status streams).
        self.on_change = on_change or (lambda: None)
        slots = sum(model.concurrency for model in self.models)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, slots), thread_name_prefix="openimagine-task"
        )
        self._cancels: set[threading.Event] = set()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # Load the engines before the first claim: the first task does not pay for it.
        runners = []
        policy = load_policy(self.settings)
        for model in self.models:
            engine = self._engines.get(model.name)
            if engine is None:
                engine = await loop.run_in_executor(None, create_model_engine, model, self.catalog)
            runners.append(Runner(model, self.db, self.storage, engine, policy))
        self.ready.set()
        log.info(
            "worker %s: %s",
            self.name,
            ", ".join(
                f"{model.name} ({model.engine}, {model.concurrency} at once)"
                for model in self.models
            ),
        )
        # Webhooks go out from every process that runs workers or the API.
        stop_delivering = start_deliverer(self.settings, self.db, self.storage, name=self.name)
        try:
            await asyncio.gather(
                self._reaper(stop),
                self._janitor(stop),
                *(self._serve(runner, stop) for runner in runners),
            )
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            await asyncio.to_thread(stop_delivering)

    def cancel_running(self) -> None:
        """Ask running engines to stop at their next step; their tasks go back to the queue."""
        for event in list(self._cancels):
            event.set()

    async def _sleep_until(
        self, stop: asyncio.Event, seconds: float, also: asyncio.Event | None = None
    ) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if also is not None:
            waiters.append(asyncio.ensure_future(also.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _reaper(self, stop: asyncio.Event) -> None:
        sweeper = Sweeper(self.settings, self.db, self.wakeups)  # no messages to publish again
        interval = sweep_interval(self.settings)
        while not stop.is_set():
            try:
                await asyncio.to_thread(sweeper.sweep)
            except Exception:
                log.exception("sweeper failed; trying again")
            await self._sleep_until(stop, interval)

    async def _janitor(self, stop: asyncio.Event) -> None:
        """Delete the files of tasks finished longer ago than the retention (if set)."""
        janitor = retention.Janitor(self.db, self.storage, self.settings.retention)
        while janitor.enabled and not stop.is_set():
            try:
                await asyncio.to_thread(janitor.run_if_due)
            except Exception:
                log.exception("retention janitor failed; trying again")
            await self._sleep_until(stop, janitor.seconds_until_due())

    async def _serve(self, runner: Runner, stop: asyncio.Event) -> None:
        """Claim ``runner.model``'s tasks while a slot is free; run each in the background."""
        model = runner.model
        wakeup = self.wakeups.event(model.name)
        free = asyncio.Semaphore(model.concurrency)
        running: set[asyncio.Task[Outcome]] = set()

        def finished(task: asyncio.Task[Outcome]) -> None:
            running.discard(task)
            free.release()

        try:
            while await self._acquire(free, stop):
                # Cleared before the claim, not after: a submission that commits while
                # the claim is in flight must still wake this claimer, not wait a poll.
                wakeup.clear()
                try:
                    claim = await asyncio.to_thread(
                        lifecycle.claim_next,
                        self.db,
                        owner=self.name,
                        model=model.name,
                        lease_seconds=self.settings.lease_seconds,
                        plan_priority=self.settings.plan_priority,
                    )
                except Exception:
                    log.exception("claiming a %s task failed; trying again", model.name)
                    claim = None
                if claim is None:
                    free.release()
                    await self._sleep_until(stop, self.settings.poll_seconds, wakeup)
                    continue
                self.on_change()  # pending -> processing
                task = asyncio.create_task(self._execute(runner, claim))
                running.add(task)
                task.add_done_callback(finished)
        finally:
            if running:
                # Running tasks stop at their engine's next step (``cancel_running``)
                # and write their own final state; wait for them.
                await asyncio.gather(*running, return_exceptions=True)

    @staticmethod
    async def _acquire(free: asyncio.Semaphore, stop: asyncio.Event) -> bool:
        """True holding a free slot; False (holding none) once stopping."""
        acquire = asyncio.ensure_future(free.acquire())
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if acquire not in done:
            acquire.cancel()  # asyncio hands a slot granted meanwhile to the next waiter
            return False
        if stop.is_set():
            free.release()
            return False
        return True

    async def _execute(self, runner: Runner, claim: lifecycle.Claim) -> Outcome:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        self._cancels.add(cancelled)

        def changed() -> None:  # from the heartbeat thread: live status streams
            loop.call_soon_threadsafe(self.on_change)

        future = loop.run_in_executor(
            self._executor,
            functools.partial(run_with_heartbeat, runner, claim, cancelled, on_beat=changed),
        )
        try:
            # Shielded: a cancelled coroutine must not drop the thread's outcome.
            outcome = await asyncio.shield(future)
            log.info("task %s: %s", claim.task_id, outcome.status)
            self.on_change()
            return outcome
        except asyncio.CancelledError:
            # The thread goes on and writes the final state itself (released
            # when the engine honours the flag); only this coroutine stops.
            cancelled.set()
            raise
        finally:
            self._cancels.discard(cancelled)
