"""Every table of openimagine. The database row is the truth for accounts,
credits and tasks; nothing here is SQLite- or PostgreSQL-specific."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

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
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from openimagine.timeutil import utcnow


class Base(DeclarativeBase):
    pass


class TaskStatus(StrEnum):
    """A task's status on the wire (the Grok face) and in the database. Being a
    ``str``, a member equals the text a row holds: ``row.status == TaskStatus.FAILED``."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    """A webhook delivery's status: pending, delivered, failed (out of tries, or
    410) or cancelled (endpoint gone)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A task in one of these changes no more (a cancelled task is failed, code "cancelled").
FINAL_STATUSES = (TaskStatus.COMPLETED, TaskStatus.FAILED)


def one_of(column: str, values: type[StrEnum] | tuple[str, ...]) -> str:
    """The CHECK constraint text ``column IN ('a', 'b')`` for an enumeration."""
    return f"{column} IN ({', '.join(repr(str(value)) for value in values)})"


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
    # When a worker last claimed one of its tasks: fair claims serve the account
    # served least recently among those with as few tasks running.
    served_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

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


FILES_KEPT = text("files_expired_at IS NULL AND finished_at IS NOT NULL")


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[str] = mapped_column(String(12), default=TaskStatus.PENDING)
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
    # Which face made it: "openai" (``/v1/videos``) or NULL (``/v1/generate``); its
    # webhook events are ``video.*`` or ``task.*`` accordingly.
    face: Mapped[str | None] = mapped_column(String(10), nullable=True)
    # The task's own webhook receiver (``callback_url`` / ``webhook``), signed with
    # the account's default secret (``services/webhooks.py``).
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
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
    # When the retention janitor deleted its stored inputs and outputs
    # (``services/retention.py``): the row stays, its status says the files expired.
    files_expired_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )

    __table_args__ = (
        Index("tasks_by_status", "status", "created_at"),
        # The retention janitor's work, oldest first: finished tasks whose files are kept.
        Index(
            "tasks_files_kept", "finished_at", sqlite_where=FILES_KEPT, postgresql_where=FILES_KEPT
        ),
        Index("tasks_by_account", "account_id", "created_at", "id"),
        # Fair claims: the accounts with pending tasks of a model, each one's oldest.
        Index("tasks_queue", "model", "status", "account_id", "created_at"),
        CheckConstraint(one_of("status", TaskStatus), name="known_status"),
    )


# What a status answer shows on either face (``services.tasks.task_view`` and the
# OpenAI face's Video object read only these): the status poll selects just
# them, the hottest query of all.
TASK_VIEW_COLUMNS = (
    Task.id,
    Task.status,
    Task.created_at,
    Task.consumed_credits,
    Task.error_message,
    Task.mode,
    Task.prompt,
    Task.ratio,
    Task.images,
    Task.outputs,
    Task.progress,
    Task.model,
    Task.duration,
    Task.resolution,
    Task.media,
    Task.remixed_from,
    Task.started_at,
    Task.finished_at,
    Task.files_expired_at,
)


class IdempotencyKey(Base):
    """A submit's ``Idempotency-Key`` (``services/idempotency.py``): the first request
    holds it while it runs (``task_id`` NULL); the transaction that creates its task
    records the task, which later requests with the key get again for 24 hours."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    key: Mapped[str] = mapped_column(String(255))
    # Which submit it was (a key used on /v1/generate is not replayed on /v1/videos).
    route: Mapped[str] = mapped_column(String(40))
    # SHA-256 of the request (route, content type, body): a different body is 422.
    request_hash: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("account_id", "key", name="one_use_of_a_key_per_account"),
        Index("idempotency_keys_by_age", "created_at"),
    )


class WebhookEndpoint(Base):
    """An account's webhook receiver (``POST /v1/webhooks``). Removed by its owner or
    disabled by a 410 from the receiver: the row stays (its delivery log), nothing
    more is sent to it."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    url: Mapped[str] = mapped_column(Text)
    # The event types sent to it.
    events: Mapped[list[str]] = mapped_column(JSON)
    # ``whsec_<base64 key>``: kept as is, since every delivery is signed with it.
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("webhook_endpoints_by_account", "account_id"),)


class WebhookSecret(Base):
    """An account's default webhook secret: it signs the deliveries to tasks' own
    callback URLs. After a rotation the previous one signs too for a day, so
    receivers can switch without losing events."""

    __tablename__ = "webhook_secrets"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one event for one receiver, written in the transaction that
    finished the task, sent by whichever process claims it when it is due
    (``worker/deliverer.py``)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # ``webhook-id`` and the event's ``id``: the same on every try.
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    # NULL: the task's own callback URL, signed with the account's default secret.
    endpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("webhook_endpoints.id"), nullable=True
    )
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When it is due; while a process sends it, when its lease runs out.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(80), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        Index("webhook_deliveries_due", "status", "next_attempt_at"),
        Index("webhook_deliveries_log", "account_id", "endpoint_id", "id"),
        CheckConstraint(one_of("status", DeliveryStatus), name="known_delivery_status"),
    )


class WebhookAttempt(Base):
    """The delivery log: one row per try."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # None: no HTTP answer (refused, timeout, refused address).
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # The next try, or None when there is none.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("webhook_attempts_by_delivery", "delivery_id", "attempt"),)
