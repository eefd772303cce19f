"""``modelplane up``: the all-in-one stack as a process, with the sample model, from start to Ctrl-C.

The tests marked ``servers`` start a real MLServer (through the agent inside ``up``) and train the sample
with the MLServer venv's Python. Every process is stopped by PID: ``up`` is in tests.support.processes.STARTED,
and whatever an ``up`` left of its MLServer (found by its state dir) is killed after each test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.edges.v2_grpc_codec import decode_infer_response, encode_infer_request
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.support.iris_sample import train_iris_sample
from tests.support.metrics_reading import sample_sum, scrape_text
from tests.support.modelplane_up import Up, assert_stops_cleanly, server_processes, start_up
from tests.support.processes import run_modelplane, stop_all_started

AVAILABLE_TIMEOUT = 120


@dataclass
class Sample:
    folder: Path
    manifest: Path
    request: dict[str, Any]
    expected: list[int]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The up state dir; afterwards any process left under it is killed by PID (a failed test must not
    leave an MLServer running)."""
    path = tmp_path / "up"
    yield path
    stop_all_started()  # up first (SIGTERM: it stops its MLServer itself), then whatever is still left
    for pid in server_processes(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """The iris sample, trained once with the MLServer venv's Python."""
    folder = tmp_path_factory.mktemp("iris")
    printed = train_iris_sample(folder)
    return Sample(folder, folder / "model.yaml", printed["request"], printed["expected"])


def load_and_wait(up: Up, sample: Sample) -> None:
    loaded = run_modelplane("model", "load", "-f", str(sample.manifest), "--scheduler", up.listen)
    assert loaded.returncode == 0, loaded.stderr
    assert "model iris accepted" in loaded.stdout
    wait_available(up)


def wait_available(up: Up) -> None:
    watched = run_modelplane(
        "model",
        "status",
        "iris",
        "--watch",
        "--wait-timeout",
        str(AVAILABLE_TIMEOUT),
        "--scheduler",
        up.listen,
        timeout=AVAILABLE_TIMEOUT + 30,
    )
    assert watched.returncode == 0, (watched.stdout, watched.stderr, up.stderr())
    assert watched.stdout.strip().splitlines()[-1] == "model iris is ModelAvailable"


def assert_predicts(up: Up, sample: Sample) -> None:
    """Through the gateway by hand (it waits for the route, which arrives a moment after ModelAvailable), then
    with `modelplane model infer`, which goes through the same gateway."""
    assert_predicts_through_the_gateway(up, sample)
    inferred = run_modelplane(
        "model", "infer", "iris", "--data", json.dumps(sample.request), "--gateway", up.addresses["gateway"], timeout=60
    )
    assert inferred.returncode == 0, inferred.stderr
    answer = json.loads(inferred.stdout)
    assert answer["model_name"] == "iris"
    [output] = answer["outputs"]
    assert output["data"] == sample.expected


def assert_predicts_through_the_gateway(up: Up, sample: Sample) -> None:
    url = f"http://{up.addresses['gateway']}/v2/models/iris/infer"
    request = urllib.request.Request(url, data=json.dumps(sample.request).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    deadline = time.monotonic() + 60  # the gateway's route arrives a moment after ModelAvailable
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback URL
                answer = json.load(response)
            break
        except urllib.error.HTTPError as error:
            if error.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert answer["model_name"] == "iris"
    assert answer["outputs"][0]["data"] == sample.expected


def assert_predicts_through_the_gateways_grpc(up: Up, sample: Sample) -> None:
    """The gateway's V2 gRPC edge is served too (after the REST check: the route is in by then)."""
    with grpc.insecure_channel(up.addresses["gateway_grpc"]) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(encode_infer_request("iris", None, sample.request), timeout=60)
    assert decode_infer_response(answer)["outputs"][0]["data"] == sample.expected


@pytest.mark.servers
@pytest.mark.timeout(900)
def test_up_serves_the_sample_and_stops_on_ctrl_c(tmp_path: Path, state_dir: Path, sample: Sample) -> None:
    up = start_up(tmp_path, state_dir, "up")
    assert set(up.addresses) == {
        "listen",
        "agent_listen",
        "http",
        "grpc",
        "gateway",
        "gateway_grpc",
        "registry",
        "dashboard",
        "metrics",
    }
    assert all(address.startswith("127.0.0.1:") for address in up.addresses.values())
    printed = up.stdout()
    assert "modelplane is up; Ctrl-C stops it" in printed
    assert f"scheduler    {up.listen} (Scheduler API)" in printed
    # Zero configuration on loopback, and it says so.
    assert "auth         off: everything listens on loopback only" in printed

    assert f"metrics      http://{up.addresses['metrics']}/metrics (scheduler)" in printed

    load_and_wait(up, sample)
    assert_predicts(up, sample)
    assert f"{up.addresses['gateway_grpc']} (V2 gRPC)" in printed
    assert_predicts_through_the_gateways_grpc(up, sample)
    gateway_metrics = f"http://{up.addresses['gateway']}/metrics"
    answered_before = sample_sum(scrape_text(gateway_metrics), "modelplane_gateway_requests_total", name="iris")
    assert_predicts_through_the_gateway(up, sample)
    answered = sample_sum(scrape_text(gateway_metrics), "modelplane_gateway_requests_total", name="iris", code="200")
    assert answered == answered_before + 1
    scheduler_metrics = scrape_text(f"http://{up.addresses['metrics']}/metrics")
    assert sample_sum(scheduler_metrics, "modelplane_scheduler_models", state="AVAILABLE") == 1
    assert sample_sum(scheduler_metrics, "modelplane_scheduler_agent_sessions", server="mlserver") == 1
    agent_metrics = scrape_text(f"http://{up.addresses['http']}/metrics")
    assert sample_sum(agent_metrics, "modelmesh_instance_models_total") == 1
    servers = run_modelplane("server", "status", "--scheduler", up.listen)
    assert servers.returncode == 0, servers.stderr
    assert servers.stdout.startswith("mlserver")
    assert "loaded model replicas 1" in servers.stdout

    assert_stops_cleanly(up)
    gone = run_modelplane("model", "status", "--scheduler", up.listen, "--timeout", "5")
    assert gone.returncode == 1
    assert "cannot reach the scheduler" in gone.stderr
    # The load is in the stack's audit log, where `modelplane audit` reads it (up has no access check: anonymous).
    audited = run_modelplane("audit", f"--audit-log={state_dir / 'scheduler' / 'audit.log'}", "--output=json")
    assert audited.returncode == 0, audited.stderr
    lines = [json.loads(line) for line in audited.stdout.splitlines()]
    assert [(line["rpc"].rsplit("/", 1)[-1], line["code"], line["identity"]) for line in lines][:1] == [
        ("LoadModel", "OK", "")
    ]
    assert lines[0]["resource"]["name"] == "iris"


@pytest.mark.servers
@pytest.mark.timeout(900)
def test_a_second_up_restores_the_model(tmp_path: Path, state_dir: Path, sample: Sample) -> None:
    first = start_up(tmp_path, state_dir, "first")
    load_and_wait(first, sample)
    assert_stops_cleanly(first)

    # Same state dir: the scheduler remembers the model and places it again on the new agent's MLServer,
    # which loads it from the sample's local folder. Nothing is loaded by hand this time.
    second = start_up(tmp_path, state_dir, "second")
    wait_available(second)
    assert_predicts(second, sample)
    status = run_modelplane("model", "status", "iris", "--scheduler", second.listen)
    assert status.returncode == 0, status.stderr
    assert "ModelAvailable" in status.stdout
    assert_stops_cleanly(second)


@pytest.mark.parametrize(
    ("flag", "address"),
    [
        ("--listen", "10.1.2.3:9004"),
        ("--agent-listen", "0.0.0.0:0"),
        ("--proxy-http", "192.168.1.1:9100"),
        ("--proxy-grpc", "[2001:db8::1]:9500"),
        ("--registry-listen", "0.0.0.0:9010"),
    ],
)
def test_up_listens_on_loopback_only(tmp_path: Path, flag: str, address: str) -> None:
    state_dir, ready_file = tmp_path / "up", tmp_path / "up.json"
    result = run_modelplane("up", "--state-dir", str(state_dir), "--ready-file", str(ready_file), flag, address)
    assert result.returncode == 2
    assert f"argument {flag}: {address}: `modelplane up` listens on loopback addresses only" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything started: no state dir, no ready file, nothing running under it.
    assert not state_dir.exists()
    assert not ready_file.exists()
    assert result.stdout == ""
    assert not server_processes(state_dir)
