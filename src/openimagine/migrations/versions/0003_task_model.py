"""tasks.model, tasks.rendered_by, tasks.upstream: several models per deployment

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("rendered_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("upstream", sa.JSON(), nullable=True))
    # Before models files, a deployment's one model was named after its engine.
    op.execute("UPDATE tasks SET model = engine")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("model", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("upstream")
        batch_op.drop_column("rendered_by")
        batch_op.drop_column("model")
