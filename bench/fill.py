"""Fill a database with an account's history, straight through the project's
own models (no API, no workers): for benchmarks at a million tasks."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select, text, update

from openimagine.store.db import Database
from openimagine.store.models import Account, Task
from openimagine.timeutil import utcnow

BATCH = 20_000


def account_id(db: Database, name: str) -> int:
    with db.read() as session:
        found = session.scalar(select(Account.id).where(Account.name == name))
    assert found is not None, name
    return found


def fill_tasks(
    db: Database, name: str, count: int, *, model: str = "preview", status: str = "completed"
) -> None:
    """``count`` tasks of the account ``name``, a month old, ``status`` (finished by
    default). The database's triggers count them as any insert is counted."""
    owner = account_id(db, name)
    start = utcnow() - timedelta(days=30)
    for first in range(0, count, BATCH):
        rows = [
            {
                "id": f"task_fill_{owner}_{n}",
                "account_id": owner,
                "status": status,
                "model": model,
                "engine": "preview",
                "prompt": "history",
                "mode": "normal",
                "ratio": "1:1",
                "images": [],
                "price": 1,
                "consumed_credits": 1,
                "progress": 100 if status == "completed" else 0,
                "outputs": [],
                "seeds": [],
                "attempts": 1,
                "created_at": start + timedelta(milliseconds=n),
            }
            for n in range(first, min(count, first + BATCH))
        ]
        with db.write() as session:
            if db.is_sqlite:
                session.execute(insert(Task), rows)
                continue
            # PostgreSQL: thousands of trigger updates of one account row in one
            # transaction each walk a longer chain of its versions; count the
            # batch once instead, in the same transaction (the result is the same).
            session.execute(text("ALTER TABLE tasks DISABLE TRIGGER tasks_count_insert"))
            session.execute(insert(Task), rows)
            session.execute(
                update(Account)
                .where(Account.id == owner)
                .values({f"tasks_{status}": getattr(Account, f"tasks_{status}") + len(rows)})
            )
            session.execute(text("ALTER TABLE tasks ENABLE TRIGGER tasks_count_insert"))
    if not db.is_sqlite:
        # A fresh million rows: let the planner know, and prune the account row's
        # million versions (one per counted insert) before anything is measured.
        with db.sql.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE accounts"))
            connection.execute(text("VACUUM ANALYZE tasks"))
    else:
        with db.sql.connect() as connection:
            connection.execute(text("ANALYZE"))
