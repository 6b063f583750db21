"""Scale-out benchmark: embedded vs Celery dispatch, SQLite vs PostgreSQL status, in one run.

Prints side by side:
  - dispatch latency, submit -> a worker claims the task (the task row's
    ``started_at - created_at``: commit, notice, delivery, claim), for
      embedded  SQLite + in-process worker (the asyncio wakeup event)
      embedded  PostgreSQL + in-process worker
      Celery    PostgreSQL + RabbitMQ + one ``openimagine worker`` process
    over --tasks tasks submitted one after another (each to an idle worker);
  - GET /v1/status of a completed task, requests/s and p99 with wrk (the
    helpers of bench/api_bench.py), on the two embedded servers, which differ
    only in their database.

Needs wrk, PostgreSQL (OPENIMAGINE_BENCH_POSTGRES_URL, default
postgresql+psycopg://postgres@127.0.0.1:5432/test; a scratch database is
created and dropped) and RabbitMQ (OPENIMAGINE_BENCH_AMQP_URL, default
amqp://guest:guest@127.0.0.1:5672; a scratch virtual host when rabbitmqctl is
there). Usage: python bench/scale_bench.py [--seconds 10] [--tasks 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from sqlalchemy import select

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # scratch: databases and vhosts of its own
from api_bench import (
    CONNECTIONS,
    THREADS,
    bench_account,
    free_port,
    start_process,
    wait_ready,
    wrk,
)

from openimagine.store.db import Database
from openimagine.store.models import Task

import scratch

POSTGRES_ADMIN_URL = os.environ.get(
    "OPENIMAGINE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
AMQP_URL = os.environ.get("OPENIMAGINE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
CLI = [sys.executable, "-m", "openimagine"]
# Tiny clips: the benchmark measures dispatch and the API, not rendering.
COMMON = {
    "OPENIMAGINE_PRICE": "1",
    "OPENIMAGINE_RATE_LIMITS": "enterprise=100000000",
    "OPENIMAGINE_DURATION": "0.5",
    "OPENIMAGINE_FPS": "8",
    "OPENIMAGINE_RESOLUTION": "64",
    "OPENIMAGINE_SECRET_KEY": "bench-secret-0123456789",
}


class Setup:
    """One configuration: its environment, its processes, its account."""

    def __init__(self, name: str, root: Path, stack: ExitStack, **settings: str) -> None:
        self.name = name
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGINE_")}
        self.env.update(COMMON, OPENIMAGINE_DATA_DIR=str(root / name), **settings)
        self.database_url = settings.get(
            "OPENIMAGINE_DATABASE_URL", f"sqlite:///{(root / name / 'openimagine.db').resolve()}"
        )
        self.stack = stack
        self.headers = {"Authorization": f"Bearer {bench_account(self.env)}"}
        self.url = ""

    def start(self, *args: str) -> subprocess.Popen:
        return start_process(self.stack, [*CLI, *args], self.env)

    def serve(self, *args: str) -> None:
        port = free_port()
        process = self.start("serve", "--port", str(port), *args)
        self.url = f"http://127.0.0.1:{port}"
        wait_ready(f"{self.url}/healthz", process)

    def run_task(self, client: httpx.Client, prompt: str) -> str:
        response = client.post(
            f"{self.url}/v1/generate", json={"prompt": prompt}, headers=self.headers
        )
        task_id = response.json()["data"]["task_id"]
        deadline = time.monotonic() + 120
        while True:
            status = client.get(
                f"{self.url}/v1/status", params={"task_id": task_id}, headers=self.headers
            ).json()["data"]["status"]
            if status in ("completed", "failed"):
                return task_id
            if time.monotonic() > deadline:
                sys.exit(f"{self.name}: task {task_id} did not finish")
            time.sleep(0.02)

    def dispatch_latencies(self, count: int) -> tuple[list[float], str]:
        """Milliseconds from creation to claim for ``count`` tasks, one after another."""
        with httpx.Client(timeout=30) as client:
            self.run_task(client, "warm-up")  # the engine and every connection warm
            task_ids = [self.run_task(client, f"dispatch {n}") for n in range(count)]
        db = Database(self.database_url)
        try:
            with db.read() as session:
                rows = session.execute(
                    select(Task.created_at, Task.started_at).where(Task.id.in_(task_ids))
                ).all()
        finally:
            db.dispose()
        return [(started - created).total_seconds() * 1000 for created, started in rows], task_ids[
            -1
        ]


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):8.1f} {p90:8.1f} {ordered[-1]:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    root = Path(tempfile.mkdtemp(prefix="openimagine-scale-bench-"))
    latencies: dict[str, list[float]] = {}
    throughput: dict[str, dict] = {}
    try:
        with ExitStack() as stack:
            pg_embedded = stack.enter_context(
                scratch.postgres_database(POSTGRES_ADMIN_URL, "oi_bench")
            )
            pg_celery = stack.enter_context(
                scratch.postgres_database(POSTGRES_ADMIN_URL, "oi_bench")
            )
            amqp = stack.enter_context(scratch.rabbitmq_vhost(AMQP_URL, "oi_bench"))

            sqlite = Setup("embedded-sqlite", root, stack)
            sqlite.serve()
            postgres = Setup("embedded-postgres", root, stack, OPENIMAGINE_DATABASE_URL=pg_embedded)
            postgres.serve()
            celery = Setup(
                "celery-postgres",
                root,
                stack,
                OPENIMAGINE_DATABASE_URL=pg_celery,
                OPENIMAGINE_BROKER_URL=amqp,
            )
            celery.serve("--no-worker")
            celery.start("worker")

            completed: dict[str, str] = {}
            for setup in (sqlite, postgres, celery):
                latencies[setup.name], completed[setup.name] = setup.dispatch_latencies(args.tasks)
            for setup in (sqlite, postgres):
                url = f"{setup.url}/v1/status?task_id={completed[setup.name]}"
                wrk(url, 2, setup.headers)  # warm up
                runs = [wrk(url, args.seconds, setup.headers) for _ in range(2)]
                throughput[setup.name] = max(runs, key=lambda r: r["rps"])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"dispatch latency, submit -> claimed (ms), {args.tasks} tasks one after another")
    print(f"{'':34} {'median':>8} {'p90':>8} {'max':>8}")
    labels = {
        "embedded-sqlite": "embedded, SQLite (wakeup event)",
        "embedded-postgres": "embedded, PostgreSQL",
        "celery-postgres": "Celery on RabbitMQ, PostgreSQL",
    }
    for name, values in latencies.items():
        print(f"{labels[name]:34} {summary(values)}")
    print()
    print(
        f"GET /v1/status of a completed task (wrk: {THREADS} thread, {CONNECTIONS} connections, "
        f"{args.seconds} s, best of 2)"
    )
    print(f"{'':34} {'req/s':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name in ("embedded-sqlite", "embedded-postgres"):
        result = throughput[name]
        print(
            f"{labels[name]:34} {result['rps']:8.0f} {result['p99_ms']:8.2f} {result['non_2xx']:8d}"
        )


if __name__ == "__main__":
    main()
