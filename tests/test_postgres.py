"""PostgreSQL: the same migrations, claims that skip locked rows, and a ledger that
cannot be overdrawn by concurrent writers — on a real server, a fresh database
per test (see ``scaleout.py``).

What a deployment with several API and worker machines relies on: two workers
never claim the same task, a worker never waits behind another's claim, a
lease taken over cannot be written through, a failed task is refunded once,
and a balance never goes below zero whatever the concurrency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, inspect, select, text, update

from openimagine.errors import InsufficientCredits
from openimagine.services import accounts, lifecycle
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import Account, LedgerEntry, Task
from openimagine.timeutil import utcnow

from conftest import (
    TASK_ENGINE,
    TASK_PRICE,
    Server,
    auth,
    expire_lease,
    make_principal,
    race_submissions,
    submit_task,
)
from scaleout import pg_url  # noqa: F401 - fixture

ENGINE, PRICE = TASK_ENGINE, TASK_PRICE  # what submit_task submits


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:  # noqa: F811 - the fixture above
    database = Database(pg_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


def ledger_kinds(db: Database, task_id: str) -> list[str]:
    with db.read() as session:
        return sorted(
            session.scalars(select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id))
        )


# --- migrations ---------------------------------------------------------------------------


def test_the_migrations_build_the_schema_on_postgres_and_are_idempotent(pg_url: str) -> None:  # noqa: F811
    database = Database(pg_url)
    try:
        assert not database.is_sqlite
        migrate.upgrade(database)
        migrate.upgrade(database)  # a second replica starting: nothing to do
        engine = create_engine(pg_url)
        try:
            tables = set(inspect(engine).get_table_names())
            assert {"accounts", "api_keys", "ledger_entries", "tasks", "alembic_version"} <= tables
            columns = {c["name"]: c for c in inspect(engine).get_columns("tasks")}
            assert "dispatched_at" in columns
            assert (
                "time zone" in str(columns["created_at"]["type"]).lower()
                or columns["created_at"]["type"].timezone
            )
            with engine.connect() as connection:
                heads = connection.execute(text("SELECT version_num FROM alembic_version")).all()
            assert len(heads) == 1
        finally:
            engine.dispose()
    finally:
        database.dispose()


def test_replicas_migrating_a_fresh_database_at_once_take_turns(pg_url: str) -> None:  # noqa: F811
    databases = [Database(pg_url) for _ in range(4)]
    barrier = threading.Barrier(len(databases))

    def start(database: Database) -> None:
        barrier.wait()
        migrate.upgrade(database)

    try:
        with ThreadPoolExecutor(len(databases)) as pool:
            list(pool.map(start, databases))  # raises if any replica failed
    finally:
        for database in databases:
            database.dispose()


# --- claims ---------------------------------------------------------------------------------


def test_a_claim_skips_a_row_another_transaction_holds_instead_of_waiting(db: Database) -> None:
    principal = make_principal(db, credits=10_000)
    first = submit_task(db, principal, "first")
    time.sleep(0.01)
    second = submit_task(db, principal, "second")

    def claims() -> list[lifecycle.Claim | None]:
        return [
            lifecycle.claim_next(db, owner="w2", model=ENGINE, lease_seconds=60),
            # Asking for the locked task by id (a Celery message) skips it too.
            lifecycle.claim_next(db, owner="w2", model=ENGINE, lease_seconds=60, task_id=first),
        ]

    with db.sql.connect() as holder, ThreadPoolExecutor(1) as pool:
        # Another worker's claim, mid-transaction, holding the oldest row.
        holder.execute(text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": first})
        future = pool.submit(claims)
        try:
            claim, by_id = future.result(timeout=5)
        except TimeoutError:
            pytest.fail("the claim waited for the other transaction's lock")
        finally:
            holder.rollback()
    assert claim is not None and claim.task_id == second
    assert by_id is None
    claim = lifecycle.claim_next(db, owner="w2", model=ENGINE, lease_seconds=60, task_id=first)
    assert claim is not None and claim.task_id == first


def test_concurrent_workers_claim_every_task_exactly_once(db: Database) -> None:
    principal = make_principal(db, credits=10_000)
    submitted = {submit_task(db, principal, f"take {n}") for n in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        while (
            claim := lifecycle.claim_next(db, owner=f"w{index}", model=ENGINE, lease_seconds=60)
        ) is not None:
            with lock:
                claimed.append(claim.task_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == sorted(submitted)  # each once, none left out
    with db.read() as session:
        attempts = session.scalars(select(Task.attempts)).all()
    assert set(attempts) == {1}


def test_claims_are_fair_between_accounts_on_postgres(db: Database) -> None:
    big, small = make_principal(db, credits=50 * PRICE), make_principal(db)
    backlog = [submit_task(db, big, f"burst {n}") for n in range(20)]
    first = lifecycle.claim_next(db, owner="w1", model=ENGINE, lease_seconds=60)
    assert first is not None and first.task_id == backlog[0]
    late = submit_task(db, small, "one small task")
    second = lifecycle.claim_next(db, owner="w2", model=ENGINE, lease_seconds=60)
    assert second is not None and second.task_id == late


def test_a_fair_claim_takes_another_task_when_the_fair_ones_are_locked(db: Database) -> None:
    """Another worker mid-claim holds the chosen account's only task: this claim
    takes the next free task instead of waiting or coming back empty."""
    busy, other = make_principal(db), make_principal(db)
    held = submit_task(db, busy, "held")
    free = submit_task(db, other, "free")
    submit_task(db, other, "also free")
    running = lifecycle.claim_next(db, owner="w0", model=ENGINE, lease_seconds=60)
    assert running is not None and running.task_id == held  # busy now runs one
    waiting = submit_task(db, busy, "busy's second")
    with db.sql.connect() as holder, ThreadPoolExecutor(1) as pool:
        # other has no task running, so the fair choice is other's oldest: hold it.
        holder.execute(text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": free})
        claim = pool.submit(
            lifecycle.claim_next, db, owner="w1", model=ENGINE, lease_seconds=60
        ).result(timeout=5)
        holder.rollback()
    assert claim is not None and claim.task_id != free
    assert claim.task_id in {waiting} | set(task_ids_of(db, other.account_id))


def task_ids_of(db: Database, account_id: int) -> list[str]:
    with db.read() as session:
        return list(session.scalars(select(Task.id).where(Task.account_id == account_id)))


def test_a_worker_whose_lease_was_taken_over_cannot_write_and_refunds_happen_once(
    db: Database,
) -> None:
    principal = make_principal(db, credits=1000)
    task_id = submit_task(db, principal)
    stale = lifecycle.claim_next(db, owner="old", model=ENGINE, lease_seconds=60)
    assert stale is not None
    expire_lease(db, task_id)
    assert lifecycle.reap_expired(db, max_attempts=2) == (1, 0)
    fresh = lifecycle.claim_next(db, owner="new", model=ENGINE, lease_seconds=60)
    assert fresh is not None and fresh.attempt == 2

    assert not lifecycle.renew(db, stale, lease_seconds=60, progress=50)
    assert not lifecycle.complete(db, stale, outputs=["x"], seeds=[])
    assert not lifecycle.fail(db, stale, message=lifecycle.ENGINE_FAILED, detail="late")

    expire_lease(db, task_id)  # the second worker dies too: out of attempts
    results = []
    barrier = threading.Barrier(4)

    def reap() -> None:
        barrier.wait()
        results.append(lifecycle.reap_expired(db, max_attempts=2))

    threads = [threading.Thread(target=reap) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(failed for _, failed in results) == 1
    with db.read() as session:
        task = session.get(Task, task_id)
        balance = session.scalar(select(Account.balance).where(Account.id == principal.account_id))
    assert (task.status, task.consumed_credits) == ("failed", 0)
    assert ledger_kinds(db, task_id) == ["debit", "refund"]
    assert balance == 1000


def test_stale_pending_tasks_are_handed_to_one_sweeper_at_a_time(db: Database) -> None:
    principal = make_principal(db, credits=10_000)
    old = [submit_task(db, principal, f"old {n}") for n in range(5)]
    with db.write() as session:
        session.execute(
            update(Task)
            .where(Task.id.in_(old))
            .values(dispatched_at=utcnow() - timedelta(seconds=120))
        )
    fresh = submit_task(db, principal, "fresh")
    assert lifecycle.pending_by_model(db) == {ENGINE: 6}

    with ThreadPoolExecutor(4) as pool:
        batches = list(
            pool.map(
                lambda _: lifecycle.take_stale_pending(db, model=ENGINE, older_than=60, limit=3),
                range(4),
            )
        )
    assert all(len(batch) <= 3 for batch in batches), batches  # the limit holds
    taken = [task_id for batch in batches for task_id in batch]
    assert sorted(taken) == sorted(old)  # every stale task once; the fresh one not at all
    assert fresh not in taken
    # Marked as dispatched now: not stale again until another older_than has passed.
    assert lifecycle.take_stale_pending(db, model=ENGINE, older_than=60, limit=10) == []
    assert lifecycle.take_stale_pending(db, model=ENGINE, older_than=60, limit=0) == []


# --- the ledger -----------------------------------------------------------------------------


def test_concurrent_submissions_never_overdraw_an_account(db: Database) -> None:
    principal = make_principal(db, credits=10 * PRICE)
    barrier = threading.Barrier(16)

    def attempt(n: int) -> str:
        if n < 16:
            barrier.wait()
        try:
            submit_task(db, principal, f"race {n}")
            return "ok"
        except InsufficientCredits:
            return "402"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(attempt, range(48)))
    assert outcomes.count("ok") == 10 and outcomes.count("402") == 38
    with db.read() as session:
        balance = session.scalar(select(Account.balance).where(Account.id == principal.account_id))
        debits = session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "debit")
        )
        task_count = session.scalar(select(func.count()).select_from(Task))
    assert (balance, debits, task_count) == (0, 10, 10)


def test_concurrent_submissions_admit_exactly_the_in_flight_cap(db: Database) -> None:
    principal = make_principal(db, credits=100 * PRICE)
    outcomes = race_submissions(db, [principal], 40, max_in_flight=5)
    assert outcomes == {"ok": 5, "429": 35}
    info = accounts.summary(db, account_id=principal.account_id)
    assert info["balance"] == 95 * PRICE and info["usage"]["tasks"]["pending"] == 5


def test_concurrent_submissions_fill_a_model_queue_exactly(db: Database) -> None:
    principals = [make_principal(db, credits=10 * PRICE) for _ in range(8)]
    outcomes = race_submissions(db, principals, 40, max_queue=6)
    assert outcomes == {"ok": 6, "503": 34}
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 6
        assert session.scalar(select(func.sum(Account.tasks_pending))) == 6


def test_usage_counters_stay_exact_under_concurrent_workers_and_submissions(db: Database) -> None:
    principals = [make_principal(db, credits=100 * PRICE) for _ in range(3)]

    def submitter(n: int) -> None:
        for k in range(10):
            submit_task(db, principals[(n + k) % 3], f"load {n}.{k}")

    def worker(n: int) -> None:
        for _ in range(12):
            claim = lifecycle.claim_next(db, owner=f"w{n}", model=ENGINE, lease_seconds=60)
            if claim is None:
                time.sleep(0.01)
                continue
            if claim.attempt % 2 or n % 2:
                lifecycle.complete(db, claim, outputs=[], seeds=[])
            else:
                lifecycle.fail(db, claim, message="video build failed", detail="test")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: submitter(n) if n < 4 else worker(n), range(8)))
    for principal in principals:
        with db.read() as session:
            counted = dict(
                session.execute(
                    select(Task.status, func.count())
                    .where(Task.account_id == principal.account_id)
                    .group_by(Task.status)
                ).all()
            )
            spent = -int(
                session.scalar(
                    select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                        LedgerEntry.account_id == principal.account_id,
                        LedgerEntry.kind.in_(("debit", "refund")),
                    )
                )
                or 0
            )
        usage = accounts.summary(db, account_id=principal.account_id)["usage"]
        assert usage["tasks"] == {
            status: counted.get(status, 0)
            for status in ("pending", "processing", "completed", "failed")
        }
        assert usage["credits_spent"] == spent


# --- the whole service on PostgreSQL ------------------------------------------------------------


def test_the_api_and_its_embedded_worker_run_on_postgres(
    start_server: Callable[..., Server],
    pg_url: str,  # noqa: F811
) -> None:
    server = start_server(database_url=pg_url)
    key = server.account(credits=1000)
    task_id = server.generate(key, mode="fun", ratio="16:9").json()["data"]["task_id"]
    data = server.wait(key, task_id)
    assert data["status"] == "completed", data
    assert data["consumed_credits"] == PRICE and len(data["response"]) == 2
    video = server.client.get(data["response"][0])
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert server.client.get("/readyz").status_code == 200
    missing = server.client.get("/v1/status", params={"task_id": "task_nope"}, headers=auth(key))
    assert missing.status_code == 404
    with server.db.read() as session:
        row = session.get(Task, task_id)
    assert row.attempts == 1 and row.started_at >= row.created_at


def test_account_on_postgres_after_debits_and_refunds_answers_exact_figures(
    start_server: Callable[..., Server],
    pg_url: str,  # noqa: F811
) -> None:
    """The figures are integers on every database (PostgreSQL's SUM is NUMERIC,
    which once reached the JSON encoder as a Decimal and answered 500)."""
    server = start_server(database_url=pg_url)
    key = server.account(name="pg-usage", plan="pro", credits=1000)
    ids = [
        server.generate(key, prompt=prompt).json()["data"]["task_id"]
        for prompt in ("a calm lake", "jailbait", "a red fox", "jailbait")
    ]
    assert [server.wait(key, task_id)["status"] for task_id in ids] == [
        "completed",
        "failed",
        "completed",
        "failed",
    ]
    pending = server.generate(key, prompt="one more").json()["data"]["task_id"]

    response = server.client.get("/v1/account", headers=auth(key))
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    tasks_now = data["usage"]["tasks"]
    assert sum(tasks_now.values()) == 5 and tasks_now["failed"] == 2
    assert tasks_now["completed"] + tasks_now["pending"] + tasks_now["processing"] == 3
    assert data["usage"]["credits_spent"] == 3 * PRICE
    assert data["balance"] == 1000 - 3 * PRICE
    assert data["usage"]["recent_tasks"][0]["task_id"] == pending
    assert accounts.summary(server.db, name="pg-usage")["usage"]["credits_spent"] == 3 * PRICE
    # The event-loop path refuses what the threaded one refuses.
    assert server.client.get("/v1/account", headers=auth("oi_not_a_key")).status_code == 401
    assert server.client.get("/v1/account").status_code == 401


def test_status_polls_survive_the_server_dropping_every_connection(
    start_server: Callable[..., Server],
    pg_url: str,  # noqa: F811
) -> None:
    """Status reads skip the pool's pre-ping; a connection PostgreSQL dropped (a
    restart, a proxy's idle timeout) is retried on a fresh one, not answered 503."""
    server = start_server(database_url=pg_url, run_workers=False)
    key = server.account(credits=1000)
    task_id = server.generate(key).json()["data"]["task_id"]

    def poll() -> int:
        return server.client.get(
            "/v1/status", params={"task_id": task_id}, headers=auth(key)
        ).status_code

    # Several pooled connections, so that the next poll meets a dropped one.
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: poll(), range(32))) == {200}
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        dropped = connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    admin.dispose()
    assert dropped >= 1
    assert [poll() for _ in range(5)] == [200] * 5


def test_status_polls_answer_while_every_api_thread_waits_on_a_lock(
    start_server: Callable[..., Server],
    pg_url: str,  # noqa: F811
) -> None:
    """On PostgreSQL status reads are awaited on the event loop, so they do not
    queue behind blocking work in the API's threads (here: a submission waiting
    on a row lock with the one thread there is)."""
    server = start_server(database_url=pg_url, run_workers=False, api_threads=1)
    key = server.account(name="locked", credits=1000)
    task_id = server.generate(key).json()["data"]["task_id"]
    holder = create_engine(pg_url)
    try:
        with holder.connect() as connection, ThreadPoolExecutor(1) as pool:
            connection.execute(text("SELECT id FROM accounts WHERE name = 'locked' FOR UPDATE"))
            blocked = pool.submit(server.generate, key)
            time.sleep(0.5)
            assert not blocked.done()  # the API's only thread waits on the lock
            started = time.monotonic()
            for _ in range(5):
                response = server.client.get(
                    "/v1/status", params={"task_id": task_id}, headers=auth(key)
                )
                assert response.status_code == 200
            assert time.monotonic() - started < 2
            assert not blocked.done()
            connection.rollback()
            assert blocked.result(timeout=10).status_code == 200
    finally:
        holder.dispose()


# --- the Celery workers' sweeper ----------------------------------------------------------------


class RecordingDispatcher:
    """A ``Dispatcher`` that keeps the notices (the real one publishes them to RabbitMQ)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def notify(self, task_id: str, engine: str) -> None:
        self.sent.append((task_id, engine))


def test_the_sweeper_republishes_lost_messages_and_expired_leases_only(
    db: Database, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from openimagine.worker.sweeper import Sweeper

    from conftest import make_settings

    settings = make_settings(tmp_path, redispatch_seconds=30, max_attempts=2)
    principal = make_principal(db, credits=10_000)
    stale = [submit_task(db, principal, f"stale {n}") for n in range(3)]
    fresh = submit_task(db, principal, "fresh")
    running = submit_task(db, principal, "running")
    with db.write() as session:
        session.execute(
            update(Task)
            .where(Task.id.in_(stale))
            .values(dispatched_at=utcnow() - timedelta(seconds=60))
        )
    claim = lifecycle.claim_next(db, owner="dead", model=ENGINE, lease_seconds=60, task_id=running)
    assert claim is not None
    expire_lease(db, running)

    # Five pending (the re-queued one included, its message just published) and as
    # many ready messages: nothing is missing.
    depth = {ENGINE: 5}
    dispatcher = RecordingDispatcher()
    sweeper = Sweeper(settings, db, dispatcher, depth.get)
    assert sweeper.sweep() == (1, 0, 0)
    assert dispatcher.sent == [(running, ENGINE)]  # the re-queued task, published at once

    depth[ENGINE] = 3  # five pending, three messages: two are lost
    dispatcher.sent.clear()
    assert sweeper.sweep() == (0, 0, 2)
    assert {task_id for task_id, _ in dispatcher.sent} <= set(stale)
    assert fresh not in {task_id for task_id, _ in dispatcher.sent}

    depth.clear()  # the broker cannot be asked: every stale task is published, once
    dispatcher.sent.clear()
    assert sweeper.sweep() == (0, 0, 1)
    assert sweeper.sweep() == (0, 0, 0)  # now dispatched recently: not stale
