"""Models: created with directives or an existing split, moved through their lifecycle by the seed's calls
(directives, split, train, deploy) and by the outcomes reported back. Every state check is the lifecycle table's
(registry/lifecycle.py): this module decides nothing about states itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import InvalidInput, PortFailed, Unavailable
from registry.lifecycle import MODEL_STATE_FOR_SPLIT, ModelAction, ModelState, SplitState, next_model_state
from registry.ports import DeployError, DeployRequest, LaunchError, TrainingRequest, TrainingResult
from registry.service import assignments, lookups
from registry.service.context import ServiceContext, new_id
from registry.service.splits import SplitService, SplitSpec, new_split_row
from registry.store.database import guard
from registry.store.tables import ModelRow, SplitRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NewModel:
    name: str = ""
    description: str = ""
    directives: Sequence[str] | None = None
    split: str | None = None
    features: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class TrainingSpec:
    algorithm: str
    hyperparameters: dict[str, Any]
    features: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class ModelPage:
    rows: list[ModelRow]
    total: int


class ModelService:
    def __init__(self, context: ServiceContext, splits: SplitService) -> None:
        self._context = context
        self._splits = splits

    async def create(self, experiment_name: str, new: NewModel) -> ModelRow:
        if new.directives is not None and new.split is not None:
            raise InvalidInput("give directives or a split, not both (a split carries its own directives)")

        def unit(session: Session) -> ModelRow:
            lookups.experiment(session, experiment_name)
            row = ModelRow(
                id=new_id(),
                experiment_name=experiment_name,
                name=new.name,
                description=new.description,
                directives=list(new.directives or []),
                features=list(new.features or []),
                state=ModelState.PREPARING.value,
                create_time=self._context.clock(),
            )
            if new.split is not None:
                split = session.get(SplitRow, new.split)
                if split is None or split.experiment_name != experiment_name:
                    raise InvalidInput(f"no split {new.split} in experiment {experiment_name}")
                guard(session, split)  # the state read below must still hold at commit
                row.split_id = split.id
                row.directives = list(split.directives)
                row.state = MODEL_STATE_FOR_SPLIT[SplitState(split.state)].value
                row.reason = split.reason
                if not row.features and split.stats is not None:
                    row.features = [str(field["field"]) for field in split.stats if "field" in field]
            session.add(row)
            return row

        return await self._context.store.write(unit)

    async def list(self, experiment_name: str, offset: int, limit: int) -> ModelPage:
        def unit(session: Session) -> ModelPage:
            lookups.experiment(session, experiment_name)
            query = select(ModelRow).where(ModelRow.experiment_name == experiment_name)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(ModelRow.create_time, ModelRow.id).offset(offset).limit(limit))
            return ModelPage(list(rows), total)

        return await self._context.store.read(unit)

    async def get(self, experiment_name: str, model_id: str) -> ModelRow:
        return await self._context.store.read(lambda session: lookups.model(session, experiment_name, model_id))

    async def delete(self, experiment_name: str, model_id: str) -> None:
        def unit(session: Session) -> None:
            row = lookups.model(session, experiment_name, model_id)
            assignments.move(row, ModelAction.DELETE)
            assignments.unassign_split(session, row)
            session.delete(row)

        await self._context.store.write(unit)

    async def put_directives(self, experiment_name: str, model_id: str, directives: Sequence[str]) -> ModelRow:
        """Replace the directives; the split made with the old ones is unassigned (and deleted if unused)."""

        def unit(session: Session) -> ModelRow:
            row = lookups.model(session, experiment_name, model_id)
            assignments.move(row, ModelAction.EDIT_DIRECTIVES)
            assignments.unassign_split(session, row)
            row.directives = list(directives)
            row.reason = None
            return row

        return await self._context.store.write(unit)

    async def split(self, experiment_name: str, model_id: str, spec: SplitSpec) -> SplitRow:
        """Make a split for the model, with the model's directives unless ``spec`` gives some (then they become
        the model's). A failed split the model had is replaced."""

        def unit(session: Session) -> SplitRow:
            row = lookups.model(session, experiment_name, model_id)
            assignments.move(row, ModelAction.SPLIT)
            if self._context.split_maker is None:  # after the state check: a 409 says more than a 503
                raise Unavailable("this registry computes no splits yet (no split computation was wired into it)")
            assignments.unassign_split(session, row)
            directives = list(spec.directives) if spec.directives else list(row.directives)
            with_directives = SplitSpec(spec.kind, spec.percent, spec.seed, directives, spec.schema, spec.description)
            experiment = lookups.experiment(session, experiment_name)
            split = new_split_row(session, experiment, with_directives, self._context.clock())
            session.flush()
            row.split_id = split.id
            row.directives = directives
            row.reason = None
            return split

        split = await self._context.store.write(unit)
        self._splits.start_computing(split)
        return split

    async def unassign_split(self, experiment_name: str, model_id: str) -> ModelRow:
        def unit(session: Session) -> ModelRow:
            row = lookups.model(session, experiment_name, model_id)
            assignments.move(row, ModelAction.UNASSIGN_SPLIT)
            assignments.unassign_split(session, row)
            row.reason = None
            return row

        return await self._context.store.write(unit)

    async def train(self, experiment_name: str, model_id: str, spec: TrainingSpec) -> ModelRow:
        """Move the model to TRAINING (with the algorithm and hyper-parameters) and launch its run; a launch that
        fails moves it to TRAINING_FAILED with the reason."""

        def start(session: Session) -> tuple[ModelRow, TrainingRequest]:
            row = lookups.model(session, experiment_name, model_id)
            assignments.move(row, ModelAction.TRAIN)
            if self._context.launcher is None:
                raise Unavailable("this registry launches no training yet (no trainer was wired into it)")
            split = session.get(SplitRow, row.split_id) if row.split_id else None
            if split is None or split.training_path is None or split.test_path is None:
                raise InvalidInput(f"{lookups.describe(row)} has no computed split to train on")
            experiment = lookups.experiment(session, experiment_name)
            row.algorithm = spec.algorithm
            row.hyperparameters = dict(spec.hyperparameters)
            if spec.features is not None:
                row.features = list(spec.features)
            row.reason = None
            request = TrainingRequest(
                experiment=experiment_name,
                model_id=row.id,
                model_name=row.name,
                algorithm=spec.algorithm,
                hyperparameters=dict(spec.hyperparameters),
                features=list(row.features),
                outcome=experiment.outcome,
                outcome_type=experiment.outcome_type,
                training_path=split.training_path,
                test_path=split.test_path,
            )
            return row, request

        row, request = await self._context.store.write(start)
        assert self._context.launcher is not None  # noqa: S101 - start() refused without one
        try:
            run = await self._context.launcher.launch(request)
        except LaunchError as error:
            await self._record(experiment_name, model_id, ModelAction.TRAINING_FAILED, reason=str(error))
            raise PortFailed(f"the training run could not be started: {error}") from None
        return await self._record(experiment_name, model_id, None, training_run=run) or row

    async def record_training_result(
        self, experiment_name: str, model_id: str, result: TrainingResult | None, reason: str | None = None
    ) -> None:
        """A run's end: TRAINED with its metrics (``result``), or TRAINING_FAILED with ``reason``. A model deleted
        meanwhile is left deleted."""
        action = ModelAction.TRAINING_SUCCEEDED if result is not None else ModelAction.TRAINING_FAILED
        await self._record(experiment_name, model_id, action, result=result, reason=reason)

    async def _record(
        self,
        experiment_name: str,
        model_id: str,
        action: ModelAction | None,
        *,
        result: TrainingResult | None = None,
        reason: str | None = None,
        training_run: str | None = None,
    ) -> ModelRow | None:
        def unit(session: Session) -> ModelRow | None:
            row = session.get(ModelRow, model_id)
            if row is None or row.experiment_name != experiment_name:
                return None
            if action is not None:
                assignments.move(row, action)
            if training_run is not None:
                row.training_run = training_run
            if result is not None:
                row.evaluation_metrics = dict(result.evaluation_metrics)
                row.train_time = self._context.clock()
            if reason is not None:
                row.reason = reason[:2000]
            return row

        return await self._context.store.write(unit)

    async def deploy(self, experiment_name: str, model_id: str) -> ModelRow:
        """Deploy through the Deployer port, then record DEPLOYED (the table is checked before and after)."""

        def check(session: Session) -> DeployRequest:
            row = lookups.model(session, experiment_name, model_id)
            next_model_state(lookups.describe(row), ModelState(row.state), ModelAction.DEPLOY)
            if self._context.deployer is None:
                raise Unavailable("this registry deploys nothing yet (no scheduler was wired into it)")
            return DeployRequest(experiment_name, row.id, row.name, row.training_run)

        request = await self._context.store.read(check)
        assert self._context.deployer is not None  # noqa: S101 - check() refused without one
        try:
            await self._context.deployer.deploy(request)
        except DeployError as error:
            raise PortFailed(f"the model could not be deployed: {error}") from None

        def record(session: Session) -> ModelRow:
            row = lookups.model(session, experiment_name, model_id)
            assignments.move(row, ModelAction.DEPLOY)
            row.deploy_time = self._context.clock()
            return row

        return await self._context.store.write(record)
