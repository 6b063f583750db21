"""The deployment's series for ``GET /metrics``, read from the database at scrape
time (a prometheus-client custom collector).

The database is the one truth shared by every API replica and every worker on
every machine, so these figures are right whichever process is scraped and
however many there are (each replica answers the same: aggregate them with
``max``, or scrape one). Nothing is counted as it happens, so nothing is lost on
a restart and nothing needs a push gateway.

Each scrape reads, in one snapshot (one read transaction; REPEATABLE READ on
PostgreSQL):

- unfinished tasks by model and status, the oldest pending one, and what they
  were charged: a range of ``tasks_by_status`` (only pending and processing rows);
- finished tasks by model and status, their engine seconds (started to finished,
  bucketed in SQL) and credits (``price`` debited at submission, ``price -
  consumed_credits`` refunded: the ledger's entries, written in the same
  transactions). A finished task never changes again, so ``FinishedTotals``
  keeps the totals of tasks created before a horizon (now less
  ``HORIZON_MARGIN``) in memory and each scrape reads only the tasks created
  since the previous horizon (a range of ``tasks_by_status``), those created
  after the horizon, and the few that were unfinished when their range was
  read. The first scrape of a process reads every finished task once (about 6 s
  at a million tasks on the bench machine, in a thread); later ones cost about
  what a minute of new tasks costs;
- webhook deliveries by status (an index-only count on ``webhook_deliveries_due``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, Float, case, cast, func, literal_column, select
from sqlalchemy.orm import Session

from openimagine.store.db import Database
from openimagine.store.models import (
    FINAL_STATUSES,
    DeliveryStatus,
    Task,
    TaskStatus,
    WebhookDelivery,
)
from openimagine.timeutil import as_utc, utcnow

log = logging.getLogger("openimagine.metrics")

# Upper bounds (seconds) of the engine-time buckets: a preview clip to an hour-long render.
ENGINE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
UNFINISHED = (TaskStatus.PENDING, TaskStatus.PROCESSING)
# How a delivery ends (every status but pending), as ``outcome`` labels.
DELIVERY_OUTCOMES = tuple(
    str(status) for status in DeliveryStatus if status != DeliveryStatus.PENDING
)
# Tasks created less than this long ago are read again at every scrape: a task is
# inserted with its creator's clock, and its transaction may commit a little later.
HORIZON_MARGIN = timedelta(minutes=5)
# Ids per ``IN (...)`` when looking for late finishers.
ID_CHUNK = 500

# (model, status) -> [count, timed count, engine seconds, debited, refunded, *buckets]
Totals = dict[tuple[str, str], list[float]]


def _engine_seconds(db: Database) -> ColumnElement[Any]:
    """Seconds from ``started_at`` to ``finished_at`` (NULL when either is)."""
    if db.is_sqlite:
        return cast(
            (func.julianday(Task.finished_at) - func.julianday(Task.started_at)) * 86400.0, Float
        )
    return func.extract("epoch", Task.finished_at - Task.started_at)


def _finished(session: Session, db: Database, *where: ColumnElement[bool]) -> Totals:
    seconds = _engine_seconds(db)
    buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in ENGINE_BUCKETS]
    rows = session.execute(
        select(
            Task.model,
            Task.status,
            func.count(),
            func.count(seconds),
            func.sum(seconds),
            func.sum(Task.price),
            func.sum(Task.price - Task.consumed_credits),
            *buckets,
        )
        .where(Task.status.in_(FINAL_STATUSES), *where)
        .group_by(Task.model, Task.status)
    )
    return {(row[0], row[1]): [float(value or 0) for value in row[2:]] for row in rows}


def _add(into: Totals, more: Totals) -> Totals:
    for key, values in more.items():
        into[key] = [a + b for a, b in zip(into.get(key, [0.0] * len(values)), values, strict=True)]
    return into


def _negated(totals: Totals) -> Totals:
    return {key: [-value for value in values] for key, values in totals.items()}


@contextmanager
def _snapshot(db: Database) -> Iterator[Session]:
    """One read transaction that sees one state of the database throughout."""
    if db.is_sqlite:  # a deferred transaction in WAL mode: a snapshot from its first read
        with db.read() as session:
            yield session
        return
    with (
        Session(db.sql.execution_options(isolation_level="REPEATABLE READ")) as session,
        session.begin(),
    ):
        yield session


class FinishedTotals:
    """The finished tasks' totals, extended at each scrape (see the module's notes)."""

    def __init__(self) -> None:
        self.horizon: datetime | None = None  # totals hold tasks created before it
        self.closed: Totals = {}
        # Tasks created before the horizon that were unfinished when read.
        self.waiting: set[str] = set()
        self.lock = threading.Lock()  # scrapes may overlap

    def read(self, session: Session, db: Database, now: datetime) -> Totals:
        """Every finished task's totals as of ``session``'s snapshot."""
        with self.lock:
            horizon = now - HORIZON_MARGIN
            if self.horizon is not None:
                horizon = max(horizon, self.horizon)
            closed = {key: list(values) for key, values in self.closed.items()}
            waiting = set(self.waiting)
            ids = sorted(waiting)
            for start in range(0, len(ids), ID_CHUNK):
                chunk = ids[start : start + ID_CHUNK]
                _add(closed, _finished(session, db, Task.id.in_(chunk)))
                waiting -= set(
                    session.scalars(
                        select(Task.id).where(Task.id.in_(chunk), Task.status.in_(FINAL_STATUSES))
                    )
                )
            window = [Task.created_at < horizon]
            if self.horizon is not None:
                window.append(Task.created_at >= self.horizon)
            recent = _finished(session, db, Task.created_at >= horizon)
            if self.horizon is None:
                # Every finished task, less the recent ones: one pass over the table,
                # several times quicker than walking the index for the older ones.
                _add(closed, _add(_finished(session, db), _negated(recent)))
            else:
                _add(closed, _finished(session, db, *window))
            waiting |= set(
                session.scalars(select(Task.id).where(Task.status.in_(UNFINISHED), *window))
            )
            self.horizon, self.closed, self.waiting = horizon, closed, waiting
        return _add({key: list(values) for key, values in closed.items()}, recent)


def snapshot(db: Database, finished: FinishedTotals | None = None) -> dict[str, Any]:
    """Every figure the collector reports, read in one snapshot."""
    now = utcnow()
    with _snapshot(db) as session:
        unfinished = list(
            session.execute(
                select(
                    Task.model,
                    Task.status,
                    func.count(),
                    func.min(Task.created_at),
                    func.sum(Task.price),
                )
                .where(Task.status.in_(UNFINISHED))
                .group_by(Task.model, Task.status)
            )
        )
        totals = (finished or FinishedTotals()).read(session, db, now)
        deliveries = dict(
            session.execute(
                select(WebhookDelivery.status, func.count(literal_column("*"))).group_by(
                    WebhookDelivery.status
                )
            ).all()
        )
    return {"unfinished": unfinished, "finished": totals, "deliveries": deliveries, "now": now}


def _age(now: datetime, oldest: datetime | None) -> float:
    return 0.0 if oldest is None else max(0.0, (now - as_utc(oldest)).total_seconds())


class DatabaseCollector(Collector):
    """The task, queue, credit and webhook series, read from ``db`` on each scrape.
    ``models`` names the models served, so that each has its queue series even
    when nothing waits (0, not absent)."""

    def __init__(self, db: Database, models: Callable[[], Iterable[str]]) -> None:
        self.db = db
        self.models = models
        self.finished = FinishedTotals()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # not read at registration: only on a scrape

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "openimagine_database_up", "1 when the database answered this scrape's queries, else 0"
        )
        try:
            figures = snapshot(self.db, self.finished)
        except Exception:  # the HTTP series still go out, and this says why the rest did not
            log.exception("metrics: the database did not answer")
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from self._queues(figures)
        yield from self._finished(figures)
        deliveries = figures["deliveries"]
        done = CounterMetricFamily(
            "openimagine_webhook_deliveries",
            "Webhook deliveries ended, by outcome "
            "(delivered; failed: out of tries or 410; cancelled: endpoint removed)",
            labels=["outcome"],
        )
        for outcome in DELIVERY_OUTCOMES:
            done.add_metric([outcome], float(deliveries.get(outcome, 0)))
        yield done
        waiting = GaugeMetricFamily(
            "openimagine_webhook_deliveries_pending",
            "Webhook deliveries not yet delivered, still to be tried",
        )
        waiting.add_metric([], float(deliveries.get(DeliveryStatus.PENDING, 0)))
        yield waiting

    def _queues(self, figures: dict[str, Any]) -> Iterator[Metric]:
        models = sorted(set(self.models()) | {row[0] for row in figures["unfinished"]})
        counts = {(row[0], row[1]): row[2] for row in figures["unfinished"]}
        oldest = {row[0]: row[3] for row in figures["unfinished"] if row[1] == TaskStatus.PENDING}
        depth = GaugeMetricFamily(
            "openimagine_queue_depth", "Tasks pending, by model", labels=["model"]
        )
        running = GaugeMetricFamily(
            "openimagine_tasks_running", "Tasks processing, by model", labels=["model"]
        )
        age = GaugeMetricFamily(
            "openimagine_queue_oldest_age_seconds",
            "Age of the oldest pending task, by model (0: none pending)",
            labels=["model"],
        )
        for model in models:
            depth.add_metric([model], float(counts.get((model, TaskStatus.PENDING), 0)))
            running.add_metric([model], float(counts.get((model, TaskStatus.PROCESSING), 0)))
            age.add_metric([model], _age(figures["now"], oldest.get(model)))
        yield from (depth, running, age)

    def _finished(self, figures: dict[str, Any]) -> Iterator[Metric]:
        tasks = CounterMetricFamily(
            "openimagine_tasks_finished",
            "Tasks finished, by model and final status",
            labels=["model", "status"],
        )
        engine = HistogramMetricFamily(
            "openimagine_task_engine_seconds",
            "Seconds from a task's start on a worker to its end, by model and final status",
            labels=["model", "status"],
        )
        debited: dict[str, float] = {}
        refunded: dict[str, float] = {}
        for (model, status), values in sorted(figures["finished"].items()):
            count, timed, seconds, charged, returned, *cumulative = values
            tasks.add_metric([model, status], count)
            engine.add_metric(
                [model, status],
                [
                    *(
                        (floatToGoString(bound), n)
                        for bound, n in zip(ENGINE_BUCKETS, cumulative, strict=True)
                    ),
                    ("+Inf", timed),
                ],
                sum_value=seconds,
            )
            debited[model] = debited.get(model, 0.0) + charged
            refunded[model] = refunded.get(model, 0.0) + returned
        for row in figures["unfinished"]:  # charged at submission, not yet finished
            debited[row[0]] = debited.get(row[0], 0.0) + float(row[4] or 0)
        yield from (tasks, engine)
        for name, what, by_model in (
            ("debited", "Credits debited for tasks (at submission), by model", debited),
            ("refunded", "Credits refunded for failed tasks, by model", refunded),
        ):
            family = CounterMetricFamily(f"openimagine_credits_{name}", what, labels=["model"])
            for model, amount in sorted(by_model.items()):
                family.add_metric([model], amount)
            yield family
