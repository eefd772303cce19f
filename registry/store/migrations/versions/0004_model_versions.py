"""Registered model versions (seed 001): each training run's artifact manifest, metrics, fitted parameters,
metadata and lineage; and on models, when their training started (so a run whose registry stopped is failed once
overdue) and the name they are served under once deployed.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "experiment_name", sa.String(128), sa.ForeignKey("experiments.name", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact_url", sa.String(2048), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_name", sa.String(128), nullable=False),
        sa.Column("artifact_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("evaluation_metrics", sa.JSON(), nullable=False),
        sa.Column("fitted_parameters", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
    )
    op.create_index("ix_model_versions_model_id", "model_versions", ["model_id"])
    op.create_index("ix_model_versions_experiment_name", "model_versions", ["experiment_name"])
    with op.batch_alter_table("models") as models:
        models.add_column(sa.Column("train_start_time", sa.BigInteger(), nullable=True))
        models.add_column(sa.Column("serving_name", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as models:
        models.drop_column("serving_name")
        models.drop_column("train_start_time")
    op.drop_index("ix_model_versions_experiment_name", "model_versions")
    op.drop_index("ix_model_versions_model_id", "model_versions")
    op.drop_table("model_versions")
