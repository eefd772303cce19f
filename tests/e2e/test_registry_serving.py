"""The registry follows what the scheduler serves of what it deployed (issue 15: "the model's state follows the
scheduler's status stream"), with real components: a scheduler and an agent with a real MLServer as subprocesses,
and the registry's own trainer run. A model deployed through the registry and then unloaded at the scheduler
directly is shown as not served; with the scheduler stopped its serving state is unknown (never the last one shown
as current); restarted on the same addresses (its state folder kept) it serves the model again and the registry says
so; the production alias's stable name is followed too, and a killed replica shows. The lifecycle state stays
DEPLOYED throughout (registry/lifecycle.py says why). Stopped by PID; every wait is a hang guard for a loaded
machine, not a timing check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_processes import kill_agent
from tests.support.cluster_fixtures import SCHEDULER_FLAGS, Cluster
from tests.support.processes import run_modelplane, start_scheduler, stop_process
from tests.support.registry_process import RegistryProcess, start_registry, wait_for_status
from tests.support.training_schemas import write_iris_csv

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]  # a hang guard only

IRIS = {"srcpath": "iris.csv", "outcome": "species", "outcomeType": "string"}
WAIT = 180.0


def serving_of(registry: RegistryProcess, model_id: str) -> dict[str, Any]:
    """GET .../status's ``serving`` (until_serving checks GET .../models/{id} shows the same once it settles)."""
    status = registry.call("GET", f"/experiments/iris/models/{model_id}/status")
    assert status.status == 200, status.body
    assert status.body["status"] == "DEPLOYED", status.body  # the lifecycle does not move with the scheduler
    return dict(status.body["serving"])


def until_serving(registry: RegistryProcess, model_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        serving = serving_of(registry, model_id)
        if serving["state"] == state:
            # The model's own document shows the same record (settled: nothing changes it between the two reads).
            shown = registry.call("GET", f"/experiments/iris/models/{model_id}").body["serving"]
            assert (shown["name"], shown["state"]) == (serving["name"], serving["state"]), (shown, serving)
            return serving
        if time.monotonic() > deadline:
            raise AssertionError(f"serving still {serving} after {WAIT:g}s, not {state}:\n{registry.log()[-3000:]}")
        time.sleep(0.1)


def until_serving_not(registry: RegistryProcess, model_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        serving = serving_of(registry, model_id)
        if serving["state"] != state:
            return serving
        if time.monotonic() > deadline:
            raise AssertionError(f"serving still {serving} after {WAIT:g}s")
        time.sleep(0.1)


def until_alias_serving(registry: RegistryProcess, model_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        got = registry.call("GET", f"/experiments/iris/models/{model_id}").body
        if got.get("aliasServing") and got["aliasServing"][0]["state"] == state:
            return dict(got["aliasServing"][0])
        if time.monotonic() > deadline:
            raise AssertionError(f"aliasServing still {got.get('aliasServing')} after {WAIT:g}s, not {state}")
        time.sleep(0.1)


def deployed_model(registry: RegistryProcess) -> tuple[str, str]:
    """An iris model split, trained (the registry's trainer run) and deployed: its id and serving name."""
    assert registry.call("PUT", "/experiments/iris", IRIS).status == 201
    split = registry.call("POST", "/experiments/iris/splits", {"type": "random", "parameters": {"percent": "80"}})
    assert split.status == 201, split.body
    done = wait_for_status(registry, f"/experiments/iris/splits/{split.body['id']}/status", {"COMPLETE", "FAILED"})
    assert done["status"] == "COMPLETE", done
    model_id = str(registry.call("POST", "/experiments/iris/models", {"split": split.body["id"]}).body["id"])
    body = {"algorithm": "logistic_regression", "hyperparameters": {"max_iter": 500}}
    assert registry.call("POST", f"/experiments/iris/models/{model_id}/train", body).status == 202
    trained = wait_for_status(registry, f"/experiments/iris/models/{model_id}/status", {"TRAINED", "TRAINING_FAILED"})
    assert trained == {"id": model_id, "status": "TRAINED"}  # nothing deployed: no serving shown
    deployed = registry.call("POST", f"/experiments/iris/models/{model_id}/deploy")
    assert deployed.status == 200, deployed.body
    return model_id, str(deployed.body["servingName"])


def test_the_registry_shows_what_the_scheduler_serves_of_a_deployed_model(cluster: Cluster, tmp_path: Path) -> None:
    scheduler = cluster.start_scheduler()
    [agent] = cluster.start_agents(cluster.agent(0))
    (tmp_path / "datasets").mkdir()
    write_iris_csv(tmp_path / "datasets" / "iris.csv")
    registry = start_registry(
        tmp_path / "registry", f"--datasets-root={tmp_path / 'datasets'}", f"--scheduler={scheduler.listen}"
    )
    try:
        model_id, name = deployed_model(registry)
        available = until_serving(registry, model_id, "Available")
        assert available["name"] == name
        assert isinstance(available["seen"], int)
        got = registry.call("GET", f"/experiments/iris/models/{model_id}").body
        assert (got["status"], got["serving"]["name"]) == ("DEPLOYED", name)

        # Unloaded at the scheduler, behind the registry's back: the registry says it is not served.
        unloaded = run_modelplane("model", "unload", name, f"--scheduler={scheduler.listen}", timeout=60)
        assert unloaded.returncode == 0, unloaded.stderr
        until_serving(registry, model_id, "NotServed")
        # Deployed again from DEPLOYED (the seed's rule): served again.
        again = registry.call("POST", f"/experiments/iris/models/{model_id}/deploy")
        assert (again.status, again.body["status"]) == (200, "DEPLOYED"), again.body
        until_serving(registry, model_id, "Available")

        # The scheduler stopped: unknown, saying why; never the last Available as if current.
        stop_process(scheduler.process)
        unknown = until_serving(registry, model_id, "Unknown")
        assert "cannot follow the scheduler" in unknown["reason"], unknown

        # Restarted on the same addresses with its state: the agent comes back, so does the model, so does the
        # registry's record of it (the follower reconnected on its own).
        addresses = (f"--listen={scheduler.listen}", f"--agent-listen={scheduler.agent_listen}")
        cluster.scheduler = start_scheduler(tmp_path / "scheduler", *SCHEDULER_FLAGS, *addresses)
        until_serving(registry, model_id, "Available")

        # The production alias serves it under the experiment's stable name too: followed as well.
        moved = registry.call("PUT", "/experiments/iris/aliases/production", {"model": model_id})
        assert moved.status == 200, moved.body
        assert until_alias_serving(registry, model_id, "Available")["name"] == "iris"
        unloaded = run_modelplane("model", "unload", "iris", f"--scheduler={scheduler.listen}", timeout=60)
        assert unloaded.returncode == 0, unloaded.stderr
        until_alias_serving(registry, model_id, "NotServed")
        assert serving_of(registry, model_id)["state"] == "Available"  # its own name is still served

        # Its only replica gone (the agent and its MLServer killed): no longer Available, with the scheduler's reason.
        kill_agent(agent)
        gone = until_serving_not(registry, model_id, "Available")
        assert gone["state"] in {"Progressing", "Failed"}, gone
        assert gone["reason"], gone
        assert "Traceback" not in registry.log()
    finally:
        stop_process(registry.process)
