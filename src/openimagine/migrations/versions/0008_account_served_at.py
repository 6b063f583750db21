"""accounts.served_at: when a worker last started one of the account's tasks

Revision ID: 0008
Revises: 0007

Fair claims take turns between accounts with as few tasks running: with one
worker, nothing runs at the moment it claims, so "fewest running" alone would
serve the oldest backlog first; the account served least recently goes first.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("served_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("served_at")
