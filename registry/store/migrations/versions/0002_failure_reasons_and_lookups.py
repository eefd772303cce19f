"""Why a split or a training failed (``reason``, shown by the status endpoints), the training run's id, and
indexes for the lookups the REST API makes (experiments by srcpath, an experiment's splits and models, the
models of a split).

Rows the first schema wrote keep their state; the failed ones get a reason saying it was not recorded, so a
status never shows a failure without one.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

UNRECORDED = "failed before this registry recorded reasons (schema 0001)"


def upgrade() -> None:
    with op.batch_alter_table("splits") as splits:
        splits.add_column(sa.Column("reason", sa.String(2000), nullable=True))
    with op.batch_alter_table("models") as models:
        models.add_column(sa.Column("reason", sa.String(2000), nullable=True))
        models.add_column(sa.Column("training_run", sa.String(128), nullable=True))
    op.create_index("ix_experiments_srcpath", "experiments", ["srcpath"])
    op.create_index("ix_splits_experiment_name", "splits", ["experiment_name"])
    op.create_index("ix_models_experiment_name", "models", ["experiment_name"])
    op.create_index("ix_models_split_id", "models", ["split_id"])
    op.execute(sa.text("UPDATE splits SET reason = :reason WHERE state = 'FAILED'").bindparams(reason=UNRECORDED))
    op.execute(
        sa.text("UPDATE models SET reason = :reason WHERE state IN ('SPLIT_FAILED', 'TRAINING_FAILED')").bindparams(
            reason=UNRECORDED
        )
    )


def downgrade() -> None:
    op.drop_index("ix_models_split_id", "models")
    op.drop_index("ix_models_experiment_name", "models")
    op.drop_index("ix_splits_experiment_name", "splits")
    op.drop_index("ix_experiments_srcpath", "experiments")
    with op.batch_alter_table("models") as models:
        models.drop_column("training_run")
        models.drop_column("reason")
    with op.batch_alter_table("splits") as splits:
        splits.drop_column("reason")
