"""Models: created with directives or an existing split, moved through their lifecycle by the seed's calls
(directives, split, train, deploy) and by the outcomes reported back. Every state check is the lifecycle table's
(registry/lifecycle.py): this module decides nothing about states itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from modelplane.spec.training_algorithms import HyperParameterError, UnknownAlgorithmError, check_choice
from registry.errors import Conflict, InvalidInput, PortFailed, Unavailable
from registry.lifecycle import MODEL_STATE_FOR_SPLIT, ModelAction, ModelState, SplitState, next_model_state
from registry.ports import DeployError, DeployRequest
from registry.service import assignments, lookups, versions
from registry.service.context import ServiceContext, new_id
from registry.service.model_order import MetricOrder, Order
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
    algorithm: str | None = None
    hyperparameters: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TrainingSpec:
    algorithm: str | None  # None: the model's own
    hyperparameters: dict[str, Any] | None  # None: the model's own when the algorithm is, else none
    features: Sequence[str] | None = None


def check_training_choice(
    algorithm: str, hyperparameters: dict[str, Any], outcome_type: str | None, *, task_decided: bool = True
) -> None:
    """An algorithm or hyper-parameter no run could train is refused when it is given (400 naming it and what is
    known), not found out by a run that fails later: the training catalogue (modelplane/spec) decides."""
    try:
        check_choice(algorithm, hyperparameters, outcome_type, task_decided=task_decided)
    except (UnknownAlgorithmError, HyperParameterError) as error:
        raise InvalidInput(str(error)) from None


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
        if new.hyperparameters is not None and new.algorithm is None:
            raise InvalidInput("hyperparameters are an algorithm's: give the algorithm too")

        def unit(session: Session) -> ModelRow:
            experiment = lookups.experiment(session, experiment_name)
            if new.algorithm is not None:  # the outcome type may come later: then either task's algorithms pass
                check_training_choice(
                    new.algorithm,
                    new.hyperparameters or {},
                    experiment.outcome_type,
                    task_decided=experiment.outcome_type is not None,
                )
            row = ModelRow(
                id=new_id(),
                experiment_name=experiment_name,
                name=new.name,
                description=new.description,
                directives=list(new.directives or []),
                features=list(new.features or []),
                state=ModelState.PREPARING.value,
                create_time=self._context.clock(),
                algorithm=new.algorithm,
                hyperparameters=dict(new.hyperparameters or {}),
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
                    # The split describes every field, the outcome too; a model's features are what predicts it.
                    fields = [str(field["field"]) for field in split.stats if "field" in field]
                    row.features = [name for name in fields if name != experiment.outcome]
            session.add(row)
            return row

        return await self._context.store.write(unit)

    async def list(
        self, experiment_name: str, offset: int, limit: int, by_metric: MetricOrder | None = None
    ) -> ModelPage:
        """A page of the experiment's models, in creation order, or by one metric (registry/service/model_order.py):
        the database orders them, so offset and limit page through the same order."""

        def unit(session: Session) -> ModelPage:
            lookups.experiment(session, experiment_name)
            query = select(ModelRow).where(ModelRow.experiment_name == experiment_name)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            ordered = query.order_by(*_metric_keys(by_metric), ModelRow.create_time, ModelRow.id)
            rows = session.scalars(ordered.offset(offset).limit(limit))
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

    async def deploy(self, experiment_name: str, model_id: str) -> ModelRow:
        """Deploy the model's newest registered version through the Deployer port, which answers once it serves
        (or refuses); then record DEPLOYED. The lifecycle table is checked before and again at the record: a model
        changed meanwhile is not marked deployed. A refusal leaves the state as it was, with the reason."""

        def check(session: Session) -> DeployRequest:
            row = lookups.model(session, experiment_name, model_id)
            next_model_state(lookups.describe(row), ModelState(row.state), ModelAction.DEPLOY)
            if self._context.deployer is None:
                raise Unavailable("this registry deploys nothing (no scheduler was wired into it)")
            newest = versions.newest(session, row.id)
            if newest is None:
                raise Conflict(f"{lookups.describe(row)} has no registered version to deploy (train it again)")
            return versions.deploy_request(experiment_name, row, newest)

        request = await self._context.store.read(check)
        assert self._context.deployer is not None  # noqa: S101 - check() refused without one
        try:
            serving_name = await self._context.deployer.deploy(request)
        except DeployError as error:
            reason = f"deploy failed: {error}"
            await self._context.store.write(lambda session: _note_reason(session, experiment_name, model_id, reason))
            raise PortFailed(f"the model could not be deployed: {error}") from None

        def record(session: Session) -> ModelRow:
            row = lookups.model(session, experiment_name, model_id)
            assignments.move(row, ModelAction.DEPLOY)
            row.deploy_time = self._context.clock()
            row.serving_name = serving_name
            row.reason = None
            return row

        return await self._context.store.write(record)


def _metric_keys(by_metric: MetricOrder | None) -> list[ColumnElement[Any]]:
    """The sort keys before creation order: models without the metric last (a JSON null or a missing key is SQL
    NULL on SQLite and PostgreSQL alike; an explicit IS NULL key, as the two put NULLs at opposite ends), then
    the metric's value in the order asked."""
    if by_metric is None:
        return []
    value = ModelRow.evaluation_metrics[by_metric.metric].as_float()
    return [value.is_(None), value.desc() if by_metric.order is Order.DESCENDING else value.asc()]


def _note_reason(session: Session, experiment_name: str, model_id: str, reason: str) -> None:
    row = lookups.model(session, experiment_name, model_id)
    row.reason = reason[:2000]
