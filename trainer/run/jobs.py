"""What passes between the trainer service and a training run, wherever the run executes.

A run is a folder (the *job directory*). The service writes ``job.json`` (a :class:`TrainingJob`) and the
design schema (``design_schema.pb``, serialised ``ModelDesignSchema``) into it; the run
(``python -m trainer.run.run_job JOB_DIR``, in a local process, a container or a Kubernetes Job) reads them,
trains, and writes ``output/`` (the artifact and ``metadata.json``) and ``result.json`` (a
:class:`RunResult`). Files rather than arguments, so the same contract works across a process boundary, a
container's mounted volume and a Kubernetes Job's PVC.

Exit codes of a run follow the Kubernetes convention the launchers rely on: 0 success; 1-127 a permanent
failure (bad input: the same event would fail again), except EXIT_UNAVAILABLE (75: the dataset's store could
not be reached), which is retryable; 128-255 (killed by a signal, out of memory, deadline) retryable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
DESIGN_SCHEMA_FILE = "design_schema.pb"
RESULT_FILE = "result.json"
OUTPUT_DIR = "output"
# modelplane/spec/training_status.py names it for the registry too (a run's image carries no modelplane/spec).
METADATA_FILE = "metadata.json"
DEFAULT_ARTIFACT_NAME = "retail_forecasting_model.pkl"  # the seed's model-store artifact name

EXIT_SUCCESS = 0
EXIT_BAD_INPUT = 2  # permanent: schema, dataset or hyper-parameters that cannot train
EXIT_INTERNAL = 3  # permanent: a bug or an unexpected error inside the run
# Retryable although below 128: something the run needs (its dataset's store) could not be reached. sysexits'
# EX_TEMPFAIL, "a temporary failure ... the user is invited to retry".
EXIT_UNAVAILABLE = 75


@dataclass(frozen=True)
class DatasetSource:
    """Where the run reads its dataset: a mounted path (seed step 3's ``datasetPath``) or a URL.

    Exactly one is set. ``url`` schemes: ``file://``, ``s3://bucket/key`` (credentials from the
    run's environment: ``MODELPLANE_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``MODELPLANE_S3_SECURE``), ``http(s)://``.
    """

    path: str = ""
    url: str = ""


@dataclass(frozen=True)
class TrainingJob:
    run_id: str
    event_id: str
    dataset: DatasetSource
    artifact_name: str = DEFAULT_ARTIFACT_NAME
    timeout_seconds: float = 3600.0
    # A split made before the run (the registry's): ``dataset`` is the training rows and this the test rows, and
    # the schema's criteria are not used. None: the run splits ``dataset`` by the criteria itself.
    test_dataset: DatasetSource | None = None

    def write(self, job_dir: Path) -> None:
        (job_dir / JOB_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, job_dir: Path) -> TrainingJob:
        raw = json.loads((job_dir / JOB_FILE).read_text())
        test_dataset = raw.get("test_dataset")
        return cls(
            run_id=str(raw["run_id"]),
            event_id=str(raw["event_id"]),
            dataset=DatasetSource(**raw["dataset"]),
            artifact_name=str(raw.get("artifact_name", DEFAULT_ARTIFACT_NAME)),
            timeout_seconds=float(raw.get("timeout_seconds", 3600.0)),
            test_dataset=DatasetSource(**test_dataset) if test_dataset is not None else None,
        )


@dataclass(frozen=True)
class RunResult:
    """What a run reports in ``result.json``. On success ``metrics`` is filled and the artifact and
    ``metadata.json`` are in ``output/``; on failure ``errors`` say why, each naming the cause
    (a column, a hyper-parameter, an algorithm)."""

    succeeded: bool
    errors: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    artifact_sha256: str = ""

    def write(self, job_dir: Path) -> None:
        (job_dir / RESULT_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, job_dir: Path) -> RunResult:
        raw: dict[str, Any] = json.loads((job_dir / RESULT_FILE).read_text())
        return cls(
            succeeded=bool(raw["succeeded"]),
            errors=[str(error) for error in raw.get("errors", [])],
            metrics={str(key): float(value) for key, value in raw.get("metrics", {}).items()},
            artifact_sha256=str(raw.get("artifact_sha256", "")),
        )
