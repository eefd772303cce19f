"""A trainer test's slice of the session's Tansu, Redis and SeaweedFS (its own topics, consumer group, key prefix
and bucket) and the settings of a trainer on it; design schemas put into Redis, training events, the statuses read
back; a trainer started as a process. Used by the trainer, up and e2e tests."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from google.protobuf import json_format

from generated.mlops.training.v1 import training_pb2
from tests.support.kafka_broker import KafkaBroker, Record, consume_until, create_topics
from tests.support.processes import STARTED
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, S3Server
from tests.support.redis_server import RedisServer
from tests.support.training_schemas import write_iris_csv
from trainer.settings import TrainerSettings, build_parser, parse_settings

SUCCESS = training_pb2.TRAINING_STATUS_SUCCESS
FAILURE = training_pb2.TRAINING_STATUS_FAILURE


@dataclass
class Stack:
    """One test's slice of the shared servers, and the settings of a trainer that uses it."""

    kafka: KafkaBroker
    redis: RedisServer
    s3: S3Server
    datasets: Path
    work: Path
    training_topic: str
    status_topic: str
    inference_topic: str
    group: str
    prefix: str
    bucket: str

    def argv(self, *extra: str) -> list[str]:
        return [
            f"--kafka-bootstrap={self.kafka.bootstrap}",
            f"--training-topic={self.training_topic}",
            f"--status-topic={self.status_topic}",
            f"--inference-store-topic={self.inference_topic}",
            f"--consumer-group={self.group}",
            "--session-timeout-ms=3000",
            f"--redis-url={self.redis.url}",
            f"--redis-prefix={self.prefix}trainer:",
            f"--design-key-template={self.prefix}design:{{token}}",
            f"--s3-endpoint={self.s3.endpoint.removeprefix('http://')}",
            f"--s3-access-key={ACCESS_KEY}",
            f"--s3-bucket={self.bucket}",
            "--s3-prefix=models",
            f"--work-dir={self.work}",
            f"--datasets-root={self.datasets}",
            "--status-listen=127.0.0.1:0",
            "--retry-backoff=0.1",
            "--lease=3",
            "--shutdown-grace=30",
            *extra,
        ]

    def settings(self, *extra: str) -> TrainerSettings:
        return parse_settings(
            build_parser(argparse.ArgumentParser()),
            self.argv(*extra),
            environ={"MODELPLANE_TRAINER_S3_SECRET_KEY": SECRET_KEY},
        )

    def design_key(self, token: str) -> str:
        return f"{self.prefix}design:{token}"


async def put_schema(
    stack: Stack, token: str, schema: training_pb2.ModelDesignSchema, *, as_json: bool = False
) -> None:
    client = aioredis.Redis.from_url(stack.redis.url)
    try:
        value = json_format.MessageToJson(schema).encode() if as_json else schema.SerializeToString()
        await client.set(stack.design_key(token), value)
    finally:
        await client.aclose()


def event(event_id: str, token: str = "", *, dataset_path: str = "iris.csv", **fields: Any) -> bytes:
    message = training_pb2.ModelTrainingEvent(event_id=event_id, model_key_token=token, **fields)
    if dataset_path and not message.dataset_artifact_url:
        message.dataset_path = dataset_path
    return message.SerializeToString()


def status_of(record: Record) -> training_pb2.ModelTrainingStatus:
    message = training_pb2.ModelTrainingStatus()
    message.ParseFromString(record.value)
    return message


def headers_of(record: Record) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


def by_event(records: Sequence[Record]) -> dict[str, list[Record]]:
    result: dict[str, list[Record]] = {}
    for record in records:
        result.setdefault(headers_of(record).get("modelplane-event-id", ""), []).append(record)
    return result


async def statuses_for(stack: Stack, event_ids: Sequence[str], timeout: float = 120) -> dict[str, list[Record]]:
    """Read the status topic until every event id has a status; returns them grouped by event id."""
    wanted = set(event_ids)
    records = await consume_until(
        stack.kafka.bootstrap, stack.status_topic, lambda got: wanted <= set(by_event(got)), timeout=timeout
    )
    return by_event(records)


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(trust_env=False) as session, session.get(url) as response:
        return response.status, await response.json()


async def stack_for(kafka: KafkaBroker, redis: RedisServer, s3: S3Server, folder: Path) -> Stack:
    datasets = folder / "datasets"
    datasets.mkdir()
    write_iris_csv(datasets / "iris.csv")
    suffix = uuid.uuid4().hex[:10]
    stack = Stack(
        kafka,
        redis,
        s3,
        datasets,
        folder / "work",
        f"training-{suffix}",
        f"status-{suffix}",
        f"inference-{suffix}",
        f"trainer-{suffix}",
        f"t{suffix}:",
        f"models-{suffix}",
    )
    await create_topics(kafka.bootstrap, [stack.training_topic, stack.status_topic, stack.inference_topic])
    return stack


TRAINER = [sys.executable, "-m", "trainer.commands", "trainer"]


def start_trainer(stack: Stack, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start a trainer process; returns it, its status API address and its log, once the API answers."""
    ready = stack.work.parent / f"{name}.json"
    log = stack.work.parent / f"{name}.log"
    environment = {**os.environ, "MODELPLANE_TRAINER_S3_SECRET_KEY": SECRET_KEY, "NO_PROXY": "127.0.0.1"}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*TRAINER, *stack.argv(f"--ready-file={ready}", *extra)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    STARTED.append(process)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(f"trainer exited with {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"trainer not ready:\n{log.read_text()}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    assert info["pid"] == process.pid
    return process, info["status"], log


async def wait_for_run_state(address: str, state: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _, body = await get_json(f"http://{address}/runs")
        matching = [run for run in body["runs"] if run["state"] == state]
        if matching:
            run: dict[str, Any] = matching[0]
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"no run reached {state}: {body}")
        await asyncio.sleep(0.1)
