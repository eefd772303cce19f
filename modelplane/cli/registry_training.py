"""The registry's TrainingLauncher over the trainer's own run (trainer/run): a registry model becomes a design
schema and a job folder, run by the trainer's local launcher as a child process (its deadline, memory limit and
process group), exactly as a training event's run is. It lives here, at the composition root, because the registry
may not import the trainer.

- The split is the registry's: the job's ``dataset`` is the split's training half and ``test_dataset`` its test
  half, so the model is fitted and scored on exactly the rows the split's statistics describe.
- The task comes from the experiment's ``outcomeType``: a number type (double, float, long, int, integer, number)
  is regression, anything else classification (multiclass, which takes two classes as well).
- The algorithm and its hyper-parameters are the catalogue's (modelplane/spec/training_algorithms.py, which the
  registry checked the request against already): names as people write them ("decision tree" is decision_tree),
  the seed's numbers as text ("maxBins": "3") read as numbers.
- The run's folder (under the registry's state directory) is the version's artifact: the trainer writes the model
  and what MLServer needs to serve it there, so its ``file://`` URL is what a local scheduler's agent loads; with a
  model store (``--s3-*``) the folder is uploaded (registry_model_store.py) and its ``s3://`` URL is the artifact's,
  what an agent on any host loads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from generated.mlops.training.v1 import training_pb2
from modelplane.cli.registry_model_store import RegistryModelStore
from modelplane.spec.training_algorithms import CLASSIFIERS, REGRESSORS, algorithm_name, hyper_parameter, is_regression
from registry.ports import LaunchError, TrainedArtifact, TrainingRequest, TrainingResult
from trainer.launchers.base import Launcher, LaunchVerdict
from trainer.run.jobs import DESIGN_SCHEMA_FILE, METADATA_FILE, OUTPUT_DIR, RESULT_FILE, DatasetSource, RunResult
from trainer.run.jobs import TrainingJob as TrainerJob

ARTIFACT_NAME: Final = "model.joblib"


class DesignError(LaunchError):
    """The model cannot be described to the trainer (an unknown algorithm, no outcome)."""


def design_schema(request: TrainingRequest) -> training_pb2.ModelDesignSchema:
    """The trainer's ModelDesignSchema for ``request``; DesignError when it cannot be one."""
    if not request.outcome:
        raise DesignError(f"experiment {request.experiment} has no outcome: PUT one to say what to predict")
    if not request.features:
        raise DesignError("the model has no features to train on")
    name = algorithm_name(request.algorithm)
    regression = is_regression(request.outcome_type)
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
