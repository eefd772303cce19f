"""``modelplane up --trainer-config FILE``: the trainer embedded in the all-in-one stack. One training event
becomes a model trained by a local run, stored in S3, deployed to up's own scheduler and served by up's
MLServer, answering through up's gateway; Ctrl-C stops it all. Real Tansu, Redis, SeaweedFS and MLServer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.artifacts.storage_config import secret_env_name
from modelplane.spec.names import model_name_for
from tests.support.kafka_broker import KafkaBroker, free_port, produce
from tests.support.modelplane_up import assert_stops_cleanly, server_processes, start_up
from tests.support.processes import MODELPLANE, STARTED, run_modelplane
from tests.support.real_components import SECRET_KEY, S3Server
from tests.support.redis_server import RedisServer
from tests.support.trainer_stack import (
    SUCCESS,
    Stack,
    event,
    headers_of,
    put_schema,
    stack_for,
    status_of,
    statuses_for,
)
from tests.support.training_schemas import iris_designed, write_iris_csv

pytest_plugins = ["tests.support.real_components", "tests.support.kafka_broker", "tests.support.redis_server"]


@pytest.fixture
async def stack(kafka_broker: KafkaBroker, redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Stack:
    return await stack_for(kafka_broker, redis_server, s3_server, tmp_path)


def trainer_config(stack: Stack, path: Path) -> Path:
    """The test's trainer settings as up's [trainer] table: every --flag=value as flag = "value"."""
    lines = ["[trainer]"]
    for flag in stack.argv("--auto-deploy", "--deploy-storage-secret=modelstore"):
        key, _, value = flag.removeprefix("--").partition("=")
        lines.append(f"{key.replace('-', '_')} = {json.dumps(value or True)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 -- a loopback URL the test made
        body: dict[str, object] = json.loads(response.read())
        return body


def get_json_list(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 -- a loopback URL the test made
        body: list[dict[str, Any]] = json.loads(response.read())
        return body


def post_json(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310 -- loopback
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer: dict[str, object] = json.loads(response.read())
        return answer


@pytest.mark.servers
@pytest.mark.timeout(900)
async def test_up_with_a_trainer_trains_deploys_and_serves(stack: Stack, tmp_path: Path) -> None:
    write_iris_csv(stack.datasets / "iris.csv")
    schema = iris_designed()
    schema.design_token.value = "iris-up"
    await put_schema(stack, "designed", schema)
    config = trainer_config(stack, tmp_path / "trainer.toml")
    env = {
        "MODELPLANE_TRAINER_S3_SECRET_KEY": SECRET_KEY,
        secret_env_name("modelstore"): stack.s3.rclone_ini(),  # what the agent fetches trained models with
        "NO_PROXY": "127.0.0.1",
    }
    up = await asyncio.to_thread(start_up, tmp_path, tmp_path / "state", "up", f"--trainer-config={config}", env=env)
    trainer = up.addresses["trainer"]
    assert trainer.startswith("http://127.0.0.1:")
    assert f"trainer      {trainer}" in up.stdout()
    async with asyncio.timeout(60):  # the trainer joins its consumer group before the event is sent
        while True:
            if (await asyncio.to_thread(get_json, f"{trainer}/healthz"))["consuming"] is True:
                break
            await asyncio.sleep(0.2)

    await produce(stack.kafka.bootstrap, stack.training_topic, [event("up-1", "designed")])
    [record] = (await statuses_for(stack, ["up-1"], timeout=300))["up-1"]
    assert status_of(record).status == SUCCESS, status_of(record).errors
    name = model_name_for("iris-up")
    assert headers_of(record)["modelplane-deploy"] == f"loaded {name}"

    # The model reaches up's MLServer and answers through up's gateway, from the raw columns.
    async with asyncio.timeout(240):
        while True:
            shown = await asyncio.to_thread(run_modelplane, "model", "status", name, "--scheduler", up.listen)
            if "ModelAvailable" in shown.stdout:
                break
            await asyncio.sleep(0.5)
    # Two flowers as raw measurements (a setosa, a virginica): the served design computes its inputs itself.
    rows = {
        "petal_length": [1.4, 5.4],
        "petal_width": [0.2, 2.1],
        "sepal_width": [3.5, 3.1],
        "sepal_length": [5.1, 6.9],
    }
    request: dict[str, object] = {
        "inputs": [{"name": column, "shape": [2], "datatype": "FP64", "data": data} for column, data in rows.items()]
    }
    answer = await asyncio.to_thread(post_json, f"http://{up.addresses['gateway']}/v2/models/{name}/infer", request)
    outputs = {output["name"]: output for output in answer["outputs"]}  # type: ignore[attr-defined]
    assert outputs["predict"]["data"] == [0, 1]  # is_virginica
    assert set(outputs) == {"predict", "score", "flag"}

    # up's registry sees every model up's trainer makes: the run is registered from the trainer's status topic,
    # as a version of the design's model in the experiment named after the design schema.
    registry = f"http://{up.addresses['registry']}"
    async with asyncio.timeout(120):
        while True:
            experiments = await asyncio.to_thread(get_json_list, f"{registry}/experiments")
            if experiments:
                break
            await asyncio.sleep(0.5)
    assert [experiment["name"] for experiment in experiments] == ["iris-up"]  # the design schema's id
    [model] = await asyncio.to_thread(get_json_list, f"{registry}/experiments/iris-up/models")
    status = await asyncio.to_thread(get_json, f"{registry}/experiments/iris-up/models/{model['id']}/status")
    assert status["status"] == "TRAINED"
    [version] = await asyncio.to_thread(get_json_list, f"{registry}/experiments/iris-up/models/{model['id']}/versions")
    assert version["lineage"]["eventId"] == "up-1"
    assert version["manifest"]["downloadURL"].startswith("s3://")

    runs = await asyncio.to_thread(run_modelplane, "training", "status", f"--trainer={trainer}")
    assert runs.returncode == 0, runs.stderr
    [line] = [line for line in runs.stdout.splitlines() if "event=up-1 " in line]
    assert line.split()[1] == "succeeded"
    assert server_processes(up.state_dir)
    await asyncio.to_thread(assert_stops_cleanly, up)


def test_a_trainer_config_with_an_exposed_status_api_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "trainer.toml"
    config.write_text('[trainer]\nstatus_listen = "0.0.0.0:9600"\ninsecure = true\n')
    result = run_modelplane("up", "--state-dir", str(tmp_path / "up"), "--trainer-config", str(config))
    assert result.returncode == 2
    assert "status_listen 0.0.0.0:9600 is not a loopback address" in result.stderr
    assert not (tmp_path / "up").exists()
    missing = run_modelplane("up", "--state-dir", str(tmp_path / "up"), "--trainer-config", str(tmp_path / "no.toml"))
    assert missing.returncode == 2
    assert "no such file" in missing.stderr


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_ctrl_c_while_the_trainer_waits_for_redis_stops_everything_cleanly(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the trainer waits for Redis
    config = tmp_path / "trainer.toml"
    config.write_text(f'[trainer]\nredis_url = "redis://:hunter2@127.0.0.1:{port}/0"\nstatus_listen = "127.0.0.1:0"\n')
    state = tmp_path / "state"
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    argv = [*MODELPLANE, "up", f"--state-dir={state}", f"--trainer-config={config}"]
    ports = (
        "listen",
        "agent-listen",
        "proxy-http",
        "proxy-grpc",
        "gateway",
        "gateway-grpc",
        "registry-listen",
        "dashboard-listen",
        "metrics-listen",
    )
    argv += [f"--{flag}=127.0.0.1:0" for flag in ports]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr)
    STARTED.append(process)
    deadline = time.monotonic() + 300
    while "waiting for Redis" not in out.read_text():
        assert process.poll() is None, err.read_text()
        assert time.monotonic() < deadline, err.read_text()
        time.sleep(0.1)
    assert f"waiting for Redis at redis://***@127.0.0.1:{port}/0" in out.read_text()  # never the password
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(120) == 0, err.read_text()
    printed = out.read_text()
    assert "modelplane is up" not in printed
    assert printed.rstrip().endswith("modelplane is down")
    assert "hunter2" not in printed + err.read_text()
    assert not server_processes(state)
