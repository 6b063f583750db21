"""The credit ledger: append-only entries, with ``accounts.balance`` kept in step
in the same transaction.

The no-overdraft rule lives in one conditional UPDATE (``balance >= price``),
which the database serialises: SQLite by its write lock, PostgreSQL by the row
lock. Never a read-then-check in Python.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from openimagine.errors import InsufficientCredits
from openimagine.store.db import rows_changed
from openimagine.store.models import Account, LedgerEntry


def grant(session: Session, account_id: int, amount: int, *, note: str | None = None) -> None:
    session.execute(
        update(Account).where(Account.id == account_id).values(balance=Account.balance + amount)
    )
    session.add(LedgerEntry(account_id=account_id, kind="grant", amount=amount, note=note))


def debit_for_task(session: Session, account_id: int, task_id: str, price: int) -> None:
    """Take ``price`` for a new task or raise ``InsufficientCredits`` (nothing written)."""
    changed = rows_changed(session.execute(
        update(Account)
        .where(Account.id == account_id, Account.balance >= price)
        .values(balance=Account.balance - price)
    ))
    if changed != 1:
        raise InsufficientCredits(
            f"Insufficient credits: a generation costs {price} credits"
        )
    session.add(LedgerEntry(account_id=account_id, kind="debit", amount=-price, task_id=task_id))


def refund_task(session: Session, account_id: int, task_id: str, amount: int) -> None:
    """Give back a failed task's price. Callers make the failed transition and
    this refund in one transaction, guarded by the transition's own condition;
    the unique (task_id, kind) constraint refuses a second refund regardless."""
    session.add(LedgerEntry(account_id=account_id, kind="refund", amount=amount, task_id=task_id))
    session.execute(
        update(Account).where(Account.id == account_id).values(balance=Account.balance + amount)
    )
