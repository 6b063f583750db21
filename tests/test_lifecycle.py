"""The task lifecycle on a real SQLite database: claims, leases, fencing,
re-queue of expired leases, and the refund that happens exactly once.

These are the guarantees an operator relies on when workers crash, stall or
run in several processes against one database: a task is never run by two
workers at once for credit, a worker that lost its lease cannot write, and a
failed task gives its credits back once and only once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from openimagine.errors import InsufficientCredits
from openimagine.services import lifecycle
from openimagine.services.lifecycle import ENGINE_FAILED, Claim
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import Account, LedgerEntry, Task

from conftest import (
    TASK_ENGINE,
    TASK_PRICE,
    expire_lease,
    make_principal,
    make_settings,
    submit_task,
)

ENGINE, PRICE = TASK_ENGINE, TASK_PRICE  # what submit_task submits
LEASE = 60.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    settings = make_settings(tmp_path)
    database = Database(settings.resolved_database_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


def claim(db: Database, owner: str, **kwargs) -> Claim | None:  # type: ignore[no-untyped-def]
    kwargs.setdefault("lease_seconds", LEASE)
    return lifecycle.claim_next(db, owner=owner, model=kwargs.pop("engine", ENGINE), **kwargs)


def task_row(db: Database, task_id: str) -> Task:
    with db.read() as session:
        task = session.get(Task, task_id)
    assert task is not None
    return task


def balance(db: Database, account_id: int) -> int:
    with db.read() as session:
        return session.scalar(select(Account.balance).where(Account.id == account_id))


def entries(db: Database, task_id: str, kind: str | None = None) -> list[LedgerEntry]:
    with db.read() as session:
        query = select(LedgerEntry).where(LedgerEntry.task_id == task_id)
        if kind is not None:
            query = query.where(LedgerEntry.kind == kind)
        return list(session.scalars(query))


def ledger_sum(db: Database, account_id: int) -> int:
    with db.read() as session:
        return session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.account_id == account_id
            )
        )


def take_over(db: Database, first: Claim, owner: str = "worker-b") -> Claim:
    """First's lease expires, the reaper re-queues, another worker claims it."""
    expire_lease(db, first.task_id)
    assert lifecycle.reap_expired(db, max_attempts=3) == (1, 0)
    second = claim(db, owner, task_id=first.task_id)
    assert second is not None
    assert second.attempt == first.attempt + 1
    return second


# --- claiming ---------------------------------------------------------------------------


def test_two_claims_get_two_different_tasks_and_a_third_gets_none(db: Database) -> None:
    who = make_principal(db)
    first_id, second_id = submit_task(db, who), submit_task(db, who)

    a = claim(db, "worker-a")
    b = claim(db, "worker-b")

    assert a is not None and b is not None
    assert {a.task_id, b.task_id} == {first_id, second_id}
    assert a.task_id == first_id  # oldest first
    assert claim(db, "worker-c") is None
    row = task_row(db, a.task_id)
    assert (row.status, row.attempts, row.lease_owner) == ("processing", 1, "worker-a")
    assert row.lease_expires_at is not None and row.started_at is not None


def test_a_claim_only_takes_tasks_of_its_own_engine(db: Database) -> None:
    who = make_principal(db)
    task_id = submit_task(db, who, engine="other-engine")
    assert claim(db, "worker-a") is None
    taken = claim(db, "worker-a", engine="other-engine")
    assert taken is not None and taken.task_id == task_id


# --- fair claims -------------------------------------------------------------------------


def test_a_late_account_is_served_before_an_earlier_accounts_backlog(db: Database) -> None:
    big, small = make_principal(db, credits=PRICE * 50), make_principal(db)
    backlog = [submit_task(db, big, f"burst {n}") for n in range(20)]
    first = claim(db, "w1")
    assert first is not None and first.task_id == backlog[0]  # alone: oldest first
    late = submit_task(db, small, "one small task")
    # big has a task running, small none: small's task goes next.
    second = claim(db, "w2")
    assert second is not None and second.task_id == late
    # Both running one now: the oldest waiting task, big's.
    third = claim(db, "w3")
    assert third is not None and third.task_id == backlog[1]


def test_with_one_slot_accounts_take_turns_instead_of_the_backlog_going_first(db: Database) -> None:
    """One worker: when it claims, nothing runs, so the account served least
    recently goes next; a late account does not wait for the backlog."""
    big, small = make_principal(db, credits=PRICE * 50), make_principal(db)
    backlog = [submit_task(db, big, f"burst {n}") for n in range(10)]
    running = claim(db, "w")
    assert running is not None and running.task_id == backlog[0]
    late = submit_task(db, small, "one small task")
    assert lifecycle.complete(db, running, outputs=[], seeds=[])
    after = claim(db, "w")
    assert after is not None and after.task_id == late
    assert lifecycle.complete(db, after, outputs=[], seeds=[])
    again = claim(db, "w")
    assert again is not None and again.task_id == backlog[1]


def test_among_accounts_with_as_many_running_the_oldest_task_goes_first(db: Database) -> None:
    principals = [make_principal(db) for _ in range(3)]
    ids = [submit_task(db, principal, f"t{n}") for n, principal in enumerate(principals * 2)]
    order = [claim(db, f"w{n}") for n in range(6)]
    # Round by round: each account's oldest, oldest account first.
    assert [c.task_id for c in order if c is not None] == ids


def test_plan_priority_serves_enterprise_then_pro_then_free_when_asked(db: Database) -> None:
    free = make_principal(db)
    with db.write() as session:
        session.execute(update(Account).where(Account.id == free.account_id).values(plan="free"))
    enterprise = make_principal(db)
    with db.write() as session:
        session.execute(
            update(Account).where(Account.id == enterprise.account_id).values(plan="enterprise")
        )
    pro = make_principal(db)
    ids = {
        who: submit_task(db, principal)
        for who, principal in (("free", free), ("enterprise", enterprise), ("pro", pro))
    }
    by_plan = [claim(db, f"w{n}", plan_priority=True) for n in range(3)]
    assert [c.task_id for c in by_plan if c] == [ids["enterprise"], ids["pro"], ids["free"]]


def test_claiming_a_named_task_still_takes_exactly_that_task(db: Database) -> None:
    big, small = make_principal(db), make_principal(db)
    older = submit_task(db, big)
    named = submit_task(db, small)
    taken = claim(db, "w", task_id=older)
    assert taken is not None and taken.task_id == older
    assert claim(db, "w", task_id=older) is None  # no longer pending
    assert claim(db, "w", task_id=named, engine="other-engine") is None


def test_many_threads_claiming_at_once_never_get_the_same_task(
    tmp_path: Path, db: Database
) -> None:
    who = make_principal(db, credits=PRICE * 40)
    submitted = {submit_task(db, who, prompt=f"clip {n}") for n in range(40)}
    # Each thread has its own Database (its own connections), like separate processes.
    url = str(db.url)
    claims: list[Claim] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        own = Database(url)
        try:
            start.wait()
            while True:
                taken = claim(own, f"worker-{index}")
                if taken is None:
                    return
                with lock:
                    claims.append(taken)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    ids = [c.task_id for c in claims]
    assert len(ids) == len(set(ids)), "a task was claimed twice"
    assert set(ids) == submitted
    with db.read() as session:
        rows = session.execute(select(Task.id, Task.status, Task.attempts, Task.lease_owner)).all()
    owners = {c.task_id: c.owner for c in claims}
    for row in rows:
        assert row.status == "processing" and row.attempts == 1
        assert row.lease_owner == owners[row.id]


# --- fencing ----------------------------------------------------------------------------


def test_a_fenced_out_worker_cannot_complete_the_task(db: Database) -> None:
    who = make_principal(db)
    submit_task(db, who)
    old = claim(db, "worker-a")
    assert old is not None
    new = take_over(db, old)

    assert lifecycle.complete(db, old, outputs=["outputs/stale/0.mp4"], seeds=[1]) is False
    row = task_row(db, old.task_id)
    assert (row.status, row.outputs, row.lease_owner) == ("processing", [], "worker-b")

    assert lifecycle.complete(db, new, outputs=["outputs/x/0.mp4"], seeds=[7]) is True
    row = task_row(db, old.task_id)
    assert (row.status, row.outputs, row.progress) == ("completed", ["outputs/x/0.mp4"], 100)
    assert row.lease_owner is None and row.lease_expires_at is None


def test_a_fenced_out_worker_cannot_fail_or_refund_the_task(db: Database) -> None:
    who = make_principal(db)
    submit_task(db, who)
    old = claim(db, "worker-a")
    assert old is not None
    new = take_over(db, old)
    before = balance(db, who.account_id)

    assert lifecycle.fail(db, old, message=ENGINE_FAILED, detail="stale worker") is False
    assert lifecycle.release(db, old) is False
    assert entries(db, old.task_id, "refund") == []
    assert balance(db, who.account_id) == before
    row = task_row(db, old.task_id)
    assert (row.status, row.consumed_credits, row.attempts) == ("processing", PRICE, 2)

    # The current owner still can.
    assert lifecycle.fail(db, new, message=ENGINE_FAILED, detail="engine broke") is True
    assert len(entries(db, old.task_id, "refund")) == 1
    assert balance(db, who.account_id) == before + PRICE


def test_renew_extends_the_lease_until_another_worker_takes_over(db: Database) -> None:
    who = make_principal(db)
    submit_task(db, who)
    old = claim(db, "worker-a", lease_seconds=30)
    assert old is not None
    before = task_row(db, old.task_id).lease_expires_at

    assert lifecycle.renew(db, old, lease_seconds=300, progress=42) is True
    row = task_row(db, old.task_id)
    assert row.lease_expires_at > before and row.progress == 42

    new = take_over(db, old)
    assert lifecycle.renew(db, old, lease_seconds=300, progress=50) is False
    assert task_row(db, old.task_id).lease_owner == "worker-b"
    assert lifecycle.renew(db, new, lease_seconds=300, progress=120) is True
    assert task_row(db, old.task_id).progress == 99  # never 100 before it completes


def test_a_finished_task_cannot_be_written_again(db: Database) -> None:
    who = make_principal(db)
    submit_task(db, who)
    taken = claim(db, "worker-a")
    assert taken is not None
    assert lifecycle.complete(db, taken, outputs=["o/0.mp4"], seeds=[]) is True
    assert lifecycle.fail(db, taken, message=ENGINE_FAILED, detail="late") is False
    assert lifecycle.renew(db, taken, lease_seconds=10, progress=1) is False
    assert entries(db, taken.task_id, "refund") == []
    assert task_row(db, taken.task_id).status == "completed"


# --- expired leases ---------------------------------------------------------------------


def test_reap_requeues_an_expired_lease_and_leaves_live_ones_alone(db: Database) -> None:
    who = make_principal(db)
    stalled_id, live_id = submit_task(db, who), submit_task(db, who)
    stalled = claim(db, "worker-a")
    live = claim(db, "worker-b")
    assert stalled is not None and live is not None and stalled.task_id == stalled_id
    expire_lease(db, stalled_id)

    assert lifecycle.reap_expired(db, max_attempts=3) == (1, 0)
    row = task_row(db, stalled_id)
    assert (row.status, row.attempts, row.lease_owner, row.lease_expires_at) == (
        "pending",
        1,
        None,
        None,
    )
    assert task_row(db, live_id).status == "processing"
    assert lifecycle.reap_expired(db, max_attempts=3) == (0, 0)

    again = claim(db, "worker-c")
    assert again is not None and again.task_id == stalled_id and again.attempt == 2


def test_reap_past_max_attempts_fails_and_refunds_exactly_once(db: Database) -> None:
    who = make_principal(db, credits=400)
    task_id = submit_task(db, who)
    assert balance(db, who.account_id) == 360
    for attempt in (1, 2):
        taken = claim(db, f"worker-{attempt}")
        assert taken is not None and taken.attempt == attempt
        expire_lease(db, task_id)
        expected = (1, 0) if attempt < 2 else (0, 1)
        assert lifecycle.reap_expired(db, max_attempts=2) == expected

    assert lifecycle.reap_expired(db, max_attempts=2) == (0, 0)
    row = task_row(db, task_id)
    assert row.status == "failed"
    assert row.error_message == ENGINE_FAILED
    assert row.consumed_credits == 0
    assert row.finished_at is not None and row.lease_owner is None
    assert "attempt 2 of 2" in (row.error_detail or "")
    assert len(entries(db, task_id, "refund")) == 1
    assert len(entries(db, task_id, "debit")) == 1
    assert balance(db, who.account_id) == 400
    assert ledger_sum(db, who.account_id) == 400
    assert claim(db, "worker-x") is None  # a failed task is never run again


def test_two_reapers_at_once_refund_exactly_once(db: Database) -> None:
    who = make_principal(db, credits=400)
    task_ids = [submit_task(db, who, prompt=f"clip {n}") for n in range(5)]
    for _ in task_ids:
        assert claim(db, "worker-a") is not None
    for task_id in task_ids:
        expire_lease(db, task_id)
    assert balance(db, who.account_id) == 200

    url = str(db.url)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def reaper() -> None:
        own = Database(url)
        try:
            start.wait()
            results.append(lifecycle.reap_expired(own, max_attempts=1))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=reaper) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sum(failed for _, failed in results) == len(task_ids)
    assert sum(requeued for requeued, _ in results) == 0
    for task_id in task_ids:
        assert task_row(db, task_id).status == "failed"
        assert len(entries(db, task_id, "refund")) == 1
    assert balance(db, who.account_id) == 400
    assert ledger_sum(db, who.account_id) == 400


def test_release_returns_the_task_without_counting_the_attempt(db: Database) -> None:
    who = make_principal(db)
    task_id = submit_task(db, who)
    taken = claim(db, "worker-a")
    assert taken is not None
    assert lifecycle.renew(db, taken, lease_seconds=LEASE, progress=30) is True

    assert lifecycle.release(db, taken) is True
    row = task_row(db, task_id)
    assert (row.status, row.attempts, row.lease_owner, row.lease_expires_at, row.progress) == (
        "pending",
        0,
        None,
        None,
        0,
    )
    assert lifecycle.release(db, taken) is False  # not twice

    again = claim(db, "worker-b")
    assert again is not None and again.task_id == task_id and again.attempt == 1
    # Releasing and re-claiming many times never exhausts max_attempts.
    for _ in range(5):
        assert lifecycle.release(db, again) is True
        again = claim(db, "worker-b")
        assert again is not None and again.attempt == 1
    assert entries(db, task_id, "refund") == []


# --- what the database itself refuses ---------------------------------------------------


def test_the_database_refuses_a_second_refund(db: Database) -> None:
    who = make_principal(db)
    task_id = submit_task(db, who)
    taken = claim(db, "worker-a")
    assert taken is not None
    assert lifecycle.fail(db, taken, message=ENGINE_FAILED, detail="broke") is True
    before = balance(db, who.account_id)

    with pytest.raises(IntegrityError), db.write() as session:
        session.add(
            LedgerEntry(account_id=who.account_id, kind="refund", amount=PRICE, task_id=task_id)
        )
    with pytest.raises(IntegrityError), db.write() as session:
        session.add(
            LedgerEntry(account_id=who.account_id, kind="debit", amount=-PRICE, task_id=task_id)
        )
    assert len(entries(db, task_id, "refund")) == 1
    assert balance(db, who.account_id) == before


def test_the_database_refuses_a_negative_balance(db: Database) -> None:
    who = make_principal(db, credits=50)
    with pytest.raises(IntegrityError), db.write() as session:
        session.execute(
            update(Account).where(Account.id == who.account_id).values(balance=Account.balance - 51)
        )
    assert balance(db, who.account_id) == 50

    submit_task(db, who)  # 50 -> 10
    with pytest.raises(InsufficientCredits):
        submit_task(db, who)
    assert balance(db, who.account_id) == 10
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1
