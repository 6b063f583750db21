"""The credit ledger: append-only entries, with ``accounts.balance`` (and
``accounts.credits_spent``, debits less refunds) kept in step in the same
transaction.

The admission rules of a new task, no overdraft (``balance >= price``) and the
plan's cap on unfinished tasks, live in one conditional UPDATE, which the
database serialises: SQLite by its write lock, PostgreSQL by the row lock.
Never a read-then-check in Python.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from openimagine.errors import InsufficientCredits, TooManyTasks
from openimagine.store.db import rows_changed
from openimagine.store.models import Account, LedgerEntry

# Seconds a client refused for its in-flight cap is told to wait: about the
# time a short generation takes; a longer one just means another 429.
IN_FLIGHT_RETRY_AFTER = 5


def grant(session: Session, account_id: int, amount: int, *, note: str | None = None) -> None:
    session.execute(
        update(Account).where(Account.id == account_id).values(balance=Account.balance + amount)
    )
    session.add(LedgerEntry(account_id=account_id, kind="grant", amount=amount, note=note))


def debit_for_task(
    session: Session, account_id: int, task_id: str, price: int, *, max_in_flight: int | None = None
) -> None:
    """Take ``price`` for a new task, or raise ``InsufficientCredits`` or, when the
    account's unfinished tasks would exceed ``max_in_flight``, ``TooManyTasks``
    (the caller's transaction then writes nothing).

    Call it after inserting the task: the insert has counted it in
    ``tasks_pending`` (a trigger), so the cap holds the new task too, and the
    insert's row lock on the account orders concurrent submissions (PostgreSQL).
    """
    admissible = [Account.id == account_id, Account.balance >= price]
    if max_in_flight is not None:
        admissible.append(Account.tasks_pending + Account.tasks_processing <= max_in_flight)
    changed = rows_changed(
        session.execute(
            update(Account)
            .where(*admissible)
            .values(balance=Account.balance - price, credits_spent=Account.credits_spent + price)
        )
    )
    if changed != 1:
        # Which rule refused it; the row is locked by now, so this is what the
        # UPDATE saw. Credits first: waiting would not help there.
        row = session.execute(
            select(Account.balance, Account.plan).where(Account.id == account_id)
        ).first()
        if row is None or row.balance < price or max_in_flight is None:
            raise InsufficientCredits(f"Insufficient credits: a generation costs {price} credits")
        raise TooManyTasks(
            f"Too many tasks: the {row.plan} plan allows {max_in_flight} unfinished tasks "
            "at once; submit again when one has finished",
            retry_after=IN_FLIGHT_RETRY_AFTER,
        )
    session.add(LedgerEntry(account_id=account_id, kind="debit", amount=-price, task_id=task_id))


def refund_task(session: Session, account_id: int, task_id: str, amount: int) -> None:
    """Give back a failed task's price. Callers make the failed transition and
    this refund in one transaction, guarded by the transition's own condition;
    the unique (task_id, kind) constraint refuses a second refund regardless."""
    session.add(LedgerEntry(account_id=account_id, kind="refund", amount=amount, task_id=task_id))
    session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance + amount, credits_spent=Account.credits_spent - amount)
    )
