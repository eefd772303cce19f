"""The registry's TrainingLauncher over the trainer's own run (trainer/run): a registry model becomes a design
schema and a job folder, run by the trainer's local launcher as a child process (its deadline, memory limit and
process group), exactly as a training event's run is. It lives here, at the composition root, because the registry
may not import the trainer.

- The split is the registry's: the job's ``dataset`` is the split's training half and ``test_dataset`` its test
  half, so the model is fitted and scored on exactly the rows the split's statistics describe.
- The task comes from the experiment's ``outcomeType``: a number type (double, float, long, int, integer, number)
  is regression, anything else classification (multiclass, which takes two classes as well).
- The algorithm is the trainer's name, spaces and dashes read as ``_`` ("decision tree" is decision_tree):
  logistic_regression, decision_tree, random_forest, gbdt for classification; linear_regression, decision_tree,
  random_forest, gbdt for regression. Hyper-parameters keep the trainer's names; the seed writes numbers as text
  ("maxBins": "3"), so text that is a whole number is sent as an integer and other numeric text as a number.
- The run's folder (under the registry's state directory) is the version's artifact: the trainer writes the model
  and what MLServer needs to serve it there, so its ``file://`` URL is what a local scheduler's agent loads; with a
  model store (``--s3-*``) the folder is uploaded (registry_model_store.py) and its ``s3://`` URL is the artifact's,
  what an agent on any host loads.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from generated.mlops.training.v1 import training_pb2
from modelplane.cli.registry_model_store import RegistryModelStore
from registry.ports import LaunchError, TrainedArtifact, TrainingRequest, TrainingResult
from trainer.launchers.base import Launcher, LaunchVerdict
from trainer.run.jobs import DESIGN_SCHEMA_FILE, METADATA_FILE, OUTPUT_DIR, RESULT_FILE, DatasetSource, RunResult
from trainer.run.jobs import TrainingJob as TrainerJob

ARTIFACT_NAME: Final = "model.joblib"
REGRESSION_TYPES: Final = frozenset({"double", "float", "long", "int", "integer", "number"})
CLASSIFIERS: Final = ("logistic_regression", "decision_tree", "random_forest", "gbdt")
REGRESSORS: Final = ("linear_regression", "decision_tree", "random_forest", "gbdt")
INT32: Final = 2**31
_WHOLE: Final = re.compile(r"[+-]?\d{1,10}")
_NUMBER: Final = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")


class DesignError(LaunchError):
    """The model cannot be described to the trainer (an unknown algorithm, no outcome)."""


def algorithm_name(text: str) -> str:
    return re.sub(r"[\s-]+", "_", text.strip().lower())


def hyper_parameter(value: object) -> training_pb2.HyperParamater:
    message = training_pb2.HyperParamater()
    if isinstance(value, bool):  # before int: a bool is an int
        message.bl = value
    elif isinstance(value, int) and -INT32 <= value < INT32:
        message.i32 = value
    elif isinstance(value, int | float):
        message.flt = float(value)
    elif isinstance(value, str) and _WHOLE.fullmatch(value.strip()) and -INT32 <= int(value) < INT32:
        message.i32 = int(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        message.flt = float(value)
    else:
        message.str = str(value)
    return message


def design_schema(request: TrainingRequest) -> training_pb2.ModelDesignSchema:
    """The trainer's ModelDesignSchema for ``request``; DesignError when it cannot be one."""
    if not request.outcome:
        raise DesignError(f"experiment {request.experiment} has no outcome: PUT one to say what to predict")
    if not request.features:
        raise DesignError("the model has no features to train on")
    name = algorithm_name(request.algorithm)
    regression = (request.outcome_type or "").strip().lower() in REGRESSION_TYPES
    known = REGRESSORS if regression else CLASSIFIERS
    if name not in known:
        task = "regression" if regression else "classification"
        raise DesignError(f"unknown algorithm {request.algorithm!r} for {task}; known: {', '.join(known)}")
    schema = training_pb2.ModelDesignSchema()
    schema.design_token.value = f"{request.experiment}-{request.model_id}"
    schema.version.version = request.run_id
    schema.metadata.name = request.model_name or request.model_id
    schema.input.multivariate.design_input.element.extend(request.features)
    if regression:
        schema.output.regression_schema.label_schema = request.outcome
        models: Any = schema.algorithm.regression
    else:
        schema.output.classification_schema.multi_class.target_variable.value = request.outcome
        models = schema.algorithm.classification.multiclass
    chosen = getattr(models, name)
    # Present even without hyper-parameters: an empty message the schema does not mark as set is no algorithm at all.
    chosen.SetInParent()
    for key, value in request.hyperparameters.items():
        chosen.hyper_parameters.hyper_parameter[key].CopyFrom(hyper_parameter(value))
    return schema


@dataclass(frozen=True, slots=True)
class TrainerRunLauncher:
    """Runs each registry training as a trainer job under ``runs_dir`` (one folder per run id)."""

    runs_dir: Path
    launcher: Launcher
    timeout_seconds: float = 3600.0
    model_store: RegistryModelStore | None = None  # None: the artifact is the run's local folder (file://)

    async def train(self, request: TrainingRequest) -> TrainingResult:
        schema = design_schema(request)
        job_dir = self.runs_dir / request.run_id
        job_dir.mkdir(parents=True, exist_ok=False)  # a run id is new: nothing of another run is ever reused
        TrainerJob(
            run_id=request.run_id,
            event_id=f"registry:{request.experiment}:{request.model_id}",
            dataset=DatasetSource(path=request.training_path),
            artifact_name=ARTIFACT_NAME,
            timeout_seconds=self.timeout_seconds,
            test_dataset=DatasetSource(path=request.test_path),
        ).write(job_dir)
        (job_dir / DESIGN_SCHEMA_FILE).write_bytes(schema.SerializeToString())
        outcome = await self.launcher.run(job_dir, schema)
        result = RunResult.read(job_dir) if (job_dir / RESULT_FILE).is_file() else None
        if outcome.verdict is not LaunchVerdict.SUCCEEDED or result is None or not result.succeeded:
            errors = "; ".join(result.errors) if result is not None and result.errors else outcome.detail
            raise LaunchError(errors or f"the training run failed ({outcome.verdict.value})")
        trained = result_of(job_dir / OUTPUT_DIR, result)
        if self.model_store is None or trained.artifact is None:
            return trained
        stored = await self.model_store.put(job_dir / OUTPUT_DIR, request, trained.artifact)
        return dataclasses.replace(trained, artifact=stored)


def result_of(output: Path, result: RunResult) -> TrainingResult:
    """What the registry keeps of a finished run: from result.json and the run's metadata.json."""
    metadata: dict[str, Any] = json.loads((output / METADATA_FILE).read_text())
    artifact = metadata["artifact"]
    if artifact["sha256"] != result.artifact_sha256:  # the run's two reports disagree: publish neither
        raise LaunchError(
            f"the run reported two sha256 sums for its artifact: {result.artifact_sha256}, {artifact['sha256']}"
        )
    versions = metadata.get("framework_versions", {})
    return TrainingResult(
        evaluation_metrics=dict(result.metrics),
        fitted_parameters=dict(metadata.get("fitted_parameters", {})),
        artifact=TrainedArtifact(
            url=output.resolve().as_uri(),
            sha256=result.artifact_sha256,
            name=str(artifact["name"]),
            size_bytes=int(artifact["size_bytes"]),
        ),
        task=str(metadata.get("task")),
        classes=[str(label) for label in metadata.get("classes", [])],
        framework="scikit-learn",
        framework_version=str(versions.get("scikit-learn", "")) or None,
    )
