"""accounts: usage counters kept by triggers; tasks: the fair-claim index

Revision ID: 0005
Revises: 0004

``GET /v1/account`` read every task and ledger row of the account; these
counters make it one row. Task counts are kept by triggers on ``tasks``, so
every statement that inserts a task or changes its status (submit, claim,
finish, fail, cancel, re-queue, release, an operator's SQL) counts in its own
transaction; ``credits_spent`` is kept by ``services/ledger.py`` beside the
balance. The triggers are created before the backfill: on PostgreSQL creating
them locks ``tasks`` against writes until this migration commits, so no write
falls between the count and the first trigger.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STATUSES = ("pending", "processing", "completed", "failed")
COUNTERS = tuple(f"tasks_{status}" for status in STATUSES)


def _deltas(dialect: str, new: str | None, old: str | None) -> str:
    """``tasks_x = tasks_x + (NEW.status = 'x') - (OLD.status = 'x')`` for each status."""

    def flag(row: str, status: str) -> str:
        test = f"({row}.status = '{status}')"
        return f"{test}::int" if dialect == "postgresql" else test

    parts = []
    for status, column in zip(STATUSES, COUNTERS):
        expression = column
        if new:
            expression += f" + {flag(new, status)}"
        if old:
            expression += f" - {flag(old, status)}"
        parts.append(f"{column} = {expression}")
    return ", ".join(parts)


def _create_triggers(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute(f"""
            CREATE FUNCTION openimagine_count_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    UPDATE accounts SET {_deltas(dialect, "NEW", None)} WHERE id = NEW.account_id;
                ELSIF TG_OP = 'DELETE' THEN
                    UPDATE accounts SET {_deltas(dialect, None, "OLD")} WHERE id = OLD.account_id;
                ELSIF OLD.account_id = NEW.account_id THEN
                    UPDATE accounts SET {_deltas(dialect, "NEW", "OLD")} WHERE id = NEW.account_id;
                ELSE
                    UPDATE accounts SET {_deltas(dialect, None, "OLD")} WHERE id = OLD.account_id;
                    UPDATE accounts SET {_deltas(dialect, "NEW", None)} WHERE id = NEW.account_id;
                END IF;
                RETURN NULL;
            END $$""")
        op.execute("""CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks
                      FOR EACH ROW EXECUTE FUNCTION openimagine_count_tasks()""")
        op.execute("""CREATE TRIGGER tasks_count_status AFTER UPDATE OF status, account_id
                      ON tasks FOR EACH ROW
                      WHEN (OLD.status IS DISTINCT FROM NEW.status
                            OR OLD.account_id IS DISTINCT FROM NEW.account_id)
                      EXECUTE FUNCTION openimagine_count_tasks()""")
        op.execute("""CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks
                      FOR EACH ROW EXECUTE FUNCTION openimagine_count_tasks()""")
    elif dialect == "sqlite":
        op.execute(f"""CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
                       UPDATE accounts SET {_deltas(dialect, "NEW", None)}
                       WHERE id = NEW.account_id; END""")
        op.execute(f"""CREATE TRIGGER tasks_count_status AFTER UPDATE OF status ON tasks
                       WHEN OLD.status IS NOT NEW.status AND OLD.account_id IS NEW.account_id
                       BEGIN UPDATE accounts SET {_deltas(dialect, "NEW", "OLD")}
                       WHERE id = NEW.account_id; END""")
        # Tasks never change hands; counted right all the same if one is made to.
        op.execute(f"""CREATE TRIGGER tasks_count_move AFTER UPDATE OF account_id ON tasks
                       WHEN OLD.account_id IS NOT NEW.account_id BEGIN
                       UPDATE accounts SET {_deltas(dialect, None, "OLD")}
                       WHERE id = OLD.account_id;
                       UPDATE accounts SET {_deltas(dialect, "NEW", None)}
                       WHERE id = NEW.account_id; END""")
        op.execute(f"""CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN
                       UPDATE accounts SET {_deltas(dialect, None, "OLD")}
                       WHERE id = OLD.account_id; END""")
    else:
        raise NotImplementedError(f"openimagine supports SQLite and PostgreSQL, not {dialect}")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        for column in COUNTERS:
            batch_op.add_column(sa.Column(column, sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("credits_spent", sa.BigInteger(), nullable=False, server_default="0")
        )
    _create_triggers(dialect)
    counts = ", ".join(
        f"{column} = (SELECT count(*) FROM tasks WHERE tasks.account_id = accounts.id "
        f"AND tasks.status = '{status}')"
        for status, column in zip(STATUSES, COUNTERS)
    )
    op.execute(f"""UPDATE accounts SET {counts},
                   credits_spent = -(SELECT coalesce(sum(amount), 0) FROM ledger_entries
                                     WHERE ledger_entries.account_id = accounts.id
                                     AND kind IN ('debit', 'refund'))""")
    # Fair claims walk the accounts that have pending tasks of a model, and each
    # one's oldest (``services/lifecycle.claim_next``); recent tasks and paging
    # read an account's tasks newest first with ties by id.
    op.create_index("tasks_queue", "tasks", ["model", "status", "account_id", "created_at"])
    op.drop_index("tasks_by_account", table_name="tasks")
    op.create_index("tasks_by_account", "tasks", ["account_id", "created_at", "id"])


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_index("tasks_by_account", table_name="tasks")
    op.create_index("tasks_by_account", "tasks", ["account_id", "created_at"])
    op.drop_index("tasks_queue", table_name="tasks")
    for name in (
        "tasks_count_insert",
        "tasks_count_status",
        "tasks_count_move",
        "tasks_count_delete",
    ):
        op.execute(
            f"DROP TRIGGER IF EXISTS {name}" + (" ON tasks" if dialect == "postgresql" else "")
        )
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS openimagine_count_tasks()")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        for column in ("credits_spent", *reversed(COUNTERS)):
            batch_op.drop_column(column)
