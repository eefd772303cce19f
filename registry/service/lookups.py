"""Finding rows, or the NotFound that names what was missing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import NotFound
from registry.store.tables import ExperimentRow, ModelRow, SplitRow


def experiment(session: Session, name: str) -> ExperimentRow:
    row = session.get(ExperimentRow, name)
    if row is None:
        raise NotFound(f"no experiment {name}")
    return row


def split(session: Session, experiment_name: str, split_id: str) -> SplitRow:
    row = session.get(SplitRow, split_id)
    if row is None or row.experiment_name != experiment_name:
        experiment(session, experiment_name)  # a missing experiment is the better message
        raise NotFound(f"no split {split_id} in experiment {experiment_name}")
    return row


def model(session: Session, experiment_name: str, model_id: str) -> ModelRow:
    row = session.get(ModelRow, model_id)
    if row is None or row.experiment_name != experiment_name:
        experiment(session, experiment_name)
        raise NotFound(f"no model {model_id} in experiment {experiment_name}")
    return row


def models_of_split(session: Session, split_id: str) -> list[ModelRow]:
    return list(session.scalars(select(ModelRow).where(ModelRow.split_id == split_id).order_by(ModelRow.id)))


def describe(row: ModelRow) -> str:
    return f"model {row.id} of experiment {row.experiment_name}"
