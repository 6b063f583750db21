"""idempotency_keys: a submit's Idempotency-Key, its request and its task, for 24 hours;
on PostgreSQL, tasks NOTIFY openimagine_tasks when their status or progress changes

The NOTIFY lets every API replica's live-status streams hear of a change that
any worker made at once (``api/stream.py``); a trigger, so that every write
path notifies, whichever code makes it. SQLite has one process, which pokes
its streams itself.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("route", sa.String(length=40), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        # NULL while the first request runs; set in the transaction that creates the task.
        sa.Column("task_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("account_id", "key", name="one_use_of_a_key_per_account"),
    )
    op.create_index("idempotency_keys_by_age", "idempotency_keys", ["created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION openimagine_notify_task() RETURNS trigger AS $$
            BEGIN
                IF NEW.status IS DISTINCT FROM OLD.status
                        OR NEW.progress IS DISTINCT FROM OLD.progress THEN
                    PERFORM pg_notify('openimagine_tasks', NEW.id);
                END IF;
                RETURN NULL;
            END $$ LANGUAGE plpgsql""")
        op.execute(
            "CREATE TRIGGER tasks_notify AFTER UPDATE ON tasks FOR EACH ROW "
            "EXECUTE FUNCTION openimagine_notify_task()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER tasks_notify ON tasks")
        op.execute("DROP FUNCTION openimagine_notify_task()")
    op.drop_index("idempotency_keys_by_age", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
