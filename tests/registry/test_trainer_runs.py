# ruff: noqa: S106 -- design tokens here are identifiers, not passwords
"""Runs the trainer makes from Kafka events, registered by the registry (``--kafka-bootstrap``): real Tansu, Redis
and SeaweedFS, the real trainer for the flow of seed 000, and status records written here for what a broken
producer could send (malformed, huge, wrong types: each skipped with a warning, the consumer moving on; Hypothesis
against the live consumer). Registering is idempotent on redelivery and survives a restart of the registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated.mlops.training.v1 import training_pb2
from modelplane.spec import training_status as spec
from registry.service.trainer_runs import experiment_name_for
from tests.registry.test_registry_s3 import infer, s3_flags
from tests.support.kafka_broker import KafkaBroker, create_topics
from tests.support.processes import stop_process
from tests.support.real_components import S3Server
from tests.support.redis_server import RedisServer
from tests.support.registry_process import RegistryProcess, start_registry
from tests.support.trainer_stack import event as training_event
from tests.support.trainer_stack import headers_of, put_schema, stack_for, start_trainer, statuses_for
from tests.support.training_schemas import iris_multiclass_logistic
from trainer.run.jobs import METADATA_FILE

pytest_plugins = ["tests.support.real_components", "tests.support.kafka_broker", "tests.support.redis_server"]

Headers = list[tuple[str, bytes]]
MAX_STATUS_BYTES = 4096


@dataclass
class Topic:
    kafka: KafkaBroker
    name: str
    group: str

    def flags(self) -> list[str]:
        return [
            f"--kafka-bootstrap={self.kafka.bootstrap}",
            f"--status-topic={self.name}",
            f"--consumer-group={self.group}",
            "--session-timeout-ms=3000",
            f"--max-status-bytes={MAX_STATUS_BYTES}",
        ]


@dataclass(frozen=True)
class StoredFolder:
    """A run's folder as the trainer leaves it in the model store: metadata.json and the artifact."""

    bucket: str
    folder: str
    artifact: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.artifact).hexdigest()


def send(kafka: KafkaBroker, topic: str, records: Sequence[tuple[bytes | None, Headers]]) -> None:
    async def sending() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            for value, headers in records:
                await producer.send_and_wait(topic, value, key=b"design", headers=headers)
        finally:
            await producer.stop()

    asyncio.run(sending())


def stored_folder(s3: S3Server, bucket: str, design: str) -> StoredFolder:
    artifact = f"a model of {design} {uuid.uuid4().hex}".encode()
    folder = StoredFolder(bucket, f"models/{design}/1/run", artifact)
    metadata = {
        "run_id": "run",
        "design_schema": {"design_token": {"value": design}, "version": {"version": "1"}, "metadata": {"name": design}},
        "algorithm": "logistic_regression",
        "task": "multiclass_classification",
        "features": ["a", "b"],
        "target": "species",
        "classes": ["x", "y"],
        "hyper_parameters": {"C": 1.0},
        "fitted_parameters": {"estimator": "LogisticRegression"},
        "dataset": {
            "origin": "/data/iris.csv",
            "format": "csv",
            "size_bytes": 10,
            "sha256": "ab" * 32,
            "stats": {"samples": 150},
        },
        "framework_versions": {"scikit-learn": "1.5"},
        "artifact": {"name": "model.joblib", "sha256": folder.sha256, "size_bytes": len(artifact)},
    }
    s3.put(bucket, f"{folder.folder}/{METADATA_FILE}", json.dumps(metadata).encode())
    s3.put(bucket, f"{folder.folder}/model.joblib", artifact)
    return folder


def report(design: str, run_id: str, folder: StoredFolder, **header_overrides: bytes) -> tuple[bytes, Headers]:
    """A SUCCESS status of ``run_id`` as the trainer publishes it (trainer/service/status_messages.py)."""
    value = training_pb2.ModelTrainingStatus(
        design_schema_id=design, status=training_pb2.TRAINING_STATUS_SUCCESS
    ).SerializeToString()
    uri = f"s3://{folder.bucket}/{folder.folder}"
    headers = {
        "content-type": spec.CONTENT_TYPE.encode(),
        spec.H_EVENT_ID: f"event-{run_id}".encode(),
        spec.H_RUN_ID: run_id.encode(),
        spec.H_ATTEMPTS: b"1",
        spec.H_METRICS: json.dumps({"accuracy": 0.9, "f1": 0.8}).encode(),
        spec.H_MODEL_URI: uri.encode(),
        spec.H_ARTIFACT_URI: f"{uri}/model.joblib".encode(),
        spec.H_ARTIFACT_SHA256: folder.sha256.encode(),
    } | header_overrides
    return value, list(headers.items())


def versions(registry: RegistryProcess, design: str) -> list[dict[str, Any]]:
    experiment = experiment_name_for(design)
    models = registry.call("GET", f"/experiments/{experiment}/models")
    if models.status == 404:
        return []
    assert models.status == 200, models
    found: list[dict[str, Any]] = []
    for model in models.body:
        answer = registry.call("GET", f"/experiments/{experiment}/models/{model['id']}/versions")
        assert answer.status == 200, answer
        found.extend(answer.body)
    return found


def wait_for_versions(registry: RegistryProcess, design: str, count: int, timeout: float = 180) -> list[dict[str, Any]]:
    """The design's versions once there are ``count`` (a hang guard for a loaded machine, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        found = versions(registry, design)
        if len(found) >= count:
            return found
        assert registry.process.poll() is None, registry.log()
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} of {count} versions of {design} after {timeout:g}s:\n{registry.log()}")
        time.sleep(0.2)


def unexpected_failures(log: str) -> list[str]:
    """The consumer's own reports of a bug (a record it could not register, the consumer failing whole)."""
    said = ("it could not be registered", "the consumer of the trainer's runs failed")
    return [line for line in log.splitlines() if any(text in line for text in said)]


@pytest.fixture
def topic(kafka_broker: KafkaBroker) -> Topic:
    suffix = uuid.uuid4().hex[:10]
    name = f"status-{suffix}"
    asyncio.run(create_topics(kafka_broker.bootstrap, [name]))
    return Topic(kafka_broker, name, f"registry-{suffix}")


@pytest.fixture
def models_bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def registry(tmp_path: Path, s3_server: S3Server, topic: Topic, models_bucket: str) -> Iterator[RegistryProcess]:
    running = start_registry(
        tmp_path / "registry", *s3_flags(tmp_path, s3_server.endpoint, models_bucket), *topic.flags()
    )
    try:
        yield running
    finally:
        stop_process(running.process)


@pytest.mark.timeout(600)
def test_records_that_report_no_run_are_skipped_and_a_run_is_registered_once(
    tmp_path: Path, s3_server: S3Server, topic: Topic, models_bucket: str, registry: RegistryProcess
) -> None:
    folder = stored_folder(s3_server, models_bucket, "churn")
    missing = StoredFolder(models_bucket, "models/churn/1/gone", b"never stored")
    elsewhere = stored_folder(s3_server, s3_server.new_bucket(), "churn")
    failure = training_pb2.ModelTrainingStatus(design_schema_id="churn", status=training_pb2.TRAINING_STATUS_FAILURE)
    bad: list[tuple[bytes | None, Headers]] = [
        (b"\xff\xfe not a protobuf message", []),
        (None, []),
        (b"\x0a" + b"x" * (MAX_STATUS_BYTES + 10), []),  # larger than --max-status-bytes
        report("churn", "r-metrics-text", folder, **{spec.H_METRICS: b"not json"}),
        report("churn", "r-metrics-type", folder, **{spec.H_METRICS: b'{"accuracy": "high"}'}),
        report("churn", "r-metrics-list", folder, **{spec.H_METRICS: b"[1, 2]"}),
        report("churn", "r-uri", folder, **{spec.H_MODEL_URI: b"http://example.com/model"}),
        report("churn", "r-dots", folder, **{spec.H_MODEL_URI: f"s3://{models_bucket}/a/../b".encode()}),
        report("churn", "r-sha", folder, **{spec.H_ARTIFACT_SHA256: b"not a sha256"}),
        report("churn", "r-other-sha", folder, **{spec.H_ARTIFACT_SHA256: b"0" * 64}),
        report("churn", "r-utf8", folder, **{spec.H_RUN_ID: b"\xff\xfe"}),
        report("churn", "r-control", folder, **{spec.H_RUN_ID: b"run\x1b[31m"}),
        report("churn", "r-missing", missing),
        report("churn", "r-elsewhere", elsewhere),  # a bucket that is not this registry's model store
        (failure.SerializeToString(), report("churn", "r-failed", folder)[1]),
        (report("", "r-no-design", folder)[0], report("", "r-no-design", folder)[1]),
    ]
    send(topic.kafka, topic.name, [*bad, report("churn", "r-good", folder)])
    [version] = wait_for_versions(registry, "churn", 1)
    assert version["lineage"]["trainingRun"] == "r-good"
    assert version["manifest"]["downloadURL"] == f"s3://{models_bucket}/{folder.folder}"
    assert version["manifest"]["sha256sum"] == folder.sha256
    assert version["evaluationMetrics"] == {"accuracy": 0.9, "f1": 0.8}
    dataset = registry.call("GET", f"/datasets/{version['lineage']['datasetId']}").body
    assert (dataset["srcpath"], dataset["sha256"], dataset["format"], dataset["sampleCount"]) == (
        "/data/iris.csv",
        "ab" * 32,
        "csv",
        150,
    )
    log = registry.log()
    assert log.count("skipped the trainer's status record") == len(bad) - 1, log  # the failure is no record to skip
    assert not unexpected_failures(log), log

    # Redelivered (the same run again), then a new run of the same design: one more version, not two.
    send(topic.kafka, topic.name, [report("churn", "r-good", folder), report("churn", "r-second", folder)])
    found = wait_for_versions(registry, "churn", 2)
    # The redelivered run is known by its id before anything is read from the model store (a whole artifact each).
    assert "run r-good of design churn is registered already" in registry.log(), registry.log()
    assert sorted((item["version"], item["lineage"]["trainingRun"]) for item in found) == [
        (1, "r-good"),
        (2, "r-second"),
    ]

    # A restarted registry (the same database and group) reads on from its committed offsets.
    stop_process(registry.process)
    again = start_registry(
        tmp_path / "registry",
        *s3_flags(tmp_path, s3_server.endpoint, models_bucket),
        *topic.flags(),
        state_dir=registry.state_dir,
    )
    try:
        send(topic.kafka, topic.name, [report("churn", "r-third", folder)])
        found = wait_for_versions(again, "churn", 3)
        assert [item["lineage"]["trainingRun"] for item in sorted(found, key=lambda item: item["version"])] == [
            "r-good",
            "r-second",
            "r-third",
        ]
        assert "skipped the trainer's status record" not in again.log().split("REST API on")[-1]
    finally:
        stop_process(again.process)


@pytest.mark.timeout(600)
def test_a_report_that_arrives_while_s3_is_down_is_registered_once_it_is_back(
    s3_server: S3Server, topic: Topic, models_bucket: str, registry: RegistryProcess
) -> None:
    """The model store away is not the record's fault: it is read again (its offset uncommitted), not skipped."""
    folder = stored_folder(s3_server, models_bucket, "patient")
    with s3_server.stopped():
        send(topic.kafka, topic.name, [report("patient", "r-patient", folder)])
        deadline = time.monotonic() + 120
        while "waits for the model store" not in registry.log():
            assert time.monotonic() < deadline, registry.log()
            time.sleep(0.1)
        assert versions(registry, "patient") == []
    [version] = wait_for_versions(registry, "patient", 1)
    assert version["lineage"]["trainingRun"] == "r-patient"
    assert "skipped the trainer's status record" not in registry.log()


HEADER_NAMES = st.sampled_from(
    [spec.H_EVENT_ID, spec.H_RUN_ID, spec.H_METRICS, spec.H_MODEL_URI, spec.H_ARTIFACT_URI, spec.H_ARTIFACT_SHA256]
) | st.text(max_size=20)
SUCCESS_VALUE = training_pb2.ModelTrainingStatus(
    design_schema_id="noise", status=training_pb2.TRAINING_STATUS_SUCCESS
).SerializeToString()
RECORDS = st.lists(
    st.tuples(
        st.one_of(st.just(SUCCESS_VALUE), st.binary(max_size=600)),
        st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=120)), max_size=8),
    ),
    min_size=1,
    max_size=4,
)


@pytest.mark.timeout(900)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS)
def test_whatever_the_topic_holds_the_consumer_goes_on(
    s3_server: S3Server, topic: Topic, models_bucket: str, registry: RegistryProcess, records: list[Any]
) -> None:
    """Hypothesis against the live consumer: arbitrary records, then a good report, which is registered."""
    folder = stored_folder(s3_server, models_bucket, "sentinel")
    before = len(versions(registry, "sentinel"))
    send(topic.kafka, topic.name, [*records, report("sentinel", uuid.uuid4().hex, folder)])
    wait_for_versions(registry, "sentinel", before + 1)
    assert registry.process.poll() is None
    assert not unexpected_failures(registry.log())


@pytest.mark.timeout(900)
async def test_the_runs_the_trainer_makes_from_events_are_registered_and_deploy(
    tmp_path: Path,
    kafka_broker: KafkaBroker,
    redis_server: RedisServer,
    s3_server: S3Server,
    s3_deploy_target: tuple[str, str],
) -> None:
    """Seed 000's flow: an event in, the real trainer trains, stores in S3 and reports; the registry registers
    each run as a version of the design's model, with the manifest, metrics and lineage the trainer reported; the
    model deploys from the registry like one it trained (a real scheduler and agent fetching it from S3)."""
    scheduler, agent_proxy = s3_deploy_target
    stack = await stack_for(kafka_broker, redis_server, s3_server, tmp_path)
    await put_schema(stack, "iris-key", iris_multiclass_logistic(design_token="iris-design"))
    s3_server.client.make_bucket(stack.bucket)
    trainer, _, _ = await asyncio.to_thread(start_trainer, stack, "trainer")
    flags = [
        *s3_flags(tmp_path, s3_server.endpoint, stack.bucket),
        f"--kafka-bootstrap={kafka_broker.bootstrap}",
        f"--status-topic={stack.status_topic}",
        f"--consumer-group=registry-{stack.group}",
        f"--scheduler={scheduler}",
        "--deploy-storage-secret=modelstore",
    ]
    registry = await asyncio.to_thread(start_registry, tmp_path / "registry", *flags)
    try:
        await send_events(stack.kafka.bootstrap, stack.training_topic, ["event-1", "event-2"])
        statuses = await statuses_for(stack, ["event-1", "event-2"], timeout=300)
        found = await asyncio.to_thread(wait_for_versions, registry, "iris-design", 2)
        [model] = registry.call("GET", "/experiments/iris-design/models").body
        assert (model["status"], model["name"]) == ("TRAINED", "iris-multiclass"), model  # the design's name
        deployed = await asyncio.to_thread(
            registry.call, "POST", f"/experiments/iris-design/models/{model['id']}/deploy"
        )
        assert deployed.status == 200, deployed.body
        flowers = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]]
        answer = await infer(agent_proxy, deployed.body["servingName"], flowers)
        assert answer["outputs"][0]["data"] == ["setosa", "virginica"]
        registry_datasets = {item["id"]: item for item in registry.call("GET", "/datasets").body}
    finally:
        stop_process(registry.process)
        stop_process(trainer)
    dataset_sha256 = hashlib.sha256((stack.datasets / "iris.csv").read_bytes()).hexdigest()
    by_run = {item["lineage"]["trainingRun"]: item for item in found}
    for event_id, [record] in statuses.items():
        headers = headers_of(record)
        version = by_run[headers[spec.H_RUN_ID]]
        assert version["manifest"]["downloadURL"] == headers[spec.H_MODEL_URI]
        assert version["manifest"]["sha256sum"] == headers[spec.H_ARTIFACT_SHA256]
        assert version["evaluationMetrics"] == json.loads(headers[spec.H_METRICS])
        assert version["lineage"]["eventId"] == event_id
        assert version["lineage"]["designSchema"] == "iris-design"
        assert version["lineage"]["datasetSha256"] == dataset_sha256
        dataset = registry_datasets[version["lineage"]["datasetId"]]
        assert (dataset["sha256"], dataset["sampleCount"], dataset["format"]) == (dataset_sha256, 150, "csv")
        assert version["lineage"]["algorithm"] == "multiclass/logistic_regression"  # as the trainer names it
        assert version["metadata"]["labels"] == ["setosa", "versicolor", "virginica"]
        bucket, _, key = headers[spec.H_ARTIFACT_URI].removeprefix("s3://").partition("/")
        stored = s3_server.client.get_object(bucket, key).read()
        assert hashlib.sha256(stored).hexdigest() == version["manifest"]["sha256sum"]
    assert sorted(item["version"] for item in found) == [1, 2]


async def send_events(bootstrap: str, topic: str, event_ids: Sequence[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for event_id in event_ids:
            await producer.send_and_wait(topic, training_event(event_id, "iris-key"))
    finally:
        await producer.stop()


def test_the_registry_and_the_trainer_name_the_run_metadata_file_alike() -> None:
    assert spec.METADATA_FILE == METADATA_FILE
