"""Rows as the JSON documents of seed 002, with its names (outcomeType, trainingPath, evaluationMetrics,
createtime, ...). Times are whole seconds since the epoch; ``traintime`` and ``deploytime`` are missing until the
model is trained or deployed, as the seed says."""

from __future__ import annotations

from typing import Any

from registry.service.serving import Serving
from registry.service.splits import SplitView
from registry.store.tables import (
    AliasRow,
    DatasetRow,
    ExperimentRow,
    ModelRow,
    ModelVersionRow,
    PromotionRow,
    SplitRow,
)


def experiment(row: ExperimentRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "description": row.description,
        "srcpath": row.srcpath,
        "outcome": row.outcome,
        "outcomeType": row.outcome_type,
        "directives": row.directives,
        "createtime": row.create_time,
    }


def _with_reason(document: dict[str, Any], reason: str | None) -> dict[str, Any]:
    if reason:
        document["reason"] = reason
    return document


def split(view: SplitView, *, with_stats: bool) -> dict[str, Any]:
    row = view.split
    document: dict[str, Any] = {
        "id": row.id,
        "description": row.description,
        "type": row.kind,
        "parameters": row.parameters,
        "directives": row.directives,
        "schema": row.schema,
        "trainingPath": row.training_path,
        "testPath": row.test_path,
        "status": row.state,
        "createtime": row.create_time,
        "models": view.models,
    }
    if row.dataset_id is not None:
        document["dataset"] = {"id": row.dataset_id, "sha256": row.dataset_sha256}
    if with_stats:
        document["stats"] = row.stats or []
    return _with_reason(document, row.reason)


def split_status(row: SplitRow) -> dict[str, Any]:
    return _with_reason({"id": row.id, "status": row.state}, row.reason)


def _serving(found: Serving) -> dict[str, Any]:
    return {"name": found.name, "state": found.state, "reason": found.reason, "seen": found.seen}


def _with_serving(document: dict[str, Any], serving: list[Serving] | None) -> dict[str, Any]:
    """What the scheduler serves now of the model (registry/service/serving.py): ``serving`` for its servingName,
    ``aliasServing`` for the other names an alias serves it under (the experiment's stable name)."""
    if serving:
        document["serving"] = _serving(serving[0])
        if len(serving) > 1:
            document["aliasServing"] = [_serving(found) for found in serving[1:]]
    return document


def model(row: ModelRow, serving: list[Serving] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "split": row.split_id,
        "algorithm": row.algorithm,
        "hyperparameters": row.hyperparameters,
        "evaluationMetrics": row.evaluation_metrics,
        "directives": row.directives,
        "features": row.features,
        "status": row.state,
        "createtime": row.create_time,
    }
    if row.train_time is not None:
        document["traintime"] = row.train_time
    if row.deploy_time is not None:
        document["deploytime"] = row.deploy_time
    if row.training_run is not None:
        document["trainingRun"] = row.training_run
    if row.serving_name is not None:
        document["servingName"] = row.serving_name  # the name to infer with, through the gateway
    return _with_serving(_with_reason(document, row.reason), serving)


def model_status(row: ModelRow, serving: list[Serving] | None = None) -> dict[str, Any]:
    return _with_serving(_with_reason({"id": row.id, "status": row.state}, row.reason), serving)


def dataset(row: DatasetRow) -> dict[str, Any]:
    """Seed 001's dataset: its format and sample count, with the sha256 that names this version of it."""
    document: dict[str, Any] = {
        "id": row.id,
        "srcpath": row.srcpath,
        "format": row.format,
        "sampleCount": row.sample_count,
        "sha256": row.sha256,
        "sizeBytes": row.size_bytes,
        "columns": row.columns,
        "createtime": row.create_time,
    }
    if row.label_counts is not None:
        document["labelCounts"] = row.label_counts
    return document


def model_version(row: ModelVersionRow) -> dict[str, Any]:
    """Seed 001's registered model: its manifest (version, download URL, sha256), metrics, metadata, lineage."""
    return {
        "model": row.model_id,
        "version": row.version,
        "manifest": {
            "version": str(row.version),
            "downloadURL": row.artifact_url,
            "sha256sum": row.artifact_sha256,
            "artifact": row.artifact_name,
            "sizeBytes": row.artifact_size_bytes,
        },
        "evaluationMetrics": row.evaluation_metrics,
        "fittedParameters": row.fitted_parameters,
        "metadata": row.model_metadata,
        "lineage": row.lineage,
        "createtime": row.create_time,
    }


def alias(row: AliasRow) -> dict[str, Any]:
    """An alias and the version it names; ``servingName`` is what to infer with (for production: the stable name)."""
    return {
        "alias": row.alias,
        "model": row.model_id,
        "version": row.version,
        "servingName": row.serving_name,
        "updatetime": row.update_time,
    }


def promotion(row: PromotionRow) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": row.id,
        "state": row.state,
        "servingName": row.stable_name,  # the one name clients call, before, during and after
        "production": {"model": row.production_model_id, "version": row.production_version},
        "candidate": {
            "model": row.candidate_model_id,
            "version": row.candidate_version,
            "servingName": row.candidate_serving_name,
        },
        "percent": row.percent,
        "createtime": row.create_time,
        "updatetime": row.update_time,
    }
    return _with_reason(document, row.reason)
