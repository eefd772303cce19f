"""What the registry asks of the world, as ports the composition root (modelplane/cli) fills in: computing a split
(over registry/data), launching a training run (the trainer), deploying a model and splitting the traffic of a
stable name between two deployed models, and following what the scheduler serves (the scheduler). A registry
without one answers 503 for the requests that need it and never pretends: no port, no state change.

Each port raises its Error with a message for the model's or split's status (``reason``)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SplitRequest:
    split_id: str
    experiment: str
    srcpath: str  # as the experiment names it; the maker resolves it (registry/data/sources.py) when it reads
    kind: str  # "random" or "first"
    percent: float  # of the rows that go to training
    seed: int | None  # for "random": the same seed, the same split
    directives: list[str]
    outcome: str | None
    output_dir: Path  # where trainingPath and testPath are written


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """What the registry keeps of a dataset it read (seed 001): its format, sample count and sha256 (a dataset's
    version is the sha256 of its bytes: the same srcpath with other bytes is another version)."""

    srcpath: str  # as the experiment names it
    sha256: str
    format: str  # "csv", "parquet", "txt" (image-classification list), "xml" (detection annotations)
    sample_count: int
    size_bytes: int
    columns: list[str] = field(default_factory=list)  # tables: the columns as read (before directives)
    label_counts: dict[str, int] | None = None  # TXT: images per label; XML: objects per class


@dataclass(frozen=True, slots=True)
class SplitOutcome:
    training_path: str
    test_path: str
    schema: dict[str, Any]
    stats: list[dict[str, Any]]  # seed 002's per-field stats, as JSON
    features: list[str]  # the fields a model trains on (all but the outcome)
    dataset: DatasetRecord | None = None  # the dataset the split was made of, registered with the split
    seed: int | None = None  # the seed a random split used (chosen when none was given): the split can be made again


class SplitError(Exception):
    """The split could not be made (a dataset that cannot be read, a directive that fails on the data)."""


class SplitMaker(Protocol):
    async def make_split(self, request: SplitRequest) -> SplitOutcome: ...


@dataclass(frozen=True, slots=True)
class TrainingRequest:
    run_id: str  # the registry's id of the run, unique: the launcher names its run (and its folder) by it
    experiment: str
    model_id: str
    model_name: str
    algorithm: str
    hyperparameters: dict[str, Any]
    features: list[str]
    outcome: str | None
    outcome_type: str | None
    training_path: str
    test_path: str


@dataclass(frozen=True, slots=True)
class TrainedArtifact:
    """Where a trained model is (seed 001's manifest): ``url`` the folder it is served from (LoadModel's uri, the
    manifest's download URL), ``sha256`` of the artifact file ``name`` in it."""

    url: str
    sha256: str
    name: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class TrainingResult:
    """What a finished run reports (ModelService.record_training_result)."""

    evaluation_metrics: dict[str, float | None] = field(default_factory=dict)
    fitted_parameters: dict[str, Any] = field(default_factory=dict)
    artifact: TrainedArtifact | None = None
    task: str | None = None  # "binary_classification", "multiclass_classification", "regression"
    classes: list[str] = field(default_factory=list)  # a classifier's labels, in its output order
    framework: str | None = None  # e.g. "scikit-learn"
    framework_version: str | None = None


class LaunchError(Exception):
    """The training run could not be started, or failed; the message says why (the model's ``reason``)."""


class TrainingLauncher(Protocol):
    async def train(self, request: TrainingRequest) -> TrainingResult:
        """Run the training to its end: its result, or LaunchError naming why it failed. Cancelling the call
        stops the run."""
        ...


@dataclass(frozen=True, slots=True)
class DeployRequest:
    experiment: str
    model_id: str
    model_name: str
    training_run: str | None
    version: int  # the registered version deployed (the model's newest)
    artifact_url: str  # its folder (TrainedArtifact.url)
    # The name to serve it under; None: the model's own (<experiment>-<model id>). An alias gives the
    # experiment's stable name here (registry/serving_names.py).
    serving_name: str | None = None


class DeployError(Exception):
    """The model could not be deployed (the scheduler refused it)."""


class Deployer(Protocol):
    async def deploy(self, request: DeployRequest) -> str:
        """Deploy and wait until it serves: the name it is served under (DeployError when it cannot be)."""
        ...


@dataclass(frozen=True, slots=True)
class CanarySplit:
    """Traffic to ``stable_name`` split: ``percent`` % to ``candidate``, the rest to the model served under
    ``stable_name`` itself (Seldon's convention: an experiment named like its default model takes that model's
    traffic, so clients keep calling ``stable_name``)."""

    stable_name: str
    candidate: str
    percent: int  # 1-99


class TrafficError(Exception):
    """The scheduler refused or failed a traffic change; the message says why."""


class TrafficRouter(Protocol):
    """Each call converges: asked twice, the second finds it done and succeeds (a promotion cut short by a restart
    is completed by asking again)."""

    async def split(self, split: CanarySplit) -> None:
        """Start (or re-weight) the split and wait until the gateways route by it."""
        ...

    async def unsplit(self, stable_name: str) -> None:
        """Stop the split: all traffic to ``stable_name``'s own model again. No split: nothing to do."""
        ...

    async def unload(self, serving_name: str) -> None:
        """Stop serving ``serving_name``. Not served: nothing to do."""
        ...


class ServingState(StrEnum):
    """What the scheduler says of a name the registry deployed (GET .../models/{id}'s ``serving.state``)."""

    AVAILABLE = "Available"  # serves requests
    PROGRESSING = "Progressing"  # being loaded, or waiting for replicas
    FAILED = "Failed"  # the scheduler's reason says why
    NOT_SERVED = "NotServed"  # unloaded, terminated, or not known to the scheduler at all
    UNKNOWN = (
        "Unknown"  # the registry cannot tell now (the scheduler unreachable): never the last state shown as current
    )


@dataclass(frozen=True, slots=True)
class ServingReport:
    name: str  # the scheduler's model name
    state: ServingState
    reason: str = ""


class ServingSink(Protocol):
    """Where a ServingFollower puts what it learns (registry/service/serving.py keeps it in the database)."""

    async def followed(self) -> set[str]:
        """The names the registry has deployed: only these are recorded."""
        ...

    async def record(self, reports: Sequence[ServingReport], *, not_served: Collection[str] = ()) -> None:
        """Record ``reports``, and the names in ``not_served`` as not served (followed names a complete picture of
        the scheduler did not hold)."""
        ...

    async def unknown(self, reason: str) -> None:
        """The scheduler cannot be followed now: every followed name's state is unknown, for ``reason``."""
        ...


class ServingFollower(Protocol):
    async def follow(self, sink: ServingSink, stop: asyncio.Event) -> None:
        """Follow the scheduler's model statuses into ``sink`` until ``stop``, reconnecting when it goes away."""
        ...
