"""datasets.n_tasks and datasets.task_rows: uploads with task ids, for multitask_mlp.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_tasks", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("task_rows", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("task_rows")
        batch_op.drop_column("n_tasks")
