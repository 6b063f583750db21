"""GET /v1/account: the caller's plan, balance, rate limit and recent usage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select, text

from openimagine.services import accounts, lifecycle
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import LedgerEntry, Task

from conftest import (
    TASK_ENGINE,
    Server,
    auth,
    expire_lease,
    make_principal,
    make_settings,
    submit_task,
)


def test_account_shows_plan_balance_rate_limit_and_recent_usage(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(rate_limits="free=100,pro=1000,enterprise=5000")
    key = server.account(plan="pro", credits=200)
    ids = [server.generate(key).json()["data"]["task_id"] for _ in range(3)]
    for task_id in ids:
        server.wait(key, task_id)

    response = server.client.get("/v1/account", headers=auth(key))
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "1000"
    body = response.json()
    assert body["code"] == 200 and body["message"] == "success"
    data = body["data"]
    assert data["plan"] == "pro"
    assert data["balance"] == 200 - 3 * 40
    assert data["price"] == 40
    assert data["rate_limit"] == {"requests_per_minute": 1000}
    assert data["usage"]["tasks"] == {"pending": 0, "processing": 0, "completed": 3, "failed": 0}
    assert data["usage"]["credits_spent"] == 120
    recent = data["usage"]["recent_tasks"]
    assert {t["task_id"] for t in recent} == set(ids)
    assert all(t["status"] == "completed" and t["created_at"].endswith("Z") for t in recent)
    assert [t["created_at"] for t in recent] == sorted(
        (t["created_at"] for t in recent), reverse=True
    )


def test_account_lists_at_most_ten_recent_tasks_of_its_own(server: Server) -> None:
    key, other = server.account(credits=2000), server.account()
    other_task = server.generate(other).json()["data"]["task_id"]
    for _ in range(12):
        assert server.generate(key).status_code == 200
    data = server.client.get("/v1/account", headers=auth(key)).json()["data"]
    assert len(data["usage"]["recent_tasks"]) == 10
    assert other_task not in {t["task_id"] for t in data["usage"]["recent_tasks"]}
    assert sum(data["usage"]["tasks"].values()) == 12


def test_account_needs_a_key(server: Server) -> None:
    response = server.client.get("/v1/account")
    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHORIZED"
    free = server.account(plan="free")
    data = server.client.get("/v1/account", headers=auth(free)).json()["data"]
    assert data["plan"] == "free" and data["rate_limit"]["requests_per_minute"] == 100


def test_account_figures_are_exact_after_debits_and_refunds(server: Server) -> None:
    key = server.account(name="mixed-usage", plan="pro", credits=400)
    ids = [
        server.generate(key, prompt=prompt).json()["data"]["task_id"]
        for prompt in ("a calm lake", "jailbait", "a red fox")
    ]  # the second is refused
    assert [server.wait(key, task_id)["status"] for task_id in ids] == [
        "completed",
        "failed",
        "completed",
    ]

    data = server.client.get("/v1/account", headers=auth(key)).json()["data"]
    assert data["balance"] == 400 - 2 * 40
    assert data["usage"]["tasks"] == {"pending": 0, "processing": 0, "completed": 2, "failed": 1}
    assert data["usage"]["credits_spent"] == 80


def test_usage_is_counted_through_every_transition_whoever_makes_it(tmp_path: Path) -> None:
    """The counters are kept by the database in the transaction of each change, so
    they equal a count of the history after submit, claim, finish, fail and refund,
    re-queue, release, and even a status an operator changes by hand."""
    db = Database(make_settings(tmp_path).resolved_database_url)
    migrate.upgrade(db)
    try:
        principal, other = make_principal(db, credits=1000), make_principal(db, credits=1000)
        for n in range(6):
            submit_task(db, principal, f"task {n}")
        submit_task(db, other)

        def next_claim() -> lifecycle.Claim:
            claim = lifecycle.claim_next(db, owner="w", model=TASK_ENGINE, lease_seconds=60)
            assert claim is not None
            return claim

        assert lifecycle.complete(db, next_claim(), outputs=[], seeds=[])
        assert lifecycle.fail(db, next_claim(), message="video build failed", detail="x")
        assert lifecycle.release(db, next_claim())
        expire_lease(db, next_claim().task_id)
        assert lifecycle.reap_expired(db, max_attempts=3) == (1, 0)
        next_claim()  # left running
        with db.write() as session:  # an operator's fix by hand
            session.execute(
                text(
                    "UPDATE tasks SET status = 'completed' WHERE id = "
                    "(SELECT id FROM tasks WHERE status = 'pending' LIMIT 1)"
                )
            )
        assert_usage_matches_history(db, principal.account_id)
        assert_usage_matches_history(db, other.account_id)
        usage = [
            accounts.summary(db, account_id=who.account_id)["usage"] for who in (principal, other)
        ]
        assert [sum(u["tasks"].values()) for u in usage] == [6, 1]
        # Seven debits, one refund (whichever account the failed claim was of).
        assert sum(u["credits_spent"] for u in usage) == 6 * 40
    finally:
        db.dispose()


def assert_usage_matches_history(db: Database, account_id: int) -> None:
    """The kept counters equal a count of the account's tasks and ledger."""
    with db.read() as session:
        counted = dict(
            session.execute(
                select(Task.status, func.count())
                .where(Task.account_id == account_id)
                .group_by(Task.status)
            ).all()
        )
        spent = -int(
            session.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                    LedgerEntry.account_id == account_id, LedgerEntry.kind.in_(("debit", "refund"))
                )
            )
            or 0
        )
    usage = accounts.summary(db, account_id=account_id)["usage"]
    assert usage["tasks"] == {
        status: counted.get(status, 0)
        for status in ("pending", "processing", "completed", "failed")
    }
    assert usage["credits_spent"] == spent
