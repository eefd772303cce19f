"""The resource commands where something must become ready: ``modelplane up`` (scheduler, agent, a real MLServer,
gateway) and the iris sample; one manifest of two models, a pipeline and an experiment, loaded with
``modelplane load -f``, waited for with ``pipeline status -w`` and ``experiment status -w``, the model's V2 metadata
read through the gateway with ``model metadata``, and everything unloaded with ``modelplane unload -f``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.iris_sample import train_iris_sample
from tests.support.modelplane_up import Up, assert_stops_cleanly, server_processes, start_up
from tests.support.processes import run_modelplane, stop_all_started

pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]
WAIT = 180  # seconds: a hang guard for a loaded machine, not a performance bound


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The up state dir; afterwards any process left under it is killed by PID."""
    path = tmp_path / "up"
    yield path
    stop_all_started()
    for pid in server_processes(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def manifest_of(sample: Path) -> str:
    """Two models of the same artifact, a one-step pipeline on the first, an experiment over both."""
    [model] = [d for d in yaml.safe_load_all((sample / "model.yaml").read_text()) if d]
    first = {**model, "metadata": {"name": "iris"}}
    second = {**model, "metadata": {"name": "iris2"}}
    pipeline = {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "single"},
        "spec": {"steps": [{"name": "iris"}], "output": {"steps": ["iris"]}},
    }
    experiment = {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "ab"},
        "spec": {"default": "iris", "candidates": [{"name": "iris", "weight": 50}, {"name": "iris2", "weight": 50}]},
    }
    return yaml.safe_dump_all([experiment, pipeline, first, second], sort_keys=False)


def cli(up: Up, *args: str) -> str:
    scheduler = () if args[:2] == ("model", "metadata") else ("--scheduler", up.listen)  # metadata: the gateway's
    result = run_modelplane(*args, *scheduler, timeout=WAIT + 30)
    assert result.returncode == 0, (args, result.stdout, result.stderr, up.stderr()[-3000:])
    return result.stdout


def test_a_manifest_becomes_ready_and_the_gateway_serves_its_metadata(tmp_path: Path, state_dir: Path) -> None:
    sample = tmp_path / "iris"
    train_iris_sample(sample)
    manifest = tmp_path / "everything.yaml"
    manifest.write_text(manifest_of(sample))
    up = start_up(tmp_path, state_dir, "up")

    assert cli(up, "load", "-f", str(manifest)).splitlines() == [
        "model iris accepted",
        "model iris2 accepted",
        "pipeline single accepted",
        "experiment ab started",
    ]
    waited = cli(up, "pipeline", "status", "single", "-w", "--wait-timeout", str(WAIT))
    assert waited.splitlines()[-1] == "pipeline single is PipelineReady"
    waited = cli(up, "experiment", "status", "ab", "-w", "--wait-timeout", str(WAIT))
    assert waited.splitlines()[-1] == "experiment ab is active"

    status = cli(up, "status", "-f", str(manifest)).splitlines()
    states = {tuple(line.split()[:2]): line.split()[2] for line in status[1:]}
    assert states == {
        ("Model", "iris"): "ModelAvailable",
        ("Model", "iris2"): "ModelAvailable",
        ("Pipeline", "single"): "PipelineReady",
        ("Experiment", "ab"): "Active",
    }
    listed = cli(up, "model", "list", "-o", "json")
    assert {(m["name"], m["state"], m["available"]) for m in json.loads(listed)} == {
        ("iris", "ModelAvailable", 1),
        ("iris2", "ModelAvailable", 1),
    }
    [server] = json.loads(cli(up, "server", "list", "-o", "json"))
    assert server["name"] == "mlserver"
    assert server["loadedModelReplicas"] == 2

    gateway = up.addresses["gateway"]
    metadata = json.loads(cli(up, "model", "metadata", "iris", "--gateway", gateway, "-o", "json"))
    # The serving replica's own answer, as the gateway passes it on (the sample declares no tensors).
    assert metadata["name"] == "iris", metadata
    assert {"inputs", "outputs"} <= set(metadata)
    table = cli(up, "model", "metadata", "iris", "--gateway", gateway).splitlines()
    assert table[0] == "model     iris"
    assert "no inputs" in table
    unknown = run_modelplane("model", "metadata", "nosuch", "--gateway", gateway)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith(f"modelplane: error: model 'nosuch' not found at the gateway {gateway}")

    assert cli(up, "unload", "-f", str(manifest)).splitlines() == [
        "experiment ab stopped",
        "pipeline single is being unloaded",
        "model iris2 is being unloaded",
        "model iris is being unloaded",
    ]
    assert_stops_cleanly(up)
