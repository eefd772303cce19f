"""Registering the runs the trainer reports (registry/trainer_runs/): each finished run of a design becomes a
registered version of that design's model, so the registry sees every model the trainer makes.

Naming: a design is an experiment and its one model. The experiment is named after the design schema's id (the
status message's ``design_schema_id``: its design token), made a valid experiment name (characters other than
A-Z a-z 0-9 . _ - become ``_``; when anything changed, or it was longer than 128 characters, a short hash of the
id keeps distinct designs apart); its outcome is the design's target. Its model's id is derived from the design
id (the same design, the same model, on every registry replica), named after the design's metadata name (else the
design id); every run is a new version of it, with the run's metrics, the artifact manifest (the run's ``s3://``
folder, the artifact's sha256 as read back from the store), metadata (task, labels, framework) and lineage
(training run, event, design schema and its version, dataset URL and sha256, algorithm, hyper-parameters,
features); the dataset the run read is registered as a dataset (seed 001: format, sample count, sha256), which the
lineage names by id. A model made here enters the lifecycle at TRAINED (it was trained without a split of the
registry's); a model already there keeps its state (a DEPLOYED one goes on serving its version) and takes the new
metrics.

Idempotent: a version's id is derived from the run id, so a report delivered again (Kafka is at least once) finds
its version and changes nothing; two registries racing on one report lose nothing either (the store runs the
loser again, which then finds the version).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final, TypeGuard

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.lifecycle import ModelState
from registry.ports import DatasetRecord
from registry.service import datasets
from registry.service.context import ServiceContext
from registry.store.tables import NAME_CHARS, PATH_CHARS, ExperimentRow, ModelRow, ModelVersionRow
from registry.trainer_runs.reports import RunReport
from registry.trainer_runs.stored_runs import StoredRun

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_FORMATS: Final = frozenset({"csv", "parquet"})  # what the trainer reads
_HASH_CHARS: Final = 10


def experiment_name_for(design_schema_id: str) -> str:
    """The experiment a design's runs are registered in (the module's docstring says the rule)."""
    safe = _UNSAFE.sub("_", design_schema_id)
    if not safe[:1].isalnum():
        safe = f"d{safe}"
    if safe == design_schema_id and len(safe) <= NAME_CHARS:
        return safe
    digest = hashlib.sha256(design_schema_id.encode()).hexdigest()[:_HASH_CHARS]
    return f"{safe[: NAME_CHARS - _HASH_CHARS - 1]}-{digest}"


def _derived_id(kind: str, text: str) -> str:
    return hashlib.sha256(f"trainer-{kind}:{text}".encode()).hexdigest()[:16]


def _text(value: object, limit: int = NAME_CHARS) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


class TrainerRunsService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def is_registered(self, run_id: str) -> bool:
        """Whether the run is a version already (a redelivered report): known before its artifact is read."""
        version_id = _derived_id("run", run_id)
        return await self._context.store.read(lambda session: session.get(ModelVersionRow, version_id) is not None)

    async def register(self, report: RunReport, stored: StoredRun) -> bool:
        """Register the run (its experiment, model and version); False when it was registered already."""
        return await self._context.store.write(lambda session: self._register(session, report, stored))

    def _register(self, session: Session, report: RunReport, stored: StoredRun) -> bool:
        version_id = _derived_id("run", report.run_id)
        if session.get(ModelVersionRow, version_id) is not None:
            return False
        metadata = stored.metadata
        design = _dict(metadata.get("design_schema"))
        now = self._context.clock()
        name = experiment_name_for(report.design_schema_id)
        experiment = session.get(ExperimentRow, name)
        if experiment is None:
            experiment = ExperimentRow(
                name=name,
                description=f"the trainer's runs of design {report.design_schema_id[:512]}",
                outcome=_text(metadata.get("target")),
                directives=[],
                create_time=now,
            )
            session.add(experiment)
        model_id = _derived_id("model", report.design_schema_id)
        model = session.get(ModelRow, model_id)
        if model is None:
            model_name = _text(_dict(design.get("metadata")).get("name")) or report.design_schema_id[:NAME_CHARS]
            model = ModelRow(
                id=model_id,
                experiment_name=name,
                name=model_name,
                directives=[],
                state=ModelState.TRAINED.value,
                create_time=now,
            )
            session.add(model)
        model.algorithm = _text(metadata.get("algorithm"))
        model.hyperparameters = _dict(metadata.get("hyper_parameters"))
        model.features = _strings(metadata.get("features"))
        model.evaluation_metrics = dict(report.metrics)
        model.training_run = report.run_id
        model.train_time = now
        model.reason = None
        dataset = _dataset(metadata)
        dataset_id = datasets.register(session, dataset, now).id if dataset is not None else None
        newest = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == model_id))
        session.add(
            ModelVersionRow(
                id=version_id,
                model_id=model_id,
                experiment_name=name,
                version=(newest or 0) + 1,
                artifact_url=report.model_uri,
                artifact_sha256=report.artifact_sha256,
                artifact_name=stored.artifact_name[:NAME_CHARS],
                artifact_size_bytes=stored.artifact_size,
                evaluation_metrics=dict(report.metrics),
                fitted_parameters=_dict(metadata.get("fitted_parameters")),
                model_metadata=_model_metadata(metadata),
                lineage=_lineage(report, metadata, design) | {"datasetId": dataset_id},
                create_time=now,
            )
        )
        return True


def _dataset(metadata: dict[str, Any]) -> DatasetRecord | None:
    """The dataset the run read, as the trainer describes it (its origin, format, sha256, size, sample count), when
    it describes it whole; registered like the datasets splits read (seed 001), so the version's lineage names it."""
    dataset = _dict(metadata.get("dataset"))
    origin, sha256, file_format = dataset.get("origin"), dataset.get("sha256"), dataset.get("format")
    samples, size = _dict(dataset.get("stats")).get("samples"), dataset.get("size_bytes")
    if not isinstance(origin, str) or not 0 < len(origin) <= PATH_CHARS:
        return None
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256) or file_format not in _FORMATS:
        return None
    if not _count(samples) or not _count(size):
        return None
    return DatasetRecord(origin, sha256, str(file_format), samples, size)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _model_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    versions = _dict(metadata.get("framework_versions"))
    return {
        "taskType": _text(metadata.get("task")),
        "labels": _strings(metadata.get("classes")),
        "framework": "scikit-learn",
        "frameworkVersion": _text(versions.get("scikit-learn")),
    }


def _lineage(report: RunReport, metadata: dict[str, Any], design: dict[str, Any]) -> dict[str, Any]:
    dataset = _dict(metadata.get("dataset"))
    return {
        "source": "trainer",
        "trainingRun": report.run_id,
        "eventId": report.event_id,
        "designSchema": report.design_schema_id,
        "designSchemaVersion": _text(_dict(design.get("version")).get("version")),
        "dataset": _text(dataset.get("origin"), 2048),
        "datasetSha256": _text(dataset.get("sha256"), 64),
        "datasetFormat": _text(dataset.get("format")),
        "algorithm": _text(metadata.get("algorithm")),
        "hyperparameters": _dict(metadata.get("hyper_parameters")),
        "features": _strings(metadata.get("features")),
        "frameworkVersions": {str(key): str(value) for key, value in _dict(metadata.get("framework_versions")).items()},
    }
