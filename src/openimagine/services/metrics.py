"""The deployment's series for ``GET /metrics``, read from the database at scrape
time (a prometheus-client custom collector).

The database is the one truth shared by every API replica and every worker on
every machine, so these figures are right whichever process is scraped and
however many there are (each replica answers the same: aggregate them with
``max``, or scrape one). Nothing is counted in memory, so nothing is lost on a
restart and nothing needs a push gateway.

The queries, in one read transaction (a consistent snapshot):

- unfinished tasks by model and status (``tasks_by_status`` range: only the
  pending and processing rows), with the oldest pending task's age;
- finished tasks by model and status, with their engine seconds (started to
  finished) bucketed in SQL: one pass over ``tasks``, the one query whose cost
  grows with the history;
- ledger totals by kind (debits, refunds, grants): one pass over the ledger;
- webhook deliveries by status (an index-only count on ``webhook_deliveries_due``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
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

from openimagine.store.db import Database
from openimagine.store.models import LedgerEntry, Task, WebhookDelivery
from openimagine.timeutil import as_utc, utcnow

log = logging.getLogger("openimagine.metrics")

# Upper bounds (seconds) of the engine-time buckets: a preview clip to an hour-long render.
ENGINE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
UNFINISHED = ("pending", "processing")
FINISHED = ("completed", "failed")
DELIVERY_OUTCOMES = ("delivered", "failed", "cancelled")


def _engine_seconds(db: Database) -> ColumnElement[Any]:
    """Seconds from ``started_at`` to ``finished_at`` (NULL when either is)."""
    if db.is_sqlite:
        return cast((func.julianday(Task.finished_at) - func.julianday(Task.started_at))
                    * 86400.0, Float)
    return func.extract("epoch", Task.finished_at - Task.started_at)


def _unfinished(session: Any) -> list[Any]:
    return list(session.execute(
        select(Task.model, Task.status, func.count(), func.min(Task.created_at))
        .where(Task.status.in_(UNFINISHED)).group_by(Task.model, Task.status)))


def _finished(session: Any, db: Database) -> list[Any]:
    seconds = _engine_seconds(db)
    buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in ENGINE_BUCKETS]
    return list(session.execute(
        select(Task.model, Task.status, func.count(), func.count(seconds),
               func.coalesce(func.sum(seconds), 0.0), *buckets)
        .where(Task.status.in_(FINISHED)).group_by(Task.model, Task.status)))


def snapshot(db: Database) -> dict[str, Any]:
    """Every figure the collector reports, read in one transaction."""
    with db.read() as session:
        unfinished = _unfinished(session)
        finished = _finished(session, db)
        ledger = dict(session.execute(
            select(LedgerEntry.kind, func.coalesce(func.sum(LedgerEntry.amount), 0))
            .group_by(LedgerEntry.kind)).all())
        deliveries = dict(session.execute(
            select(WebhookDelivery.status, func.count(literal_column("*")))
            .group_by(WebhookDelivery.status)).all())
    return {"unfinished": unfinished, "finished": finished, "ledger": ledger,
            "deliveries": deliveries, "now": utcnow()}


def _age(now: datetime, oldest: datetime | None) -> float:
    return 0.0 if oldest is None else max(0.0, (now - as_utc(oldest)).total_seconds())


class DatabaseCollector(Collector):
    """The task, queue, credit and webhook series, read from ``db`` on each scrape.
    ``models`` names the models served, so that each has its queue series even
    when nothing waits (0, not absent)."""

    def __init__(self, db: Database, models: Callable[[], Iterable[str]]) -> None:
        self.db = db
        self.models = models

    def describe(self) -> Iterator[Metric]:
        return iter(())  # not read at registration: only on a scrape

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("openimagine_database_up",
                               "1 when the database answered this scrape's queries, else 0")
        try:
            figures = snapshot(self.db)
        except Exception:  # the HTTP series still go out, and this says why the rest did not
            log.exception("metrics: the database did not answer")
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from self._queues(figures)
        yield from self._finished(figures)
        ledger = figures["ledger"]
        for name, kind, sign, what in (
                ("debited", "debit", -1, "Credits debited for tasks (at submission)"),
                ("refunded", "refund", 1, "Credits refunded for failed tasks"),
                ("granted", "grant", 1, "Credits granted to accounts")):
            family = CounterMetricFamily(f"openimagine_credits_{name}", what)
            family.add_metric([], float(sign * int(ledger.get(kind) or 0)))
            yield family
        deliveries = figures["deliveries"]
        done = CounterMetricFamily(
            "openimagine_webhook_deliveries", "Webhook deliveries ended, by outcome "
            "(delivered; failed: out of tries or 410; cancelled: endpoint removed)",
            labels=["outcome"])
        for outcome in DELIVERY_OUTCOMES:
            done.add_metric([outcome], float(deliveries.get(outcome, 0)))
        yield done
        waiting = GaugeMetricFamily("openimagine_webhook_deliveries_pending",
                                    "Webhook deliveries not yet delivered, still to be tried")
        waiting.add_metric([], float(deliveries.get("pending", 0)))
        yield waiting

    def _queues(self, figures: dict[str, Any]) -> Iterator[Metric]:
        models = sorted(set(self.models()) | {row[0] for row in figures["unfinished"]})
        counts = {(model, status): count for model, status, count, _ in figures["unfinished"]}
        oldest = {model: first for model, status, _, first in figures["unfinished"]
                  if status == "pending"}
        depth = GaugeMetricFamily("openimagine_queue_depth", "Tasks pending, by model",
                                  labels=["model"])
        running = GaugeMetricFamily("openimagine_tasks_running", "Tasks processing, by model",
                                    labels=["model"])
        age = GaugeMetricFamily("openimagine_queue_oldest_age_seconds",
                                "Age of the oldest pending task, by model (0: none pending)",
                                labels=["model"])
        for model in models:
            depth.add_metric([model], float(counts.get((model, "pending"), 0)))
            running.add_metric([model], float(counts.get((model, "processing"), 0)))
            age.add_metric([model], _age(figures["now"], oldest.get(model)))
        yield from (depth, running, age)

    def _finished(self, figures: dict[str, Any]) -> Iterator[Metric]:
        tasks = CounterMetricFamily("openimagine_tasks_finished",
                                    "Tasks finished, by model and final status",
                                    labels=["model", "status"])
        engine = HistogramMetricFamily(
            "openimagine_task_engine_seconds",
            "Seconds from a task's start on a worker to its end, by model and final status",
            labels=["model", "status"])
        for model, status, count, timed, total, *cumulative in figures["finished"]:
            tasks.add_metric([model, status], float(count))
            buckets = [(floatToGoString(bound), float(n or 0))
                       for bound, n in zip(ENGINE_BUCKETS, cumulative, strict=True)]
            engine.add_metric([model, status], [*buckets, ("+Inf", float(timed))],
                              sum_value=float(total or 0.0))
        yield from (tasks, engine)
