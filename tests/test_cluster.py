"""A small cluster of real processes: two API replicas (``openimagine serve
--no-worker``) and two Celery workers (``openimagine worker``, one process
each), sharing PostgreSQL, RabbitMQ, a Redis rate limiter and a storage folder.

What an operator relies on when scaling out: a task accepted by any replica
runs exactly once; a worker machine that dies mid-task loses nothing (the
other worker takes the task over); a plan's limit is one limit however many
replicas answer; concurrent submissions on several replicas never
overdraw an account; and a task's webhooks reach their receivers, retried
with one webhook-id, even when every process was killed meanwhile.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from openimagine.settings import Settings
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import Account, LedgerEntry, Task, WebhookDelivery
from openimagine.testing.fake_upstreams import FakeConfig, FakeUpstream
from openimagine.testing.webhook_receiver import WebhookReceiver
from openimagine.worker.dispatch import CeleryDispatcher
from openimagine.worker.queues import create_celery_app

from conftest import Server, auth, free_port, make_account, openimagine_env
from scaleout import fresh_postgres_database, rabbitmq_vhost, redis_prefix, require_redis

PRICE = 40
LOCAL = "test-sleep"
# The default model renders here (on the GPU machines, as it were); "relay" goes to a
# fake Grok Imagine on loopback, served by a Celery worker of its own.
MODELS = """
default = "test-sleep"

[models.test-sleep]
engine = "test-sleep"

[models.relay]
engine = "xai"
base_url = "{upstream}"
upstream_model = "grok-imagine-video"
variations = 1
price = 10
"""
SETTINGS: dict[str, Any] = {
    "engine": "test-sleep",
    "test_sleep_seconds": 0.2,
    "duration": 0.5,
    "fps": 8,
    "resolution": 64,
    # Short enough for the takeover to happen within seconds, long enough that a
    # heartbeat delayed by a busy 2-core machine does not lose a healthy lease.
    "lease_seconds": 5,
    "heartbeat_seconds": 0.5,
    "redispatch_seconds": 2,
    "rate_limits": "free=100,pro=100000,enterprise=100000",
    "secret_key": "cluster-secret-0123456789",
    # The webhook receivers are on loopback; their tries half a second apart.
    "allow_private_urls": True,
    "webhook_retry_schedule": "0,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}


# Looked up here, not in the child between fork and exec, where little is safe.
_PRCTL = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_pytest() -> None:
    """In the child before exec: SIGKILL when pytest dies, so an interrupted run leaves
    no servers behind (the fixture's own cleanup covers every other ending)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Process:
    process: subprocess.Popen
    log: Path
    base_url: str | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            # Workers lead a process group (their forked children): signal them all.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            self._reap_group()

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def _reap_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Cluster:
    root: Path
    settings: dict[str, Any]
    db: Database
    apis: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    def env(self, name: str, **overrides: Any) -> dict[str, str]:
        # Each process has a data folder of its own: only the shared settings connect them.
        return openimagine_env(self.root / name, **{**self.settings, **overrides})

    def spawn(self, name: str, *args: str, env: dict[str, str]) -> Process:
        log = self.root / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "openimagine", *args],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            # A group of its own: a test kills a worker together
            # with its forked child.
            start_new_session=True,
            preexec_fn=_die_with_pytest,
        )  # noqa: PLW1509 - one syscall
        return Process(process, log)

    def start_api(self, index: int) -> Process:
        for _ in range(3):
            port = free_port()
            api = self.spawn(
                f"api{index}", "serve", "--no-worker", env=self.env(f"api{index}", port=port)
            )
            api.base_url = f"http://127.0.0.1:{port}"
            # Another test run on this machine may take the free port first.
            deadline = time.monotonic() + 60
            while api.process.poll() is None and "Uvicorn running" not in api.text():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if api.process.poll() is None or "address already in use" not in api.text():
                break
        self.apis.append(api)
        return api

    def start_worker(self, index: int, *args: str, **overrides: Any) -> Process:
        worker = self.spawn(
            f"worker{index}-{len(self.workers)}",
            "worker",
            *(args or ("--models", LOCAL)),
            env=self.env(f"worker{index}", **overrides),
        )
        self.workers.append(worker)
        return worker

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for api in self.apis:
            while True:
                assert api.process.poll() is None, f"API exited:\n{api.text()}"
                try:
                    if httpx.get(f"{api.base_url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"API did not start:\n{api.text()}"
                time.sleep(0.1)
        for worker in self.live_workers():
            while "ready: model" not in worker.text():
                assert worker.process.poll() is None, f"worker exited:\n{worker.text()}"
                assert time.monotonic() < deadline, f"worker did not start:\n{worker.text()}"
                time.sleep(0.1)

    def live_workers(self) -> list[Process]:
        return [w for w in self.workers if w.process.poll() is None]

    def task(self, task_id: str) -> Task:
        with self.db.read() as session:
            task = session.get(Task, task_id)
        assert task is not None, f"task {task_id} lost"
        return task

    def ledger(self, task_id: str) -> list[str]:
        with self.db.read() as session:
            return sorted(
                session.scalars(select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id))
            )

    def balance(self, name: str) -> int:
        with self.db.read() as session:
            return session.scalar(select(Account.balance).where(Account.name == name))

    def wait_finished(self, task_ids: list[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.db.read() as session:
                open_ = session.scalars(
                    select(Task.id).where(
                        Task.id.in_(task_ids), Task.status.in_(("pending", "processing"))
                    )
                ).all()
            if not open_:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(w.text()[-3000:] for w in self.workers)
                raise AssertionError(f"{len(open_)} task(s) not finished:\n{logs}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    redis_url = require_redis()
    root = tmp_path_factory.mktemp("cluster")
    with fresh_postgres_database() as pg_url, rabbitmq_vhost() as amqp_url:
        db = Database(pg_url)
        migrate.upgrade(db)
        upstream = FakeUpstream("xai", FakeConfig(job_seconds=0.5)).start()
        models = root / "models.toml"
        models.write_text(MODELS.format(upstream=upstream.base_url))
        settings = {
            **SETTINGS,
            "database_url": pg_url,
            "broker_url": amqp_url,
            "models_file": models,
            "ratelimit_url": redis_url,
            "ratelimit_prefix": redis_prefix(),
            "storage_dir": root / "shared-storage",
        }
        cluster = Cluster(root, settings, db)
        try:
            for index in (1, 2):
                cluster.start_worker(index)  # they start while the APIs do
            for index in (1, 2):
                cluster.start_api(index)
            cluster.wait_ready()
            yield cluster
        finally:
            for process in cluster.apis + cluster.workers:
                process.stop()
            db.dispose()
            upstream.stop()


def submit(base_url: str, key: str, prompt: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/generate", json={"prompt": prompt}, headers=auth(key), timeout=30
    )


def completions(workers: list[Process], task_id: str) -> list[int]:
    return [w.text().count(f"task {task_id}: completed") for w in workers]


# --- the tests, in the order they run ------------------------------------------------------


def test_the_worker_process_imports_no_gpu_library_before_it_forks() -> None:
    # The main process of ``openimagine worker`` imports this much; CUDA must only
    # ever be initialised in the forked children, where the engine is created.
    probe = (
        "import sys, openimagine.cli, openimagine.worker.celery_app; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_twenty_tasks_submitted_to_both_apis_each_run_exactly_once(cluster: Cluster) -> None:
    key = make_account(cluster.db, name="twenty", credits=100 * PRICE)
    task_ids = []
    for n in range(20):
        api = cluster.apis[n % 2]
        response = submit(api.base_url, key, f"a paper boat on a river, take {n}")
        assert response.status_code == 200, response.text
        task_ids.append(response.json()["data"]["task_id"])
    assert len(set(task_ids)) == 20
    cluster.wait_finished(task_ids)

    for task_id in task_ids:
        row = cluster.task(task_id)
        assert row.status == "completed", (task_id, row.status, row.error_detail)
        # The engine only ever runs after a claim, and every claim counts an attempt.
        assert row.attempts == 1, (task_id, row.attempts)
        assert cluster.ledger(task_id) == ["debit"]  # charged once, never refunded
        assert sum(completions(cluster.workers, task_id)) == 1
    assert cluster.balance("twenty") == 80 * PRICE
    per_worker = [sum(completions([w], t)[0] for t in task_ids) for w in cluster.workers]
    assert all(count > 0 for count in per_worker), per_worker  # both took their share

    # Whichever replica is asked, the files written by whichever worker download.
    for api in cluster.apis:
        status = httpx.get(
            f"{api.base_url}/v1/status",
            params={"task_id": task_ids[0]},
            headers=auth(key),
            timeout=30,
        ).json()["data"]
        assert status["status"] == "completed" and status["response"][0].startswith(api.base_url)
        video = httpx.get(status["response"][1], timeout=30)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"


def test_a_free_accounts_limit_is_one_limit_across_both_apis(cluster: Cluster) -> None:
    key = make_account(cluster.db, name="free-user", plan="free", credits=0)
    remaining = []
    with httpx.Client(timeout=30) as client:
        for n in range(100):
            api = cluster.apis[n % 2]
            response = client.get(
                f"{api.base_url}/v1/status", params={"task_id": "task_nope"}, headers=auth(key)
            )
            assert response.status_code == 404, (n, response.status_code, response.text)
            remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        assert remaining[-1] == 0 and remaining[0] == 99
        assert remaining == sorted(remaining, reverse=True)  # one counter, counting down
        for api in cluster.apis:  # the 101st and 102nd, whichever replica they reach
            over = client.get(
                f"{api.base_url}/v1/status", params={"task_id": "task_nope"}, headers=auth(key)
            )
            assert over.status_code == 429, over.text
            assert over.json()["error"] == "RATE_LIMITED"
            assert int(over.headers["Retry-After"]) >= 1


def test_concurrent_submissions_on_both_apis_never_overdraw(cluster: Cluster) -> None:
    key = make_account(cluster.db, name="low-balance", credits=5 * PRICE)

    def attempt(n: int) -> int:
        return submit(cluster.apis[n % 2].base_url, key, f"race {n}").status_code

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(attempt, range(24)))
    assert codes.count(200) == 5 and codes.count(402) == 19, codes
    assert cluster.balance("low-balance") == 0
    with cluster.db.read() as session:
        account_id = session.scalar(select(Account.id).where(Account.name == "low-balance"))
        debits = session.scalars(
            select(LedgerEntry.amount).where(
                LedgerEntry.account_id == account_id, LedgerEntry.kind == "debit"
            )
        ).all()
        task_ids = list(session.scalars(select(Task.id).where(Task.account_id == account_id)))
    assert debits == [-PRICE] * 5 and len(task_ids) == 5
    cluster.wait_finished(task_ids)  # leave no work behind for the next test


def test_a_task_whose_message_could_not_be_published_still_runs(
    cluster: Cluster, start_server: Callable[..., Server]
) -> None:
    # An API replica whose broker is unreachable: it accepts the task (the row is
    # the truth) and cannot publish; the workers' sweeper publishes it later.
    # With a broker URL set, ``serve`` runs no worker of its own either.
    broken = {**cluster.settings, "broker_url": "amqp://guest:guest@127.0.0.1:1//"}
    api = start_server(**broken)
    key = api.account(name="unpublished", credits=10 * PRICE)
    started = time.monotonic()
    response = api.generate(key, prompt="a kite over the dunes")
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 10  # a failed publish does not hold the request long
    task_id = response.json()["data"]["task_id"]
    assert cluster.task(task_id).status == "pending"

    cluster.wait_finished([task_id], timeout=60)
    row = cluster.task(task_id)
    assert (row.status, row.attempts) == ("completed", 1)
    assert sum(completions(cluster.workers, task_id)) == 1
    assert any("published again" in w.text() for w in cluster.workers)
    assert cluster.ledger(task_id) == ["debit"]


def test_duplicate_messages_for_a_finished_task_do_nothing(cluster: Cluster) -> None:
    key = make_account(cluster.db, name="duplicates", credits=10 * PRICE)
    task_id = submit(cluster.apis[1].base_url, key, "a heron at dawn").json()["data"]["task_id"]
    cluster.wait_finished([task_id])
    before = cluster.task(task_id)

    settings = Settings(**{**cluster.settings, "data_dir": cluster.root / "publisher"})
    publisher = CeleryDispatcher(create_celery_app(settings))
    for _ in range(3):  # as a redelivery or an over-eager sweeper would
        publisher.notify(task_id, "test-sleep")
    deadline = time.monotonic() + 30
    while sum(w.text().count(f"task {task_id}: not pending") for w in cluster.workers) < 3:
        assert time.monotonic() < deadline, "the duplicate messages were not consumed"
        time.sleep(0.1)
    after = cluster.task(task_id)
    assert (after.status, after.attempts, after.finished_at) == ("completed", 1, before.finished_at)
    assert sum(completions(cluster.workers, task_id)) == 1
    assert cluster.ledger(task_id) == ["debit"]


def test_a_worker_killed_mid_task_is_taken_over_by_the_other(cluster: Cluster) -> None:
    # Workers whose engine takes long enough to be killed in the middle.
    for worker in cluster.live_workers():
        worker.stop()
    slow = {"test_sleep_seconds": 3}
    for index in (1, 2):
        cluster.start_worker(index, **slow)
    cluster.wait_ready()
    first, second = cluster.live_workers()

    key = make_account(cluster.db, name="takeover", credits=10 * PRICE)
    response = submit(cluster.apis[0].base_url, key, "a lighthouse in a storm")
    task_id = response.json()["data"]["task_id"]
    deadline = time.monotonic() + 60
    while (row := cluster.task(task_id)).status != "processing" or row.lease_owner is None:
        assert time.monotonic() < deadline, f"never started: {row.status}"
        time.sleep(0.05)
    # The lease owner names the worker process (host:pid:...); find its group.
    owner_pid = int(row.lease_owner.split(":")[1])
    victim = next(w for w in (first, second) if os.getpgid(owner_pid) == w.process.pid)
    survivor = second if victim is first else first
    victim.kill()  # the whole machine's worker: main process and its child, SIGKILL

    cluster.wait_finished([task_id], timeout=90)
    row = cluster.task(task_id)
    assert row.status == "completed", (row.status, row.error_detail, survivor.text()[-3000:])
    assert row.attempts == 2  # the killed attempt counted, the takeover finished it
    assert cluster.ledger(task_id) == ["debit"]
    assert cluster.balance("takeover") == 9 * PRICE
    assert completions([survivor], task_id) == [1]
    assert completions([victim], task_id) == [0]
    assert survivor.process.poll() is None


def test_a_worker_stopped_mid_task_gives_it_back_at_once(cluster: Cluster) -> None:
    """SIGTERM to a worker's main process only (docker stop, Kubernetes): the
    running task goes back to the queue without counting an attempt, the other
    worker takes it over before the lease could even expire, and the stopped
    worker exits long before its clip would have been done."""
    for worker in cluster.live_workers():
        worker.stop()
    sleep_seconds = 10
    for index in (1, 2):
        cluster.start_worker(index, test_sleep_seconds=sleep_seconds)
    cluster.wait_ready()
    first, second = cluster.live_workers()

    key = make_account(cluster.db, name="graceful", credits=10 * PRICE)
    task_id = submit(cluster.apis[0].base_url, key, "a kite over the dunes").json()["data"][
        "task_id"
    ]
    deadline = time.monotonic() + 60
    while (row := cluster.task(task_id)).status != "processing" or row.lease_owner is None:
        assert time.monotonic() < deadline, f"never started: {row.status}"
        time.sleep(0.05)
    first_owner = row.lease_owner
    owner_pid = int(first_owner.split(":")[1])
    victim = next(w for w in (first, second) if os.getpgid(owner_pid) == w.process.pid)
    survivor = second if victim is first else first

    stopped_at = time.monotonic()
    os.kill(victim.process.pid, signal.SIGTERM)  # the main process, not its group
    while (row := cluster.task(task_id)).lease_owner in (first_owner, None):
        assert time.monotonic() - stopped_at < cluster.settings["lease_seconds"], (
            f"not handed over before the lease expired: {row.status}\n{victim.text()[-3000:]}"
        )
        time.sleep(0.05)
    victim.process.wait(timeout=sleep_seconds - 2)  # it did not finish the clip first

    cluster.wait_finished([task_id], timeout=90)
    row = cluster.task(task_id)
    assert row.status == "completed", (row.status, row.error_detail, survivor.text()[-3000:])
    assert row.attempts == 1  # the given-back attempt is not counted
    assert cluster.ledger(task_id) == ["debit"]
    assert cluster.balance("graceful") == 9 * PRICE
    assert completions([survivor], task_id) == [1]
    assert f"task {task_id}: released" in victim.text()


def test_a_task_running_on_a_celery_worker_is_cancelled_from_another_api(cluster: Cluster) -> None:
    """Cancel through one replica while a worker process elsewhere renders: the task
    ends failed "Task cancelled", refunded once, and that worker stops the engine at
    its next heartbeat instead of rendering on (the workers here sleep 10 s a task)."""
    live = cluster.live_workers()
    assert live
    key = make_account(cluster.db, name="canceller", credits=10 * PRICE)
    task_id = submit(cluster.apis[0].base_url, key, "a long take").json()["data"]["task_id"]
    deadline = time.monotonic() + 60
    while cluster.task(task_id).status != "processing":
        assert time.monotonic() < deadline, "never started"
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    answer = httpx.post(
        f"{cluster.apis[1].base_url}/v1/cancel",
        json={"task_id": task_id},
        headers=auth(key),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["error_message"] == "Task cancelled"
    assert cluster.ledger(task_id) == ["debit", "refund"]
    assert cluster.balance("canceller") == 10 * PRICE
    # The worker gives up its engine within a heartbeat or two, long before its 10 s.
    while not any(f"task {task_id}: lease lost" in w.text() for w in live):
        assert time.monotonic() - cancelled_at < 8, [w.text()[-2000:] for w in live]
        time.sleep(0.1)
    row = cluster.task(task_id)
    assert (row.status, row.consumed_credits) == ("failed", 0)
    assert completions(live, task_id) == [0] * len(live)


def test_a_relay_model_runs_on_its_own_celery_worker_next_to_the_local_model(
    cluster: Cluster,
) -> None:
    """``openimagine worker`` without --models serves every model, a Celery worker
    each: the relay's tasks run there while the local model's go to its queue."""
    both = cluster.start_worker(9, "--models", f"relay,{LOCAL}")
    deadline = time.monotonic() + 90
    while both.text().count("ready: model") < 2:
        assert both.process.poll() is None, both.text()
        assert time.monotonic() < deadline, both.text()
        time.sleep(0.1)
    key = make_account(cluster.db, name="relay-user", plan="pro", credits=1000)
    api = cluster.apis[0].base_url
    relayed = [
        httpx.post(
            f"{api}/v1/generate",
            json={"prompt": f"a comet {n}", "model": "relay"},
            headers=auth(key),
            timeout=30,
        ).json()["data"]["task_id"]
        for n in range(3)
    ]
    local = submit(api, key, "a harbour at dawn").json()["data"]["task_id"]
    cluster.wait_finished([*relayed, local])
    for task_id in relayed:
        row = cluster.task(task_id)
        assert (row.status, row.model, row.rendered_by) == ("completed", "relay", "relay")
        assert len(row.outputs) == 1 and row.upstream["model"] == "relay"
    assert cluster.task(local).status == "completed"
    assert cluster.balance("relay-user") == 1000 - 3 * 10 - PRICE
    # SIGTERM to the parent alone (as a service manager sends it) stops both children.
    both.process.send_signal(signal.SIGTERM)
    assert both.process.wait(timeout=60) == 0, both.text()[-3000:]


# --- webhooks (the crash test kills every process: it runs last) ---------------------------


def deliveries_of(cluster: Cluster, task_id: str) -> list[WebhookDelivery]:
    with cluster.db.read() as session:
        return list(
            session.scalars(select(WebhookDelivery).where(WebhookDelivery.task_id == task_id))
        )


def test_webhooks_from_the_cluster_are_retried_with_one_webhook_id_and_verify(
    cluster: Cluster,
) -> None:
    """A task accepted by one replica, run by a Celery worker, announced by whichever
    process claims the delivery: a receiver that fails twice gets the third try,
    the same webhook-id each time, and no try is ever sent twice."""
    key = make_account(cluster.db, name="hooked", credits=10 * PRICE)
    first, second = (api.base_url for api in cluster.apis[:2])
    with (
        WebhookReceiver(answers=[500, 500]) as endpoint_receiver,
        WebhookReceiver(answers=[503, 500]) as callback_receiver,
        httpx.Client(timeout=30) as client,
    ):
        endpoint = client.post(
            f"{second}/v1/webhooks", json={"url": endpoint_receiver.url}, headers=auth(key)
        ).json()["data"]
        response = client.post(
            f"{first}/v1/generate",
            headers=auth(key),
            json={"prompt": "a lantern on a jetty", "callback_url": callback_receiver.url},
        )
        task_id = response.json()["data"]["task_id"]
        cluster.wait_finished([task_id])
        default = client.get(f"{second}/v1/webhooks/default/secret", headers=auth(key)).json()[
            "data"
        ]["key"]

        for receiver, secret in (
            (endpoint_receiver, endpoint["secret"]),
            (callback_receiver, default),
        ):
            tries = receiver.wait_for(3, timeout=60)
            assert tries[2].answered == 200
            assert len({t.webhook_id for t in tries}) == 1
            events = [t.verify(secret) for t in tries]
            assert {e["type"] for e in events} == {"task.completed"}
            assert events[0]["data"]["task_id"] == task_id
        time.sleep(2)  # delivered once each: no process sends a fourth try
        assert len(endpoint_receiver.received) == len(callback_receiver.received) == 3
        log = client.get(
            f"{first}/v1/webhooks/{endpoint['id']}/deliveries", headers=auth(key)
        ).json()["data"]["deliveries"]
        assert [a["status_code"] for a in log[0]["attempts"]] == [500, 500, 200]
        assert {row.status for row in deliveries_of(cluster, task_id)} == {"delivered"}


def test_a_webhook_whose_receiver_was_down_arrives_after_every_process_was_killed(
    cluster: Cluster,
) -> None:
    """The receiver is down when the task ends; then every API and worker process is
    SIGKILLed (nothing cleans up); the receiver comes up and one API replica
    restarts: the event arrives, once, with its webhook-id. Leaves one API only."""
    key = make_account(cluster.db, name="hooked-crash", credits=10 * PRICE)
    receiver = WebhookReceiver(port=free_port())  # not started: down
    response = httpx.post(
        f"{cluster.apis[0].base_url}/v1/generate",
        headers=auth(key),
        json={"prompt": "a storm at sea", "callback_url": receiver.url},
        timeout=30,
    )
    task_id = response.json()["data"]["task_id"]
    cluster.wait_finished([task_id])
    deadline = time.monotonic() + 60
    while (
        not (rows := deliveries_of(cluster, task_id))
        or rows[0].attempts < 1
        or (rows[0].lease_owner is not None)
    ):
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    for process in cluster.apis + cluster.workers:
        if process.process.poll() is None:
            process.kill()
    (row,) = deliveries_of(cluster, task_id)
    assert row.status == "pending"

    with receiver:
        api = cluster.start_api(3)
        (delivery,) = receiver.wait_for(1, timeout=90)
        event = delivery.verify(
            httpx.get(
                f"{api.base_url}/v1/webhooks/default/secret", headers=auth(key), timeout=30
            ).json()["data"]["key"]
        )
        assert (event["type"], event["data"]["task_id"]) == ("task.completed", task_id)
        assert delivery.webhook_id == row.event_id
        time.sleep(1.5)
        assert len(receiver.received) == 1
        assert deliveries_of(cluster, task_id)[0].status == "delivered"
