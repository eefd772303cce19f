"""``modelplane up`` with its model registry: the registry's REST API on a loopback address up prints and writes to
its ready file, its database in up's state dir (what it was told survives a restart of up), stopped with the
rest on Ctrl-C; ``--no-registry`` leaves it out. Training and deploying through it: tests/e2e/test_registry_demo.py.

A real ``modelplane up`` (scheduler, agent, MLServer, gateway, registry), stopped by PID; whatever it left under
its state dir is killed after each test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.modelplane_up import Up, assert_stops_cleanly, server_processes, start_up
from tests.support.processes import run_modelplane, stop_all_started
from tests.support.registry_process import RegistryProcess

EXPERIMENT = {"srcpath": "houses.csv", "outcome": "price", "outcomeType": "double", "description": "house prices"}


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "up"
    yield path
    stop_all_started()
    for pid in server_processes(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def registry_of(up: Up) -> RegistryProcess:
    """A client of up's registry (tests/support/registry_process.py's, over its REST API)."""
    return RegistryProcess(up.process, up.addresses["registry"], up.state_dir / "registry", up.stderr_path)


def refuses_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.servers
@pytest.mark.timeout(900)
def test_up_serves_the_registry_from_its_state_dir_and_stops_it(tmp_path: Path, state_dir: Path) -> None:
    up = start_up(tmp_path, state_dir, "first")
    address = up.addresses["registry"]
    assert address.startswith("127.0.0.1:")
    assert f"registry     http://{address} (REST: /experiments, /openapi.json" in up.stdout()
    assert f"datasets from {state_dir / 'registry' / 'datasets'}" in up.stdout()
    registry = registry_of(up)

    assert registry.call("GET", "/experiments").body == []
    put = registry.call("PUT", "/experiments/houses", EXPERIMENT)
    assert put.status == 201, put.body
    assert registry.call("GET", "/openapi.json").body["info"]["title"] == "modelplane registry"
    # Its client command reaches it too, at the address up printed.
    listed = run_modelplane("registry", "experiments", "list", "--output=json", f"--registry=http://{address}")
    assert listed.returncode == 0, listed.stderr
    assert [experiment["name"] for experiment in json.loads(listed.stdout)] == ["houses"]
    # Deploys go to up's own scheduler: a model that was never trained is refused by the lifecycle, not by a
    # missing scheduler (503).
    model = registry.call("POST", "/experiments/houses/models", {"name": "untrained"})
    assert model.status == 201, model.body
    deploy = registry.call("POST", f"/experiments/houses/models/{model.body['id']}/deploy")
    assert deploy.status == 409, deploy.body

    assert_stops_cleanly(up)
    assert refuses_connections(address)
    assert (state_dir / "registry" / "registry.db").is_file()

    # The same state dir: the registry's database is up's, and what it was told is still there.
    second = start_up(tmp_path, state_dir, "second")
    got = registry_of(second).call("GET", "/experiments/houses")
    assert got.status == 200, got.body
    assert {key: got.body[key] for key in EXPERIMENT} == EXPERIMENT
    assert_stops_cleanly(second)


@pytest.mark.servers
@pytest.mark.timeout(900)
def test_up_without_its_registry(tmp_path: Path, state_dir: Path) -> None:
    up = start_up(tmp_path, state_dir, "up", "--no-registry")
    assert "registry" not in up.addresses
    assert "registry " not in up.stdout()
    assert "modelplane is up; Ctrl-C stops it" in up.stdout()
    assert_stops_cleanly(up)
    assert not (state_dir / "registry").exists()


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_a_registry_port_in_use_stops_up_with_the_way_out(tmp_path: Path, state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_modelplane(
            "up",
            f"--state-dir={state_dir}",
            *(
                f"--{flag}=127.0.0.1:0"
                for flag in ("listen", "agent-listen", "proxy-http", "proxy-grpc", "gateway", "metrics-listen")
            ),
            f"--registry-listen={address}",
            timeout=300,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on {address}" in result.stderr
    assert "(--registry-listen: another address; --no-registry: no registry)" in result.stderr
    assert "Traceback" not in result.stderr
    assert "modelplane is up" not in result.stdout
    assert not server_processes(state_dir)  # what it had started is stopped
