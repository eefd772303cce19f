"""The messages the trainer publishes about a run (formats and headers: trainer/service/consumer.py): the
header names, a run's outcome as it is reported, and the ModelTrainingStatus message with its headers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from generated.mlops.training.v1 import training_pb2
from modelplane.spec.training_status import (  # what its readers share (the registry reads the status topic)
    CONTENT_TYPE,
    H_ARTIFACT_SHA256,
    H_ARTIFACT_URI,
    H_ATTEMPTS,
    H_DEPLOY,
    H_EVENT_ID,
    H_METRICS,
    H_MODEL_URI,
    H_RUN_ID,
)
from trainer.service.model_store import StoredModel
from trainer.service.run_registry import RunRecord

H_AUTO_DEPLOY = "modelplane-auto-deploy"
MAX_ERROR_CHARS = 2000


@dataclass
class RunOutcome:
    """How a run ended, as its status message reports it."""

    succeeded: bool
    errors: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    stored: StoredModel | None = None
    deploy_note: str = ""


def truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def id_headers(run: RunRecord) -> list[tuple[str, bytes]]:
    """The headers every message about ``run`` carries: its content type, event id and run id."""
    return [
        ("content-type", CONTENT_TYPE.encode()),
        (H_EVENT_ID, run.event_id.encode()),
        (H_RUN_ID, run.run_id.encode()),
    ]


def status_message(
    run: RunRecord,
    status: training_pb2.ModelTrainingStatusEnum.ValueType,
    errors: list[str],
    outcome: RunOutcome | None = None,
) -> tuple[training_pb2.ModelTrainingStatus, list[tuple[str, bytes]]]:
    """The ModelTrainingStatus of ``run`` and its headers (metrics, model and artifact on success)."""
    message = training_pb2.ModelTrainingStatus(
        design_schema_id=run.design_schema_id,
        status=status,
        errors=[truncate(error) for error in errors],
    )
    headers = [*id_headers(run), (H_ATTEMPTS, str(run.attempts).encode())]
    if outcome is not None and outcome.stored is not None:
        headers += [
            (H_METRICS, json.dumps(outcome.metrics, sort_keys=True).encode()),
            (H_MODEL_URI, outcome.stored.folder_uri.encode()),
            (H_ARTIFACT_URI, outcome.stored.artifact_uri.encode()),
            (H_ARTIFACT_SHA256, outcome.stored.sha256.encode()),
        ]
    if outcome is not None and outcome.deploy_note:
        headers.append((H_DEPLOY, outcome.deploy_note.encode()))
    return message, headers
