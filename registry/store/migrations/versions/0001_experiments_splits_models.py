"""The first schema: experiments, their splits and their models, each row with its optimistic version.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("srcpath", sa.String(2048), nullable=True),
        sa.Column("outcome", sa.String(128), nullable=True),
        sa.Column("outcome_type", sa.String(128), nullable=True),
        sa.Column("directives", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "splits",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "experiment_name",
            sa.String(128),
            sa.ForeignKey("experiments.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("directives", sa.JSON(), nullable=False),
        sa.Column("schema", sa.JSON(), nullable=True),
        sa.Column("training_path", sa.String(2048), nullable=True),
        sa.Column("test_path", sa.String(2048), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "experiment_name",
            sa.String(128),
            sa.ForeignKey("experiments.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("split_id", sa.String(32), sa.ForeignKey("splits.id"), nullable=True),
        sa.Column("directives", sa.JSON(), nullable=False),
        sa.Column("algorithm", sa.String(128), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("evaluation_metrics", sa.JSON(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("train_time", sa.BigInteger(), nullable=True),
        sa.Column("deploy_time", sa.BigInteger(), nullable=True),
        sa.Column("row_version", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("models")
    op.drop_table("splits")
    op.drop_table("experiments")
