"""Datasets as seed 001 records them (format, sample count, sha256, size, columns or label counts), one row per
srcpath and content; each split names the dataset version it was made of.

Splits made before this step keep no dataset (it was not recorded): their ``dataset_id`` stays empty.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("srcpath", sa.String(2048), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("sample_count", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("label_counts", sa.JSON(), nullable=True),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("srcpath", "sha256", name="uq_datasets_srcpath_sha256"),
    )
    op.create_index("ix_datasets_srcpath", "datasets", ["srcpath"])
    with op.batch_alter_table("splits") as splits:
        splits.add_column(sa.Column("dataset_id", sa.String(32), nullable=True))
        splits.add_column(sa.Column("dataset_sha256", sa.String(64), nullable=True))
        splits.create_foreign_key("fk_splits_dataset_id_datasets", "datasets", ["dataset_id"], ["id"])
    op.create_index("ix_splits_dataset_id", "splits", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_splits_dataset_id", "splits")
    with op.batch_alter_table("splits") as splits:
        splits.drop_constraint("fk_splits_dataset_id_datasets", type_="foreignkey")
        splits.drop_column("dataset_sha256")
        splits.drop_column("dataset_id")
    op.drop_index("ix_datasets_srcpath", "datasets")
    op.drop_table("datasets")
