"""datasets.example_shape, datasets.target and datasets.n_outputs (image-, sequence-shaped and
regression uploads); jobs.warnings (what a job's run found worth telling its user: unscaled
inputs, exploding hypergradients, diverged meta-iterations).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Uploads before this revision were all (n, d) class-labelled arrays: example_shape NULL reads as
    # (n_features,), and their target is a class.
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("example_shape", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("target", sa.String(length=8), server_default="class", nullable=False))
        batch_op.add_column(sa.Column("n_outputs", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("warnings")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("n_outputs")
        batch_op.drop_column("target")
        batch_op.drop_column("example_shape")
