"""Training models through the TrainingLauncher port: POST .../train moves the model to TRAINING (the lifecycle
table decides) and starts the run in the background; its end moves the model to TRAINED, with its metrics and a
new registered version (seed 001: artifact manifest, metrics, metadata, lineage), or to TRAINING_FAILED with the
reason.

Like splits, a run is held by no process alone: a run the registry stopped under (a clean stop) is failed at once,
and one whose registry was killed is failed once it is older than the training timeout, by whichever registry
looks first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from modelplane import __version__ as modelplane_version
from registry.errors import InvalidInput, Unavailable
from registry.lifecycle import ModelAction, ModelState
from registry.ports import LaunchError, TrainingLauncher, TrainingRequest, TrainingResult
from registry.service import assignments, lookups
from registry.service.context import ServiceContext, new_id
from registry.service.models import TrainingSpec, check_training_choice
from registry.store.tables import REASON_CHARS, ModelRow, ModelVersionRow, SplitRow

log = logging.getLogger(__name__)

STOPPED_REASON: Final = "the registry running this training stopped before it finished"


def _lineage(model: ModelRow, split: SplitRow, experiment_srcpath: str | None, run_id: str) -> dict[str, Any]:
    return {
        "srcpath": experiment_srcpath,
        "datasetId": split.dataset_id,
        "datasetSha256": split.dataset_sha256,
        "split": split.id,
        "splitType": split.kind,
        "splitParameters": split.parameters,
        "directives": list(split.directives),
        "algorithm": model.algorithm,
        "hyperparameters": model.hyperparameters,
        "features": list(model.features),
        "trainingRun": run_id,
        "modelplaneVersion": modelplane_version,
    }


def _metadata(result: TrainingResult) -> dict[str, Any]:
    return {
        "taskType": result.task,
        "labels": list(result.classes),
        "framework": result.framework,
        "frameworkVersion": result.framework_version,
    }


class TrainingService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context
        self._running: set[asyncio.Task[None]] = set()

    def _launcher(self) -> TrainingLauncher:
        if self._context.launcher is None:
            raise Unavailable("this registry launches no training (no trainer was wired into it)")
        return self._context.launcher

    async def train(self, experiment_name: str, model_id: str, spec: TrainingSpec) -> ModelRow:
        """Move the model to TRAINING with the algorithm and hyper-parameters and start its run (answered 202:
        the run's end moves the model again)."""

        def start(session: Session) -> tuple[ModelRow, TrainingRequest]:
            row = lookups.model(session, experiment_name, model_id)
            assignments.move(row, ModelAction.TRAIN)
            self._launcher()  # after the state check: a 409 says more than a 503
            split = session.get(SplitRow, row.split_id) if row.split_id else None
            if split is None or split.training_path is None or split.test_path is None:
                raise InvalidInput(f"{lookups.describe(row)} has no computed split to train on")
            experiment = lookups.experiment(session, experiment_name)
            algorithm = spec.algorithm if spec.algorithm is not None else row.algorithm
            if algorithm is None:
                raise InvalidInput(f"{lookups.describe(row)} has no algorithm: give one to train it with")
            hyperparameters = spec.hyperparameters
            if hyperparameters is None:
                hyperparameters = dict(row.hyperparameters) if spec.algorithm is None else {}
            check_training_choice(algorithm, hyperparameters, experiment.outcome_type)
            run_id = new_id()
            row.algorithm = algorithm
            row.hyperparameters = dict(hyperparameters)
            if spec.features is not None:
                row.features = list(spec.features)
            row.reason = None
            row.training_run = run_id
            row.train_start_time = self._context.clock()
            request = TrainingRequest(
                run_id=run_id,
                experiment=experiment_name,
                model_id=row.id,
                model_name=row.name,
                algorithm=algorithm,
                hyperparameters=dict(hyperparameters),
                features=list(row.features),
                outcome=experiment.outcome,
                outcome_type=experiment.outcome_type,
                training_path=split.training_path,
                test_path=split.test_path,
            )
            return row, request

        row, request = await self._context.store.write(start)
        task = asyncio.create_task(self._run(request, self._launcher()), name=f"training-{request.run_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return row

    async def _run(self, request: TrainingRequest, launcher: TrainingLauncher) -> None:
        try:
            result = await asyncio.wait_for(launcher.train(request), self._context.training_timeout_seconds)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.record_training_result(
                    request.experiment, request.model_id, request.run_id, None, STOPPED_REASON
                )
            raise
        except TimeoutError:
            reason = f"not trained within {self._context.training_timeout_seconds:g} s"
            await self.record_training_result(request.experiment, request.model_id, request.run_id, None, reason)
        except LaunchError as error:
            reason = str(error) or "the training run failed"
            await self.record_training_result(request.experiment, request.model_id, request.run_id, None, reason)
        except Exception as error:
            log.exception("training run %s failed unexpectedly", request.run_id)
            reason = f"the registry failed running it ({type(error).__name__}); see its log"
            await self.record_training_result(request.experiment, request.model_id, request.run_id, None, reason)
        else:
            await self.record_training_result(request.experiment, request.model_id, request.run_id, result, None)

    async def record_training_result(
        self, experiment_name: str, model_id: str, run_id: str, result: TrainingResult | None, reason: str | None
    ) -> None:
        """A run's end: TRAINED with its metrics and a new registered version (``result``), or TRAINING_FAILED
        with ``reason``. Only the model's current run is recorded: a model deleted meanwhile, or trained again
        since, is left as it is."""
        action = ModelAction.TRAINING_SUCCEEDED if result is not None else ModelAction.TRAINING_FAILED

        def unit(session: Session) -> None:
            row = session.get(ModelRow, model_id)
            if row is None or row.experiment_name != experiment_name or row.training_run != run_id:
                return
            if row.state != ModelState.TRAINING.value:
                return  # already recorded (an expiry and the run's own end racing)
            assignments.move(row, action)
            row.reason = reason[:REASON_CHARS] if reason else None
            if result is None:
                return
            row.evaluation_metrics = dict(result.evaluation_metrics)
            row.train_time = self._context.clock()
            if result.artifact is None:
                return
            split = session.get(SplitRow, row.split_id) if row.split_id else None
            experiment = lookups.experiment(session, experiment_name)
            newest = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == row.id))
            session.add(
                ModelVersionRow(
                    id=new_id(),
                    model_id=row.id,
                    experiment_name=experiment_name,
                    version=(newest or 0) + 1,
                    artifact_url=result.artifact.url,
                    artifact_sha256=result.artifact.sha256,
                    artifact_name=result.artifact.name,
                    artifact_size_bytes=result.artifact.size_bytes,
                    evaluation_metrics=dict(result.evaluation_metrics),
                    fitted_parameters=dict(result.fitted_parameters),
                    model_metadata=_metadata(result),
                    lineage=_lineage(row, split, experiment.srcpath, run_id) if split is not None else {},
                    create_time=self._context.clock(),
                )
            )

        await self._context.store.write(unit)

    async def expire_overdue(self) -> int:
        """Fail the models still TRAINING past the training timeout (their registry is gone); how many."""
        oldest = self._context.clock() - int(self._context.training_timeout_seconds)

        def overdue(session: Session) -> list[tuple[str, str, str]]:
            # No start time: TRAINING under a schema before 0004, when no registry could run it.
            started_long_ago = or_(ModelRow.train_start_time < oldest, ModelRow.train_start_time.is_(None))
            query = select(ModelRow.experiment_name, ModelRow.id, ModelRow.training_run).where(
                ModelRow.state == ModelState.TRAINING.value, started_long_ago
            )
            return [(name, model, run or "") for name, model, run in session.execute(query)]

        found = await self._context.store.read(overdue)
        for experiment_name, model_id, run_id in found:
            await self.record_training_result(experiment_name, model_id, run_id, None, STOPPED_REASON)
        return len(found)

    async def close(self) -> None:
        """Stop the runs in flight: each is failed with STOPPED_REASON."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
