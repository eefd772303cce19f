"""Aliases on registered versions (production, candidate, labels), the serving alias moves in flight, and
promotions through a canary, with their state (registry/promotion_rules.py).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column(
            "experiment_name",
            sa.String(128),
            sa.ForeignKey("experiments.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("serving_name", sa.String(128), nullable=True),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_aliases_model_id", "aliases", ["model_id"])
    op.create_table(
        "alias_moves",
        sa.Column(
            "experiment_name",
            sa.String(128),
            sa.ForeignKey("experiments.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "experiment_name", sa.String(128), sa.ForeignKey("experiments.name", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("stable_name", sa.String(128), nullable=False),
        sa.Column("production_model_id", sa.String(32), nullable=False),
        sa.Column("production_version", sa.Integer(), nullable=False),
        sa.Column("candidate_model_id", sa.String(32), nullable=False),
        sa.Column("candidate_version", sa.Integer(), nullable=False),
        sa.Column("candidate_serving_name", sa.String(128), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=True),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_promotions_experiment_name", "promotions", ["experiment_name"])


def downgrade() -> None:
    op.drop_index("ix_promotions_experiment_name", "promotions")
    op.drop_table("promotions")
    op.drop_table("alias_moves")
    op.drop_index("ix_aliases_model_id", "aliases")
    op.drop_table("aliases")
