"""tasks.files_expired_at: when the retention janitor deleted a finished task's files

Revision ID: 0009
Revises: 0008

With ``OPENIMAGINE_RETENTION_DAYS`` set, the workers delete the stored inputs and
outputs of tasks finished longer ago (``services/retention.py``); the row stays,
and its status answers ``response: []`` with ``files_expired``. A plain ADD
COLUMN (nullable): SQLite does not rebuild ``tasks``, so the triggers of
0005/0006 stay. The partial index holds only finished tasks whose files are
still kept, oldest first: what the janitor reads, in batches.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

KEPT = sa.text("files_expired_at IS NULL AND finished_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("files_expired_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_index(
        "tasks_files_kept", "tasks", ["finished_at"], sqlite_where=KEPT, postgresql_where=KEPT
    )


def downgrade() -> None:
    op.drop_index("tasks_files_kept", table_name="tasks")
    # ALTER TABLE DROP COLUMN (SQLite 3.35+), not a batch rebuild, which would drop
    # the triggers of 0005/0006.
    op.drop_column("tasks", "files_expired_at")
