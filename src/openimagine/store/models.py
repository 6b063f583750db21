"""Every table of openimagine. The database row is the truth for accounts,
credits and tasks; nothing here is SQLite- or PostgreSQL-specific."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from openimagine.timeutil import utcnow


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    plan: Mapped[str] = mapped_column(String(20))
    # Kept in step with the ledger in the same transaction as each entry; the
    # check constraint is the last line of defence against an overdraft.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Usage, exact and read in one row (``GET /v1/account``, the in-flight cap,
    # fair claims) instead of a scan of the account's history. The task counts
    # are kept by triggers on ``tasks`` (migration 0005) in the transaction of
    # every insert and status change, whichever code makes it. A migration that
    # makes SQLite rebuild ``tasks`` (batch "move and copy") drops them: create
    # them again there. ``credits_spent`` (debits less refunds) is kept by the
    # ledger beside the balance.
    tasks_pending: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tasks_processing: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tasks_completed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tasks_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    credits_spent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # The first characters of the key, shown in listings and used to revoke it.
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LedgerEntry(Base):
    """Append-only: a grant, a debit (task submitted) or a refund (task failed)."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    # Signed: grants and refunds add, debits subtract.
    amount: Mapped[int] = mapped_column(BigInteger)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), nullable=True)
    note: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # One debit and at most one refund per task, enforced by the database.
    __table_args__ = (
        UniqueConstraint("task_id", "kind", name="one_entry_of_a_kind_per_task"),
        CheckConstraint("kind IN ('grant', 'debit', 'refund')", name="known_kind"),
    )


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[str] = mapped_column(String(12), default="pending")
    # The model the client asked for (and was charged for): its queue, its
    # workers. ``engine`` is what that model ran on when the task was made.
    model: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(40))
    # The model that rendered it: ``model``, or a fallback that took over.
    rendered_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # A relay's upstream jobs, written before the first poll so that a worker
    # taking the task over polls them instead of paying for new ones:
    # ``{"model": name, "jobs": [{"base_url": url, "id": upstream_id}, ...]}``.
    upstream: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # What this task renders when it differs from its model's settings (the
    # OpenAI face: one video, the size and seconds asked for); NULL: the model's.
    variations: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    resolution: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What was rendered, read from the first output: {"width", "height", "seconds"}.
    media: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The task a remix started from (``POST /v1/videos/{id}/remix``).
    remixed_from: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Deleted by its owner (``DELETE /v1/videos/{id}``): files gone, row kept for the
    # ledger, invisible to every read.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    prompt: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(10))
    ratio: Mapped[str] = mapped_column(String(10))
    # Image references as the worker reads them: http(s) URLs as sent, data URIs
    # replaced by ``stored:<key>`` of the stored input.
    images: Mapped[list[str]] = mapped_column(JSON, default=list)
    price: Mapped[int] = mapped_column(Integer)
    consumed_credits: Mapped[int] = mapped_column(Integer)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Why it failed, for operators; never sent to clients.
    error_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    outputs: Mapped[list[str]] = mapped_column(JSON, default=list)
    seeds: Mapped[list[int]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(80), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When workers were last told about this pending task (submission, re-queue,
    # or the sweeper's re-publication of a message that may have been lost).
    dispatched_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, default=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("tasks_by_status", "status", "created_at"),
        Index("tasks_by_account", "account_id", "created_at", "id"),
        # Fair claims: the accounts with pending tasks of a model, each one's oldest.
        Index("tasks_queue", "model", "status", "account_id", "created_at"),
        CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed')", name="known_status"
        ),
    )


# What a status answer shows (``services.tasks.task_view`` reads only these):
# the status poll selects just them, the hottest query of all.
TASK_VIEW_COLUMNS = (
    Task.id, Task.status, Task.created_at, Task.consumed_credits, Task.error_message,
    Task.mode, Task.prompt, Task.ratio, Task.images, Task.outputs, Task.progress,
)
