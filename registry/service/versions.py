"""Registered model versions (seed 001), one per finished training run of a model: listed, read, the newest."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import NotFound
from registry.ports import DeployRequest
from registry.service import lookups
from registry.service.context import ServiceContext
from registry.store.tables import ModelRow, ModelVersionRow


@dataclass(frozen=True, slots=True)
class VersionPage:
    rows: list[ModelVersionRow]
    total: int


def deploy_request(
    experiment_name: str, model: ModelRow, version: ModelVersionRow, serving_name: str | None = None
) -> DeployRequest:
    """What the Deployer is asked, to serve ``version`` of ``model`` under ``serving_name`` (None: the model's own
    name, registry/serving_names.py)."""
    return DeployRequest(
        experiment_name,
        model.id,
        model.name,
        model.training_run,
        version.version,
        version.artifact_url,
        serving_name,
    )


def newest(session: Session, model_id: str) -> ModelVersionRow | None:
    query = select(ModelVersionRow).where(ModelVersionRow.model_id == model_id)
    return session.scalars(query.order_by(ModelVersionRow.version.desc()).limit(1)).first()


class VersionService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def list(self, experiment_name: str, model_id: str, offset: int, limit: int) -> VersionPage:
        def unit(session: Session) -> VersionPage:
            lookups.model(session, experiment_name, model_id)
            query = select(ModelVersionRow).where(ModelVersionRow.model_id == model_id)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(ModelVersionRow.version).offset(offset).limit(limit))
            return VersionPage(list(rows), total)

        return await self._context.store.read(unit)

    async def get(self, experiment_name: str, model_id: str, version: int) -> ModelVersionRow:
        def unit(session: Session) -> ModelVersionRow:
            lookups.model(session, experiment_name, model_id)
            query = select(ModelVersionRow).where(
                ModelVersionRow.model_id == model_id, ModelVersionRow.version == version
            )
            row = session.scalars(query).first()
            if row is None:
                raise NotFound(f"model {model_id} of experiment {experiment_name} has no version {version}")
            return row

        return await self._context.store.read(unit)
