"""Dispatch with Celery (``OPENIMAGINE_BROKER_URL``): one queue per model,
``openimagine.<model>``, and ``openimagine worker`` as its consumer.

The database row stays the truth; a message only says "task X may be
pending". The Celery task claims exactly that task with ``claim_next(...,
task_id=X)``, so a duplicate or redelivered message for a task that is already
claimed or finished does nothing. While the engine runs, a heartbeat thread
renews the lease; every write after the claim is fenced by (attempt, owner)
as in the embedded pool. A sweeper thread re-queues expired leases and
re-publishes pending tasks whose message may have been lost
(``worker/sweeper.py``).

Broker settings for 30 s – 10 min GPU jobs: ``task_acks_late`` with
``task_reject_on_worker_lost`` (a message whose worker process died goes back
to the queue; the attempt counter in the database, not the broker, ends a task
that kills its worker every time), ``worker_prefetch_multiplier=1`` (a busy
worker does not hold messages another could run).

Processes: one Celery worker serves one model, so each model has its own
concurrency and a slow model never holds a slot another could use
(``openimagine worker --models a,b`` starts one such worker per model as child
processes). A local model's worker forks ``concurrency`` children (prefork
pool, default 1: one process per GPU); each child loads the engine once in
``worker_process_init``, after the fork, so CUDA is never initialised in the
parent, and ``worker_proc_alive_timeout`` is raised so a model has time to
load. A relay model's worker runs ``concurrency`` threads in one process
(threads pool): its tasks only wait on another API.

Stopping (``SIGTERM``, as ``docker stop`` or Kubernetes send it to the main
process): the main process asks its children to stop (``STOP_SIGNAL``); a
child that is rendering stops the engine at its next step, gives the task back to
the queue (``lifecycle.release``: the attempt is not counted) and rejects its
message with requeue, so another worker takes it over at once instead of
after the lease expires. Celery's warm shutdown then ends the worker. In a
relay's threads pool the tasks run in the main process, which stops them itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

from openimagine.catalog import Catalog, Model
from openimagine.moderation import load_policy
from openimagine.services import lifecycle
from openimagine.settings import Settings
from openimagine.storage import storage_from_settings
from openimagine.store.db import Database
from openimagine.worker.deliverer import start_deliverer
from openimagine.worker.dispatch import CeleryDispatcher
from openimagine.worker.heartbeat import run_with_heartbeat
from openimagine.worker.pool import worker_name
from openimagine.worker.queues import TASK_NAME, create_celery_app, queue_name
from openimagine.worker.runner import Runner, RunStatus, create_model_engine
from openimagine.worker.sweeper import Sweeper

if TYPE_CHECKING:
    from celery import Celery  # type: ignore[import-untyped]

log = logging.getLogger("openimagine.worker")

# The main process tells its children to give their tasks back with this one:
# billiard claims SIGTERM in the children, and Celery uses SIGUSR2 only for a
# remote debugger, and only in the main process when CELERY_RDBSIG is set.
STOP_SIGNAL = signal.SIGUSR2


def register_run_task(app: Celery) -> None:
    """The consumer's side of ``TASK_NAME``: claim the task and run it here."""

    @app.task(name=TASK_NAME, bind=True)
    def run(self: Any, task_id: str) -> str:
        status = _current_process(self.app).run(task_id)
        if status == RunStatus.RELEASED:
            from celery.exceptions import Reject  # type: ignore[import-untyped]

            # Back to the queue now (acks_late: the message was not acked yet).
            raise Reject("worker stopping: task released", requeue=True)
        return status


class WorkerProcess:
    """What one worker process holds: its database pool, storage, engine and sweeper."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.name = worker_name()
        self.db = Database(settings.resolved_database_url)
        catalog: Catalog = app.openimagine_catalog  # type: ignore[attr-defined]
        model: Model = app.openimagine_model  # type: ignore[attr-defined]
        self.model = model
        self.runner = Runner(
            model,
            self.db,
            storage_from_settings(settings),
            create_model_engine(model, catalog),
            load_policy(settings),
        )
        dispatcher = CeleryDispatcher(app)
        self.sweeper = Sweeper(
            settings, self.db, dispatcher, dispatcher.queue_depth, storage=self.runner.storage
        )
        self._stop = threading.Event()
        # Set by SIGTERM in this process: the running task is given back.
        self.stopping = threading.Event()
        self._sweeping = threading.Thread(
            target=self.sweeper.run, args=(self._stop,), name="openimagine-sweeper", daemon=True
        )
        self._sweeping.start()
        # Webhooks go out from every worker process too (any process may send them).
        self._stop_delivering = start_deliverer(
            settings, self.db, self.runner.storage, name=self.name
        )
        log.info(
            "worker %s ready: model %s (%s), queue %s",
            self.name,
            model.name,
            model.engine,
            queue_name(model.name),
        )

    def run(self, task_id: str) -> str:
        claim = lifecycle.claim_next(
            self.db,
            owner=self.name,
            model=self.model.name,
            lease_seconds=self.settings.lease_seconds,
            task_id=task_id,
        )
        if claim is None:
            # Already claimed, finished, or of another model: the row says so.
            log.info("task %s: not pending; message dropped", task_id)
            return RunStatus.SKIPPED
        outcome = run_with_heartbeat(self.runner, claim, threading.Event(), stopping=self.stopping)
        log.info("task %s: %s", claim.task_id, outcome.status)
        return outcome.status

    def close(self) -> None:
        self._stop.set()
        self._sweeping.join(timeout=10)
        self._stop_delivering()
        self.db.dispose()


# One per OS process: built in each prefork child after the fork.
_process: WorkerProcess | None = None
_process_lock = threading.Lock()
_app: Celery | None = None


def _current_process(app: Celery) -> WorkerProcess:
    global _process
    with _process_lock:
        if _process is None:
            _process = WorkerProcess(app.openimagine_settings, app)  # type: ignore[attr-defined]
        return _process


def _on_process_init(**_: Any) -> None:
    # In the child, right after the fork: load the engine before the first message.
    assert _app is not None
    process = _current_process(_app)
    # Billiard installs its own SIGTERM handler in the children after this
    # (terminate at once); the main process asks for a cooperative stop with
    # STOP_SIGNAL instead.
    signal.signal(STOP_SIGNAL, lambda *_: process.stopping.set())


def _on_shutting_down(**_: Any) -> None:
    # In the main process, at the start of a warm shutdown: a SIGTERM sent to
    # the main process alone (docker stop, Kubernetes) does not reach the
    # children, which hold the running tasks. A threads pool runs them here.
    from billiard.process import active_children  # type: ignore[import-untyped]

    if _process is not None:
        _process.stopping.set()
    for child in active_children():
        try:
            os.kill(child.pid, STOP_SIGNAL)
        except ProcessLookupError:
            pass


def _on_process_shutdown(**_: Any) -> None:
    if _process is not None:
        _process.close()


def run_worker(
    settings: Settings, model: Model, catalog: Catalog, *, concurrency: int | None = None
) -> None:
    """``openimagine worker`` with a broker, for one model: consume ``openimagine.<model>``
    until stopped (SIGTERM: running tasks go back to the queue, then warm shutdown)."""
    from celery import signals

    global _app
    app = create_celery_app(settings)
    register_run_task(app)
    app.openimagine_settings = settings  # type: ignore[attr-defined]
    app.openimagine_catalog = catalog  # type: ignore[attr-defined]
    app.openimagine_model = model  # type: ignore[attr-defined]
    _app = app
    signals.worker_process_init.connect(_on_process_init, weak=False)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)
    signals.worker_shutting_down.connect(_on_shutting_down, weak=False)
    if model.relay:
        # Threads run the tasks in this process (no fork): get ready, sweeper
        # included, before the first message rather than on it.
        signals.worker_ready.connect(lambda **_: _current_process(app), weak=False)
    node = f"openimagine-{model.name}-{os.getpid()}@{socket.gethostname()}"
    slots = max(1, concurrency or model.concurrency)
    app.worker_main(
        [
            "worker",
            "--queues",
            queue_name(model.name),
            "--concurrency",
            str(slots),
            # A relay waits on another API: threads in one process. A local engine
            # renders: one forked process per slot (per GPU).
            "--pool",
            "threads" if model.relay else "prefork",
            "--hostname",
            node,
            "--loglevel",
            "INFO",
            # No start-up handshake with other workers: faster start, nothing we use.
            "--without-mingle",
            "--without-gossip",
        ]
    )
