# ruff: noqa: S106 -- tokens here are identifiers of design schemas, not passwords
"""The trainer service against real components: Tansu (Kafka), Redis and SeaweedFS (S3), with real runs
(``python -m trainer.run.run_job`` through the LocalProcessLauncher).

Each test has its own topics, consumer group, Redis key prefix and bucket, so they share the session's servers.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import joblib
import numpy as np
import pytest
import redis.asyncio as aioredis
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import servers.designed_model
from agent.artifacts.storage_config import secret_env_name
from generated.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from generated.mlops.training.v1 import training_pb2
from modelplane import logs
from modelplane.spec.names import model_name_for
from tests.support.agent_processes import AgentSpec, start_agents, stop_agent
from tests.support.kafka_broker import KafkaBroker, consume_until, free_port, produce
from tests.support.processes import start_scheduler, stop_process
from tests.support.real_components import S3Server
from tests.support.redis_server import RedisServer, start_redis, stop_redis
from tests.support.trainer_stack import (
    FAILURE,
    SUCCESS,
    Stack,
    by_event,
    event,
    get_json,
    headers_of,
    put_schema,
    stack_for,
    status_of,
    statuses_for,
)
from tests.support.training_schemas import IRIS_CLASSES, IRIS_FEATURES, iris_multiclass_logistic
from trainer import process
from trainer.launchers.base import LaunchOutcome, LaunchVerdict
from trainer.launchers.local import LocalLauncherSettings, LocalProcessLauncher
from trainer.launchers.warm import WarmProcessLauncher
from trainer.run.jobs import RunResult, TrainingJob
from trainer.run.serving_bundle import ENTRY_MODULE, RUNTIME_PACKAGE, SETTINGS_FILE
from trainer.service.consumer import TrainerService
from trainer.service.design_store import DesignStore
from trainer.service.run_registry import ClaimKind, FinalRecord, RunRegistry
from trainer.settings import TrainerSettings

pytest_plugins = ["tests.support.real_components", "tests.support.kafka_broker", "tests.support.redis_server"]

pytestmark = pytest.mark.timeout(300)


def real_launcher(**overrides: Any) -> LocalProcessLauncher:
    return LocalProcessLauncher(LocalLauncherSettings(**overrides))


@asynccontextmanager
async def running_trainer(
    settings: TrainerSettings, launcher: Any = None, *, from_settings: bool = False
) -> AsyncIterator[TrainerService]:
    """The trainer in this process; with ``from_settings`` it builds its launcher from ``settings`` itself."""
    stop = asyncio.Event()
    started: asyncio.Future[TrainerService] = asyncio.get_running_loop().create_future()
    chosen = None if from_settings else launcher or real_launcher()
    task = asyncio.create_task(process.run(settings, stop, launcher=chosen, started=started))
    waiting: set[asyncio.Future[Any]] = {task, started}
    await asyncio.wait(waiting, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped it
        raise AssertionError("the trainer returned before it started")
    service = started.result()
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


# ---------------------------------------------------------------------------------------------------------- tests


async def test_event_becomes_a_stored_model_a_success_status_and_an_inference_store_message(stack: Stack) -> None:
    schema = iris_multiclass_logistic(design_token="iris-lr")
    schema.output_store.inference_store = True
    await put_schema(stack, "iris-key", schema)
    ready = stack.work / "ready.json"
    async with running_trainer(stack.settings(f"--ready-file={ready}")) as service:
        await produce(stack.kafka.bootstrap, stack.training_topic, [event("happy-1", "iris-key")])
        statuses = await statuses_for(stack, ["happy-1"])
        [record] = statuses["happy-1"]
        status = status_of(record)
        headers = headers_of(record)
        assert status.status == SUCCESS, status.errors
        assert status.design_schema_id == "iris-lr"
        assert record.key == b"iris-lr"
        metrics = json.loads(headers["modelplane-metrics"])
        assert metrics["accuracy"] > 0.8
        run_id = headers["modelplane-run-id"]
        model_uri = headers["modelplane-model-uri"]
        assert model_uri == f"s3://{stack.bucket}/models/iris-lr/1/{run_id}"

        # The model store holds the artifact (its SHA-256 as published), metadata and what lets MLServer serve
        # the design (model-settings.json and the runtime package); the artifact predicts.
        objects = sorted(o.object_name for o in stack.s3.client.list_objects(stack.bucket, recursive=True))
        folder = model_uri.removeprefix(f"s3://{stack.bucket}/")
        runtime = sorted(path.name for path in Path(servers.designed_model.__file__).parent.glob("*.py"))
        assert objects == sorted(
            [
                f"{folder}/metadata.json",
                f"{folder}/retail_forecasting_model.pkl",
                f"{folder}/{SETTINGS_FILE}",
                f"{folder}/{ENTRY_MODULE}.py",
                *(f"{folder}/{RUNTIME_PACKAGE}/{name}" for name in runtime),
            ]
        )
        artifact = stack.s3.client.get_object(stack.bucket, f"{folder}/retail_forecasting_model.pkl").read()
        model = joblib.load(io.BytesIO(artifact))
        predictions = model.predict(np.array([[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]]))
        assert list(predictions) == ["setosa", "virginica"]
        metadata = json.loads(stack.s3.client.get_object(stack.bucket, f"{folder}/metadata.json").read())
        assert metadata["features"] == list(IRIS_FEATURES)
        assert metadata["classes"] == list(IRIS_CLASSES)
        assert headers["modelplane-artifact-sha256"] == metadata["artifact"]["sha256"]

        # The inference store is told where the trained model is.
        [inference] = await consume_until(stack.kafka.bootstrap, stack.inference_topic, lambda got: len(got) >= 1)
        message = training_pb2.InferenceStoreMessage()
        message.ParseFromString(inference.value)
        assert message.model_id == "iris-lr"
        assert message.dataset_artifact_url == model_uri
        assert headers_of(inference)["modelplane-event-id"] == "happy-1"

        # The run's progress is queryable, through the status API the ready file names.
        address = json.loads(ready.read_text())["status"]
        code, body = await get_json(f"http://{address}/runs/{run_id}")
        assert code == 200
        assert body["state"] == "succeeded"
        assert [state for state, _ in body["history"]] == ["queued", "fetching", "training", "uploading", "succeeded"]
        assert body["metrics"] == metrics
        assert body["model_uri"] == model_uri
        code, listing = await get_json(f"http://{address}/runs")
        assert [run["run_id"] for run in listing["runs"]] == [run_id]
        code, _ = await get_json(f"http://{address}/runs?limit=0")
        assert code == 400
        code, missing = await get_json(f"http://{address}/runs/no-such-run")
        assert code == 404
        assert "no-such-run" in missing["error"]
        code, health = await get_json(f"http://{address}/healthz")
        assert health["consuming"] is True
        assert health["instance"] == service.instance


class _JsonLines(logging.Handler):
    """Each record as modelplane's JSON formatter writes it, formatted as it is logged (as the process's handler)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(logs.JsonFormatter("trainer").format(record)))


async def test_a_runs_lines_name_its_run_and_its_event(stack: Stack) -> None:
    """Every line the trainer logs while it runs an event names the run (``run_id``) and the event (``request_id``),
    by the keys every process uses (modelplane/logs.py)."""
    await put_schema(stack, "iris-key", iris_multiclass_logistic(design_token="iris-logged"))
    collected, root = _JsonLines(), logging.getLogger()
    level = root.level
    root.addHandler(collected)
    root.setLevel(logging.INFO)
    try:
        async with running_trainer(stack.settings()):
            await produce(stack.kafka.bootstrap, stack.training_topic, [event("logged-1", "iris-key")])
            [record] = (await statuses_for(stack, ["logged-1"]))["logged-1"]
    finally:
        root.removeHandler(collected)
        root.setLevel(level)
    run_id = headers_of(record)["modelplane-run-id"]
    # The launcher's line says nothing of the run itself: the context does.
    [started] = [line for line in collected.lines if line["message"] == "training run started"]
    assert (started.get("run_id"), started.get("request_id")) == (run_id, "logged-1"), started


async def test_each_failure_is_a_failure_status_naming_its_cause_and_consuming_goes_on(stack: Stack) -> None:
    bad_algorithm = iris_multiclass_logistic(design_token="no-algorithm")
    bad_algorithm.algorithm.ClearField("classification")
    await put_schema(
        stack, "columns", iris_multiclass_logistic(design_token="columns", features=("sepal_length", "nope"))
    )
    await put_schema(stack, "algorithm", bad_algorithm)
    await put_schema(stack, "hyper", iris_multiclass_logistic(design_token="hyper", hyper={"bogus_param": 1}))
    # The JSON form of a schema is accepted too.
    await put_schema(stack, "good", iris_multiclass_logistic(design_token="good"), as_json=True)
    async with running_trainer(stack.settings("--max-concurrent-runs=4")):
        await produce(
            stack.kafka.bootstrap,
            stack.training_topic,
            [
                event("missing-key", "never-stored"),
                b"\xff\x00 definitely not protobuf",
                event("columns", "columns"),
                event("algorithm", "algorithm"),
                event("hyper", "hyper"),
                event("no-dataset", "good", dataset_path="absent.csv"),
                event("escape", "good", dataset_path="../../etc/passwd"),
                event("good", "good"),
            ],
        )
        statuses = await statuses_for(
            stack,
            ["missing-key", "columns", "algorithm", "hyper", "no-dataset", "escape", "good"],
            timeout=200,
        )
        errors = {event_id: list(status_of(records[0]).errors) for event_id, records in statuses.items()}
        for event_id, records in statuses.items():
            assert len(records) == 1, event_id
            expected = SUCCESS if event_id == "good" else FAILURE
            assert status_of(records[0]).status == expected, (event_id, errors[event_id])
        assert errors["missing-key"] == [f"design schema {stack.design_key('never-stored')} not found in Redis"]
        assert "nope" in errors["columns"][0]
        assert "no algorithm set" in errors["algorithm"][0]
        assert "bogus_param" in errors["hyper"][0]
        assert "absent.csv" in " ".join(errors["no-dataset"])
        assert "contains '..'" in errors["escape"][0]
        # The undecodable record is named by its position, and says why.
        poison = [event_id for event_id in statuses if event_id.startswith(f"kafka:{stack.training_topic}:0:")]
        assert len(poison) == 1
        assert errors[poison[0]][0].startswith("undecodable event")


async def test_a_crashing_run_is_retried_then_reported_and_a_flaky_one_succeeds(stack: Stack) -> None:
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="crashy"))
    crashes = ("-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    crashing = real_launcher(command=(*LocalLauncherSettings().command[:1], *crashes))
    async with running_trainer(stack.settings("--max-attempts=2"), crashing):
        await produce(stack.kafka.bootstrap, stack.training_topic, [event("crash", "tok")])
        [record] = (await statuses_for(stack, ["crash"]))["crash"]
        status = status_of(record)
        assert status.status == FAILURE
        assert status.errors[0].startswith("gave up after 2 attempts; last: exit 137 (killed by SIGKILL)")
        assert headers_of(record)["modelplane-attempts"] == "2"

    class FlakyOnce:
        """Fails the first attempt as an infrastructure problem would, then runs the real job."""

        def __init__(self) -> None:
            self.calls = 0
            self.real = real_launcher()

        async def run(self, job_dir: Path, schema: training_pb2.ModelDesignSchema) -> LaunchOutcome:
            self.calls += 1
            if self.calls == 1:
                return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, 137, "node went away")
            return await self.real.run(job_dir, schema)

    flaky = FlakyOnce()
    async with running_trainer(stack.settings("--max-attempts=2"), flaky):
        await produce(stack.kafka.bootstrap, stack.training_topic, [event("flaky", "tok")])
        [record] = (await statuses_for(stack, ["flaky"]))["flaky"]
        assert status_of(record).status == SUCCESS
        assert headers_of(record)["modelplane-attempts"] == "2"
        assert flaky.calls == 2


async def test_a_duplicate_event_is_trained_once(stack: Stack) -> None:
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="dup"))

    class Counting:
        def __init__(self) -> None:
            self.calls = 0
            self.real = real_launcher()

        async def run(self, job_dir: Path, schema: training_pb2.ModelDesignSchema) -> LaunchOutcome:
            self.calls += 1
            return await self.real.run(job_dir, schema)

    counting = Counting()
    async with running_trainer(stack.settings("--max-concurrent-runs=3"), counting):
        # Twice at once (the second finds the first's claim and waits for its outcome), then once more later.
        await produce(stack.kafka.bootstrap, stack.training_topic, [event("dup", "tok"), event("dup", "tok")])
        await statuses_for(stack, ["dup"])
        await produce(stack.kafka.bootstrap, stack.training_topic, [event("dup", "tok"), event("marker", "absent")])
        statuses = await statuses_for(stack, ["dup", "marker"])
        assert [status_of(record).status for record in statuses["dup"]] == [SUCCESS]
        assert counting.calls == 1
    objects = [o.object_name for o in stack.s3.client.list_objects(stack.bucket, recursive=True)]
    assert len({name.split("/")[3] for name in objects}) == 1  # one run folder (models/dup/1/<run>/...)
    assert sum(name.endswith("retail_forecasting_model.pkl") for name in objects) == 1


async def test_embedded_schema_and_json_event_train_without_redis_schema(stack: Stack) -> None:
    schema = iris_multiclass_logistic(design_token="embedded")
    message = training_pb2.ModelTrainingEvent(event_id="json-1", design_schema=schema, dataset_path="iris.csv")
    async with running_trainer(stack.settings()):
        await produce(
            stack.kafka.bootstrap,
            stack.training_topic,
            [json_format.MessageToJson(message).encode()],
            headers=[("content-type", b"application/json")],
        )
        [record] = (await statuses_for(stack, ["json-1"]))["json-1"]
        assert status_of(record).status == SUCCESS
        assert status_of(record).design_schema_id == "embedded"


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=12))
def test_random_bytes_on_the_topic_are_each_answered_and_consuming_goes_on(
    values: list[bytes],
    kafka_broker: KafkaBroker,
    redis_server: RedisServer,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async def scenario() -> None:
        stack = await stack_for(kafka_broker, redis_server, s3_server, tmp_path_factory.mktemp("random"))
        async with running_trainer(stack.settings("--max-concurrent-runs=4")):
            await produce(stack.kafka.bootstrap, stack.training_topic, values)
            # A sentinel that fails fast (no schema stored) and comes after all of them.
            await produce(stack.kafka.bootstrap, stack.training_topic, [event("sentinel", "absent")])
            records = await consume_until(
                stack.kafka.bootstrap,
                stack.status_topic,
                lambda got: "sentinel" in by_event(got) and len(got) >= len(values) + 1,
                timeout=120,
            )
        assert len(records) == len(values) + 1
        assert all(status_of(record).status == FAILURE for record in records)
        assert all(status_of(record).errors for record in records)

    asyncio.run(scenario())


async def test_the_run_registry_lease_is_exclusive_renewable_releasable_and_final(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    registry = RunRegistry(client, redis_server.unique_prefix(), lease_seconds=30, ttl_seconds=60)
    try:
        assert (await registry.claim("ev", "a/run-1")).kind is ClaimKind.CLAIMED
        held = await registry.claim("ev", "b/run-2")
        assert (held.kind, held.holder) == (ClaimKind.HELD, "a/run-1")
        assert await registry.renew("ev", "a/run-1")
        assert not await registry.renew("ev", "b/run-2")  # only the holder renews
        await registry.release("ev", "b/run-2")  # not the holder: the lease stays
        assert (await registry.claim("ev", "b/run-2")).kind is ClaimKind.HELD
        await registry.release("ev", "a/run-1")  # the holder: the next claim gets it at once
        assert (await registry.claim("ev", "b/run-2")).kind is ClaimKind.CLAIMED
        await registry.finish("ev", "b/run-2", FinalRecord("run-2", True, [], "s3://m/x", 1.0))
        done = await registry.claim("ev", "c/run-3")
        assert done.kind is ClaimKind.DONE
        assert done.final == FinalRecord("run-2", True, [], "s3://m/x", 1.0)
        assert not await registry.renew("ev", "b/run-2")  # finishing dropped the lease
    finally:
        await client.aclose()


async def test_redis_away_makes_the_schema_fetch_wait_not_fail(tmp_path: Path) -> None:
    # The schema is in the snapshot the server loads before it answers: written after it started, a retry could
    # reach the server first and find no key (DesignNotFoundError), a race in the test, not in the store.
    seed = start_redis(tmp_path)
    try:
        writer = aioredis.Redis.from_url(seed.url)
        await writer.set("design:later", iris_multiclass_logistic(design_token="later").SerializeToString())
        await writer.save()  # dump.rdb in tmp_path, which the server below loads at start-up
        await writer.aclose()
    finally:
        stop_redis(seed)
    port = free_port()
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    store = DesignStore(client, "design:{token}", backoff_initial=0.05, backoff_max=0.2)
    try:
        fetching = asyncio.create_task(store.fetch("later"))
        await asyncio.sleep(1.0)
        assert not fetching.done()  # still retrying: an outage is not the event's fault
        server = start_redis(tmp_path, port=port)
        try:
            schema = await asyncio.wait_for(fetching, 20)
            assert schema.design_token.value == "later"
        finally:
            stop_redis(server)
    finally:
        await client.aclose()


async def test_auto_deploy_loads_the_trained_model_on_the_scheduler(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "scheduler").mkdir()
    scheduler = await asyncio.to_thread(start_scheduler, tmp_path / "scheduler")
    try:
        await put_schema(stack, "tok", iris_multiclass_logistic(design_token="Iris_Deploy"))
        async with running_trainer(stack.settings(f"--scheduler={scheduler.listen}")):
            await produce(
                stack.kafka.bootstrap,
                stack.training_topic,
                [event("deploy-me", "tok")],
                headers=[("modelplane-auto-deploy", b"true")],
            )
            [record] = (await statuses_for(stack, ["deploy-me"]))["deploy-me"]
        headers = headers_of(record)
        name = model_name_for("Iris_Deploy")
        assert headers["modelplane-deploy"] == f"loaded {name}"
        async with grpc.aio.insecure_channel(scheduler.listen) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            request = scheduler_pb2.ModelStatusRequest(
                subscriberName="test", model=scheduler_pb2.ModelReference(name=name)
            )
            [status] = [response async for response in stub.ModelStatus(request, timeout=10)]
        assert status.versions[-1].modelDefn.modelSpec.uri == headers["modelplane-model-uri"]
        assert list(status.versions[-1].modelDefn.modelSpec.requirements) == ["sklearn"]
    finally:
        stop_process(scheduler.process)


class QuickLauncher:
    """Writes a small artifact, its metadata and a successful result at once, and records how many runs were in
    flight together: for tests about the service's scheduling rather than about training."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.running = 0
        self.most = 0

    async def run(self, job_dir: Path, schema: training_pb2.ModelDesignSchema) -> LaunchOutcome:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.running -= 1
        job = TrainingJob.read(job_dir)
        output = job_dir / "output"
        output.mkdir()
        artifact = f"model of {schema.design_token.value}".encode()
        (output / job.artifact_name).write_bytes(artifact)
        digest = hashlib.sha256(artifact).hexdigest()
        (output / "metadata.json").write_text(json.dumps({"artifact": {"sha256": digest}}))
        RunResult(succeeded=True, metrics={"accuracy": 1.0}, artifact_sha256=digest).write(job_dir)
        return LaunchOutcome(LaunchVerdict.SUCCEEDED, 0, "exit 0")


async def test_runs_are_concurrent_up_to_the_limit_and_all_finish(stack: Stack) -> None:
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="many"))
    launcher = QuickLauncher(hold=0.5)
    async with running_trainer(stack.settings("--max-concurrent-runs=2"), launcher):
        ids = [f"many-{index}" for index in range(6)]
        await produce(stack.kafka.bootstrap, stack.training_topic, [event(event_id, "tok") for event_id in ids])
        statuses = await statuses_for(stack, ids)
    assert {event_id: [status_of(r).status for r in statuses[event_id]] for event_id in ids} == {
        event_id: [SUCCESS] for event_id in ids
    }
    assert launcher.most == 2


async def test_an_artifact_that_does_not_match_its_reported_sha256_is_not_stored(stack: Stack) -> None:
    class Tampering(QuickLauncher):
        async def run(self, job_dir: Path, schema: training_pb2.ModelDesignSchema) -> LaunchOutcome:
            outcome = await super().run(job_dir, schema)
            (job_dir / "output" / TrainingJob.read(job_dir).artifact_name).write_bytes(b"swapped")
            return outcome

    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="tampered"))
    async with running_trainer(stack.settings(), Tampering(hold=0)):
        await produce(stack.kafka.bootstrap, stack.training_topic, [event("tampered", "tok")])
        [record] = (await statuses_for(stack, ["tampered"]))["tampered"]
    assert status_of(record).status == FAILURE
    assert "has SHA-256" in status_of(record).errors[0]
    assert not stack.s3.client.bucket_exists(stack.bucket) or not list(stack.s3.client.list_objects(stack.bucket))


@pytest.mark.servers
@pytest.mark.timeout(600)
async def test_auto_deploy_serves_the_trained_model_from_mlserver(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Event -> trained -> stored in S3 -> LoadModel -> an agent fetches it with the model store's secret ->
    MLServer serves it -> its predictions equal the artifact's own."""
    (tmp_path / "scheduler").mkdir()
    scheduler = await asyncio.to_thread(start_scheduler, tmp_path / "scheduler", "--sync-grace=1")
    # The agent reads the model store's S3 settings from the secret the trainer names in each LoadModel.
    monkeypatch.setenv(secret_env_name("modelstore"), stack.s3.rclone_ini())
    [agent] = await asyncio.to_thread(start_agents, scheduler.agent_listen, [AgentSpec(tmp_path / "agent0")])
    try:
        await put_schema(stack, "served", iris_multiclass_logistic(design_token="iris-served"))
        argv = (f"--scheduler={scheduler.listen}", "--auto-deploy", "--deploy-storage-secret=modelstore")
        async with running_trainer(stack.settings(*argv)):
            await produce(stack.kafka.bootstrap, stack.training_topic, [event("serve-me", "served")])
            [record] = (await statuses_for(stack, ["serve-me"]))["serve-me"]
        assert status_of(record).status == SUCCESS, status_of(record).errors
        name = model_name_for("iris-served")
        assert headers_of(record)["modelplane-deploy"] == f"loaded {name}"

        async with grpc.aio.insecure_channel(scheduler.listen) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            subscription = stub.SubscribeModelStatus(scheduler_pb2.ModelSubscriptionRequest(subscriberName="t"))
            async with asyncio.timeout(180):
                async for status in subscription:
                    if status.modelName == name and status.versions:
                        state = status.versions[-1].state
                        assert state.state != scheduler_pb2.ModelStatus.ModelFailed, state.reason
                        if state.state == scheduler_pb2.ModelStatus.ModelAvailable:
                            break
            subscription.cancel()

        bucket, _, prefix = headers_of(record)["modelplane-model-uri"].removeprefix("s3://").partition("/")
        artifact = stack.s3.client.get_object(bucket, f"{prefix.rstrip('/')}/retail_forecasting_model.pkl").read()
        model = joblib.load(io.BytesIO(artifact))
        flowers = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1], [5.9, 3.0, 4.2, 1.5]]
        request = {"inputs": [{"name": "predict", "shape": [3, 4], "datatype": "FP64", "data": flowers}]}
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.post(f"{agent.proxy_url}/v2/models/{name}/infer", json=request) as response,
        ):
            answer = await response.json()
            assert response.status == 200, answer
        assert answer["outputs"][0]["data"] == model.predict(np.array(flowers)).tolist()
    finally:
        stop_agent(agent)
        stop_process(scheduler.process)


async def test_the_warm_launcher_trains_events_through_the_whole_flow(stack: Stack) -> None:
    """--launcher=warm: runs forked from a fork server that has scikit-learn imported already."""
    await put_schema(stack, "warm-key", iris_multiclass_logistic(design_token="iris-warm"))
    async with running_trainer(stack.settings("--launcher=warm"), from_settings=True) as service:
        await produce(stack.kafka.bootstrap, stack.training_topic, [event(f"warm-{n}", "warm-key") for n in range(3)])
        statuses = await statuses_for(stack, [f"warm-{n}" for n in range(3)])
        assert isinstance(service.launcher, WarmProcessLauncher)  # the settings chose it, and it ran the events
        assert service.launcher.server_pid is not None
    for n in range(3):
        [record] = statuses[f"warm-{n}"]
        assert status_of(record).status == SUCCESS, status_of(record).errors
        assert json.loads(headers_of(record)["modelplane-metrics"])["accuracy"] > 0.8
    uri = headers_of(statuses["warm-0"][0])["modelplane-model-uri"]
    folder = uri.removeprefix(f"s3://{stack.bucket}/")
    artifact = stack.s3.client.get_object(stack.bucket, f"{folder}/retail_forecasting_model.pkl").read()
    assert list(joblib.load(io.BytesIO(artifact)).predict(np.array([[5.1, 3.5, 1.4, 0.2]]))) == ["setosa"]
