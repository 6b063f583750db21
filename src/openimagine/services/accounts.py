"""Accounts and API keys.

Keys are 256 random bits; only their SHA-256 is stored. A slow password hash
would add nothing for keys of that strength and would cost every request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openimagine.errors import AccountNotFound, KeyNotFound
from openimagine.services import ledger
from openimagine.settings import PLANS
from openimagine.store.db import Database, Record
from openimagine.store.models import TASK_VIEW_COLUMNS, Account, ApiKey, Task
from openimagine.timeutil import utcnow

KEY_PREFIX = "oi_"
SHOWN_PREFIX_LENGTH = 11  # "oi_" and 8 characters: enough to tell keys apart


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account behind a valid key."""

    account_id: int
    plan: str


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check_plan(plan: str) -> None:
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r} (plans: {', '.join(PLANS)})")


def _account(session: Session, name: str) -> Account:
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        raise AccountNotFound(f"no account named {name!r}")
    return account


def _add_key(session: Session, account_id: int) -> str:
    key = new_key()
    session.add(
        ApiKey(account_id=account_id, prefix=key[:SHOWN_PREFIX_LENGTH], key_hash=hash_key(key))
    )
    return key


def create_account(db: Database, name: str, *, plan: str, credits: int) -> tuple[Account, str]:
    """Create an account with a first key; returns the account and the key (shown once)."""
    _check_plan(plan)
    if not name.strip():
        raise ValueError("account name must not be empty")
    if credits < 0:
        raise ValueError("credits must not be negative")
    try:
        with db.write() as session:
            account = Account(name=name, plan=plan, balance=0)
            session.add(account)
            session.flush()
            if credits:
                ledger.grant(session, account.id, credits, note="initial grant")
            key = _add_key(session, account.id)
    except IntegrityError:
        raise ValueError(f"an account named {name!r} exists already") from None
    return account, key


def count_accounts(db: Database) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(Account)) or 0


def create_key(db: Database, name: str) -> str:
    with db.write() as session:
        return _add_key(session, _account(session, name).id)


def list_keys(db: Database, name: str) -> list[KeyInfo]:
    with db.read() as session:
        account = _account(session, name)
        rows = session.scalars(
            select(ApiKey).where(ApiKey.account_id == account.id).order_by(ApiKey.id)
        )
        return [KeyInfo(row.prefix, row.created_at, row.revoked_at) for row in rows]


def revoke_key(db: Database, prefix: str) -> str:
    """Revoke the one active key starting with ``prefix``; returns its shown prefix."""
    if len(prefix) < len(KEY_PREFIX) + 4:
        raise KeyNotFound("give at least the first 7 characters of the key")
    with db.write() as session:
        keys = session.scalars(
            select(ApiKey).where(
                ApiKey.prefix == prefix[:SHOWN_PREFIX_LENGTH], ApiKey.revoked_at.is_(None)
            )
        ).all()
        if len(prefix) < SHOWN_PREFIX_LENGTH:
            keys = session.scalars(
                select(ApiKey).where(ApiKey.prefix.startswith(prefix), ApiKey.revoked_at.is_(None))
            ).all()
        if not keys:
            raise KeyNotFound(f"no active key starts with {prefix!r}")
        if len(keys) > 1:
            raise KeyNotFound(f"{len(keys)} keys start with {prefix!r}; give more characters")
        keys[0].revoked_at = utcnow()
        return keys[0].prefix


def set_plan(db: Database, name: str, plan: str) -> None:
    _check_plan(plan)
    with db.write() as session:
        _account(session, name).plan = plan


def grant_credits(db: Database, name: str, amount: int) -> int:
    """Add credits; returns the new balance."""
    if amount <= 0:
        raise ValueError("the amount to grant must be positive")
    with db.write() as session:
        account = _account(session, name)
        ledger.grant(session, account.id, amount, note="granted by operator")
        session.refresh(account)
        return account.balance


# Built once: this runs on every authenticated request.
_PRINCIPAL_BY_HASH = (
    select(Account.id, Account.plan)
    .join(ApiKey, ApiKey.account_id == Account.id)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)


def authenticate(db: Database, key: str) -> Principal | None:
    if not key.startswith(KEY_PREFIX):
        return None
    row = db.fetch_first(_PRINCIPAL_BY_HASH, {"key_hash": hash_key(key)})
    return Principal(account_id=row.id, plan=row.plan) if row else None


# Status polling is the hottest request: the key's account and the task in one
# round trip. The task joins only when it belongs to that account.
_PRINCIPAL_AND_TASK = (
    select(
        Account.id.label("principal_id"), Account.plan.label("principal_plan"), *TASK_VIEW_COLUMNS
    )
    .select_from(ApiKey)
    .join(Account, ApiKey.account_id == Account.id)
    .outerjoin(
        Task,
        (Task.id == bindparam("task_id"))
        & (Task.account_id == Account.id)
        & Task.deleted_at.is_(None),
    )
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)


def authenticate_with_task(
    db: Database, key: str, task_id: str
) -> tuple[Principal | None, Record | None]:
    """``authenticate`` and the caller's task ``task_id`` (None if not theirs) at once."""
    if not key.startswith(KEY_PREFIX):
        return None, None
    return _principal_and_task(
        db.fetch_first(_PRINCIPAL_AND_TASK, {"key_hash": hash_key(key), "task_id": task_id})
    )


async def authenticate_with_task_async(
    db: Database, key: str, task_id: str
) -> tuple[Principal | None, Record | None]:
    """``authenticate_with_task`` from the event loop (``db.async_reads``)."""
    if not key.startswith(KEY_PREFIX):
        return None, None
    return _principal_and_task(
        await db.fetch_first_async(
            _PRINCIPAL_AND_TASK, {"key_hash": hash_key(key), "task_id": task_id}
        )
    )


def _principal_and_task(row: Record | None) -> tuple[Principal | None, Record | None]:
    if row is None:
        return None, None
    return Principal(account_id=row.principal_id, plan=row.principal_plan), (
        row if row.id is not None else None
    )


# The account's usage is kept on its row (migration 0005): one row to read,
# whatever its history. Built once: ``GET /v1/account`` reads it by id.
_USAGE = select(
    Account.name,
    Account.plan,
    Account.balance,
    Account.tasks_pending,
    Account.tasks_processing,
    Account.tasks_completed,
    Account.tasks_failed,
    Account.credits_spent,
)
_USAGE_BY_ID = _USAGE.where(Account.id == bindparam("account_id"))
_USAGE_BY_NAME = _USAGE.where(Account.name == bindparam("name"))


# The key's account with its usage: ``GET /v1/account`` authenticated and read in
# one round trip (the event-loop path on PostgreSQL).
_USAGE_BY_HASH = (
    _USAGE.add_columns(Account.id)
    .join(ApiKey, ApiKey.account_id == Account.id)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)


def summary(db: Database, *, name: str | None = None, account_id: int | None = None) -> dict:
    """Plan, balance and usage of one account, for ``accounts show`` and ``GET /v1/account``."""
    if name is not None:
        row = db.fetch_first(_USAGE_BY_NAME, {"name": name})
        if row is None:
            raise AccountNotFound(f"no account named {name!r}")
    else:
        row = db.fetch_first(_USAGE_BY_ID, {"account_id": account_id})
        if row is None:
            raise AccountNotFound(f"no account with id {account_id}")
    return summary_of(row)


async def authenticate_with_summary_async(
    db: Database, key: str
) -> tuple[Principal | None, dict | None]:
    """The key's account and its ``summary``, in one round trip from the event loop."""
    if not key.startswith(KEY_PREFIX):
        return None, None
    row = await db.fetch_first_async(_USAGE_BY_HASH, {"key_hash": hash_key(key)})
    if row is None:
        return None, None
    return Principal(account_id=row.id, plan=row.plan), summary_of(row)


def summary_of(row: Record) -> dict:
    # int(): whatever a driver hands back for a number (PostgreSQL's NUMERIC
    # arrives as Decimal, which JSON encoders refuse) goes out as an integer.
    return {
        "account": row.name,
        "plan": row.plan,
        "balance": int(row.balance),
        "usage": {
            "tasks": {
                "pending": int(row.tasks_pending),
                "processing": int(row.tasks_processing),
                "completed": int(row.tasks_completed),
                "failed": int(row.tasks_failed),
            },
            "credits_spent": int(row.credits_spent),
        },
    }
