"""One training run: ``python -m trainer.run.run_job JOB_DIR`` (see trainer/run/jobs.py for the folder's contract).

Reads ``job.json`` and ``design_schema.pb``, loads the dataset, trains, and writes
``output/<artifact_name>`` (the fitted scikit-learn estimator, with joblib), ``output/metadata.json``, the
files that let MLServer serve the whole design (trainer/run/serving_bundle.py), and ``result.json``.
Exit codes: ``EXIT_SUCCESS``; ``EXIT_BAD_INPUT`` when the job, schema, dataset or hyper-parameters cannot
train (``result.json`` errors name the cause); ``EXIT_UNAVAILABLE`` when the dataset's store could not be reached
(retryable: the event is not at fault); ``EXIT_INTERNAL`` for anything unexpected (the error's type and message in
``result.json``, one log line on stderr, no traceback).

The artifact takes a float64 array whose columns are the design inputs in schema order (``features`` in
metadata.json), after preprocessing; classification models' ``predict_proba`` columns follow ``classes``.
Served through the bundle, the model takes the raw columns instead and applies the preprocessing itself
(servers/designed_model/served_model.py).

metadata.json keys: ``format_version``, ``run_id``, ``event_id``, ``design_schema`` (the schema as JSON,
MessageToDict with proto field names), ``algorithm``, ``task``, ``features``, ``target``, ``classes``,
``hyper_parameters``, ``metrics``, ``metrics_skipped``, ``fitted_parameters``, ``preprocessing``,
``postprocessing``, ``warnings``, ``split``, ``dataset`` (``origin``, ``format``, ``size_bytes``, ``sha256``,
``stats``), ``test_dataset`` (a job whose split was made before the run: its test rows' ``origin`` to ``sha256``),
``artifact`` (``name``, ``format``, ``size_bytes``, ``sha256``, ``input``), ``framework_versions``
(python, scikit-learn, numpy, pandas, joblib), ``started_at``, ``finished_at`` (UTC, ISO 8601),
``duration_seconds``, ``fit_seconds``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from generated.mlops.training.v1 import training_pb2
from servers.designed_model.served_model import file_sha256
from trainer.run.datasets import DatasetLimits, LoadedDataset, load_dataset
from trainer.run.errors import BAD_INPUT_ERRORS, DatasetUnavailableError, TrainingInputError
from trainer.run.fitting import TrainedModel, train
from trainer.run.jobs import (
    DESIGN_SCHEMA_FILE,
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_SUCCESS,
    EXIT_UNAVAILABLE,
    JOB_FILE,
    METADATA_FILE,
    OUTPUT_DIR,
    RESULT_FILE,
    RunResult,
    TrainingJob,
)
from trainer.run.serving_bundle import ENTRY_MODULE, RUNTIME_PACKAGE, SETTINGS_FILE, write_serving_bundle

METADATA_FORMAT_VERSION = 1
MAX_SCHEMA_BYTES = 16 * 1024 * 1024
MAX_JOB_FILE_BYTES = 1024 * 1024

log = logging.getLogger("trainer.run.run_job")


def execute(job_dir: Path, environ: Mapping[str, str] | None = None) -> RunResult:
    """Run the job in ``job_dir`` in this process and return what was written to result.json."""
    return execute_with_exit_code(job_dir, environ)[0]


def execute_with_exit_code(job_dir: Path, environ: Mapping[str, str] | None = None) -> tuple[RunResult, int]:
    """Run the job; never raises for bad input or a failed run: the result and exit code say what happened."""
    environment = os.environ if environ is None else environ
    try:
        result = _run(job_dir, environment)
        code = EXIT_SUCCESS
    except DatasetUnavailableError as exc:
        result, code = RunResult(succeeded=False, errors=[str(exc)]), EXIT_UNAVAILABLE
    except BAD_INPUT_ERRORS as exc:
        result, code = RunResult(succeeded=False, errors=[str(exc)]), EXIT_BAD_INPUT
    except Exception as exc:  # a bug: report it as such, with its type, never as the caller's fault
        log.error("training run in %s failed unexpectedly: %s: %s", job_dir, type(exc).__name__, exc)
        result, code = (
            RunResult(succeeded=False, errors=[f"internal error: {type(exc).__name__}: {exc}"]),
            EXIT_INTERNAL,
        )
    try:
        result.write(job_dir)
    except OSError as exc:
        log.error("cannot write the result into %s: %s", job_dir, exc)
        return result, EXIT_INTERNAL if code == EXIT_SUCCESS else code
    return result, code


def _run(job_dir: Path, environ: Mapping[str, str]) -> RunResult:
    started = datetime.now(UTC)
    clock = time.monotonic()
    (job_dir / RESULT_FILE).unlink(missing_ok=True)  # a retried run never leaves an earlier attempt's verdict
    job = read_job(job_dir)
    schema = read_schema(job_dir)
    artifact_name = _artifact_name(job.artifact_name)
    output = job_dir / OUTPUT_DIR
    for stale in (output / artifact_name, output / METADATA_FILE):
        if stale.is_file():
            stale.unlink()
    timeout = min(60.0, job.timeout_seconds) if job.timeout_seconds >= 1.0 else 1.0
    limits = DatasetLimits(timeout_seconds=timeout)
    dataset = load_dataset(job.dataset, environ, limits)
    frame, test_rows, test_info = dataset.frame, None, None
    if job.test_dataset is not None:  # a split made before the run: its training rows, then its test rows
        test = load_dataset(job.test_dataset, environ, limits)
        if list(test.frame.columns) != list(dataset.frame.columns):
            raise TrainingInputError(
                f"the test dataset {test.origin} has other columns than the training dataset {dataset.origin}"
            )
        frame = pd.concat([dataset.frame, test.frame], ignore_index=True)
        test_rows, test_info = len(test.frame), _dataset_info(test)
    fit_clock = time.monotonic()
    model = train(schema, frame, dataset.origin, test_rows=test_rows)
    fit_seconds = time.monotonic() - fit_clock
    output.mkdir(parents=True, exist_ok=True)
    artifact = output / artifact_name
    temporary = output / f".{artifact_name}.partial"
    joblib.dump(model.estimator, temporary)
    temporary.replace(artifact)  # a reader never sees a half-written artifact under the final name
    sha256 = file_sha256(artifact)  # streamed: the artifact may be large, its bytes are not needed here
    metadata = build_metadata(job, schema, model, dataset_info=_dataset_info(dataset))
    if test_info is not None:
        metadata["test_dataset"] = test_info
    metadata["artifact"] = {
        "name": artifact_name,
        "format": "joblib",
        "size_bytes": artifact.stat().st_size,
        "sha256": sha256,
        "input": {"dtype": "float64", "columns": list(model.features)},  # the design inputs, after preprocessing
    }
    finished = datetime.now(UTC)
    metadata.update(
        started_at=started.isoformat(),
        finished_at=finished.isoformat(),
        duration_seconds=time.monotonic() - clock,
        fit_seconds=fit_seconds,
    )
    (output / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=False, default=_json_default))
    write_serving_bundle(output, artifact_name)
    log.info("run %s trained %s: %s", job.run_id, model.algorithm, model.metrics)
    return RunResult(succeeded=True, metrics=dict(model.metrics), artifact_sha256=sha256)


def read_job(job_dir: Path) -> TrainingJob:
    path = job_dir / JOB_FILE
    try:
        if path.stat().st_size > MAX_JOB_FILE_BYTES:
            raise TrainingInputError(f"{JOB_FILE} is larger than {MAX_JOB_FILE_BYTES} bytes")
        job = TrainingJob.read(job_dir)
    except FileNotFoundError:
        raise TrainingInputError(f"no {JOB_FILE} in the job directory {job_dir}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingInputError(f"cannot read {JOB_FILE}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TrainingInputError(f"{JOB_FILE} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except KeyError as exc:
        raise TrainingInputError(f"{JOB_FILE} lacks the field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise TrainingInputError(f"{JOB_FILE} has a malformed field: {exc}") from None
    for name, source in (("dataset", job.dataset), ("test_dataset", job.test_dataset)):
        if source is not None and (not isinstance(source.path, str) or not isinstance(source.url, str)):
            raise TrainingInputError(f"{JOB_FILE}: {name}.path and {name}.url must be strings")
    return job


def read_schema(job_dir: Path) -> training_pb2.ModelDesignSchema:
    path = job_dir / DESIGN_SCHEMA_FILE
    try:
        if path.stat().st_size > MAX_SCHEMA_BYTES:
            raise TrainingInputError(f"{DESIGN_SCHEMA_FILE} is larger than {MAX_SCHEMA_BYTES} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrainingInputError(f"no {DESIGN_SCHEMA_FILE} in the job directory {job_dir}") from None
    except OSError as exc:
        raise TrainingInputError(f"cannot read {DESIGN_SCHEMA_FILE}: {exc}") from None
    schema = training_pb2.ModelDesignSchema()
    try:
        schema.ParseFromString(data)
    except (DecodeError, RecursionError) as exc:
        raise TrainingInputError(f"{DESIGN_SCHEMA_FILE} is not a serialised ModelDesignSchema: {exc}") from None
    return schema


def _artifact_name(name: str) -> str:
    """A plain file name: no folders, no '..', nothing hidden, so the artifact cannot escape output/."""
    if not name or name != PurePath(name).name or name in (".", "..") or name.startswith(".") or "\\" in name:
        raise TrainingInputError(f"artifact_name {name!r} must be a plain file name (no folders, not hidden)")
    if len(name) > 255 or not name.isprintable():
        raise TrainingInputError(f"artifact_name {name[:40]!r} is too long or has unprintable characters")
    if name in (METADATA_FILE, SETTINGS_FILE, RUNTIME_PACKAGE, f"{ENTRY_MODULE}.py"):
        raise TrainingInputError(f"artifact_name must not be {name!r}: the model's folder holds a file of that name")
    return name


def _dataset_info(dataset: LoadedDataset) -> dict[str, object]:
    return {
        "origin": dataset.origin,
        "format": dataset.file_format,
        "size_bytes": dataset.size_bytes,
        "sha256": dataset.sha256,
    }


def framework_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": str(sklearn.__version__),
        "numpy": str(np.__version__),
        "pandas": str(pd.__version__),
        "joblib": str(joblib.__version__),
    }


def build_metadata(
    job: TrainingJob, schema: training_pb2.ModelDesignSchema, model: TrainedModel, dataset_info: dict[str, object]
) -> dict[str, Any]:
    return {
        "format_version": METADATA_FORMAT_VERSION,
        "run_id": job.run_id,
        "event_id": job.event_id,
        "design_schema": json_format.MessageToDict(schema, preserving_proto_field_name=True),
        "algorithm": model.algorithm,
        "task": model.task.value,
        "features": list(model.features),
        "target": model.target,
        "classes": model.classes,
        "hyper_parameters": model.hyper_parameters,
        "metrics": model.metrics,
        "metrics_skipped": model.metrics_skipped,
        "fitted_parameters": model.fitted_parameters,
        "preprocessing": model.preprocessing,
        "postprocessing": model.postprocessing,
        "warnings": model.warnings,
        "split": model.split.describe(),
        "dataset": {**dataset_info, "stats": model.dataset_stats},
        "framework_versions": framework_versions(),
    }


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if len(arguments) != 1:
        sys.stderr.write("usage: python -m trainer.run.run_job JOB_DIR\n")
        return EXIT_BAD_INPUT
    job_dir = Path(arguments[0])
    if not job_dir.is_dir():
        sys.stderr.write(f"job directory {job_dir} does not exist\n")
        return EXIT_BAD_INPUT
    result, code = execute_with_exit_code(job_dir)
    if not result.succeeded:
        log.error("run in %s failed (exit %d): %s", job_dir, code, "; ".join(result.errors))
    return code


if __name__ == "__main__":
    sys.exit(main())
