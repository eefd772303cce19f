"""What the trainer publishes about a training run, as every reader of it needs to know it (the trainer writes it,
the registry reads it; one owner here so neither imports the other): the status topic's default name, the Kafka
headers of a ModelTrainingStatus message (its body is generated/mlops/training/v1's protobuf), and the name of the
metadata file stored beside a trained artifact in the model store (the run's ``metadata.json``).

On SUCCESS a status message carries, besides the ids, ``modelplane-metrics`` (a JSON object of metric name to
number), ``modelplane-model-uri`` (the run's folder in the model store, ``s3://bucket/key``, holding the artifact,
``metadata.json`` and the serving bundle), ``modelplane-artifact-uri`` and ``modelplane-artifact-sha256``.
"""

from __future__ import annotations

from typing import Final

DEFAULT_STATUS_TOPIC: Final = "modelplane.training.status"
CONTENT_TYPE: Final = "application/x-protobuf"
H_EVENT_ID: Final = "modelplane-event-id"
H_RUN_ID: Final = "modelplane-run-id"
H_ATTEMPTS: Final = "modelplane-attempts"
H_METRICS: Final = "modelplane-metrics"
H_MODEL_URI: Final = "modelplane-model-uri"
H_ARTIFACT_URI: Final = "modelplane-artifact-uri"
H_ARTIFACT_SHA256: Final = "modelplane-artifact-sha256"
H_DEPLOY: Final = "modelplane-deploy"
METADATA_FILE: Final = "metadata.json"
