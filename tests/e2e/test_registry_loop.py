"""The loop of issue 15 with real components: a CSV dataset registered under the datasets root, split 80/20 at
random, two models of different algorithms trained by the trainer's own run, their metrics compared through GET
models, the better one deployed on `modelplane up` (a real scheduler, agent and MLServer) and asked for a
prediction through up's gateway; then a retrained version (a new model of the experiment: the seed's train is 409
once a model is TRAINED) promoted through a canary: traffic to the experiment's one stable name reaches both
versions during the canary, the canary survives a registry killed and restarted, and after --finish only the new
version answers. Stopped by PID; deadlines are hang guards for a loaded machine."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.modelplane_up import Up, assert_stops_cleanly, start_up
from tests.support.processes import run_modelplane, stop_process
from tests.support.registry_process import RegistryProcess, start_registry, wait_for_status
from tests.support.training_schemas import write_iris_csv

IRIS = {"srcpath": "flowers/iris.csv", "outcome": "species", "outcomeType": "string", "description": "iris"}


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 -- a loopback URL the test made
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{url}: {error.code}: {error.read().decode(errors='replace')}") from None


def infer(gateway: str, name: str) -> tuple[int, dict[str, Any]]:
    """A setosa and a virginica sent to model ``name`` through the gateway: (HTTP status, answer)."""
    rows = {
        "sepal_length": [5.1, 6.9],
        "sepal_width": [3.5, 3.1],
        "petal_length": [1.4, 5.4],
        "petal_width": [0.2, 2.1],
    }
    document = {"inputs": [{"name": c, "shape": [2], "datatype": "FP64", "data": d} for c, d in rows.items()]}
    request = urllib.request.Request(
        f"http://{gateway}/v2/models/{name}/infer",
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode(errors="replace")}


def answered_by(gateway: str, name: str, *, any_prediction: bool = False) -> tuple[str, str]:
    """Which model (the scheduler's name) and which of its versions answered a request to ``name``; the answer
    right unless ``any_prediction`` (a one-split stump cannot tell a virginica from a versicolor)."""
    status, answer = infer(gateway, name)
    assert status == 200, answer
    predicted = {output["name"]: output["data"] for output in answer["outputs"]}["predict"]
    assert any_prediction or predicted == ["setosa", "virginica"], answer
    return str(answer["model_name"]), str(answer["model_version"])


def until(condition: Any, what: str, timeout: float = 120.0) -> None:
    """Wait for ``condition()`` (a hang guard for a loaded machine, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {timeout:g}s")
        time.sleep(0.05)


def _trained(registry: RegistryProcess, split_id: str, name: str, algorithm: str, hyper: dict[str, Any]) -> str:
    model_id = str(registry.call("POST", "/experiments/iris/models", {"name": name, "split": split_id}).body["id"])
    started = registry.call(
        "POST", f"/experiments/iris/models/{model_id}/train", {"algorithm": algorithm, "hyperparameters": hyper}
    )
    assert started.status == 202, started.body
    done = wait_for_status(registry, f"/experiments/iris/models/{model_id}/status", {"TRAINED", "TRAINING_FAILED"})
    assert done == {"id": model_id, "status": "TRAINED"}
    return model_id


@pytest.mark.servers
@pytest.mark.timeout(900)
def test_dataset_split_two_models_metrics_deploy_predict(tmp_path: Path) -> None:
    up = start_up(tmp_path, tmp_path / "up", "up", env={"NO_PROXY": "127.0.0.1"})
    registry = None
    try:
        datasets = tmp_path / "datasets"
        (datasets / "flowers").mkdir(parents=True)
        write_iris_csv(datasets / "flowers" / "iris.csv")
        registry = start_registry(tmp_path / "registry", f"--datasets-root={datasets}", f"--scheduler={up.listen}")
        assert registry.call("PUT", "/experiments/iris", IRIS).status == 201
        split = registry.call(
            "POST",
            "/experiments/iris/splits",
            {"type": "random", "parameters": {"percent": "80", "seed": 3}, "directives": ["drop is_virginica"]},
        )
        assert split.status == 201, split.body
        done = wait_for_status(registry, f"/experiments/iris/splits/{split.body['id']}/status", {"COMPLETE", "FAILED"})
        assert done["status"] == "COMPLETE", done
        got = registry.call("GET", f"/experiments/iris/splits/{split.body['id']}").body
        assert got["stats"][0]["field"] == "species"  # the outcome first
        assert got["stats"][0]["numTotal"] == {"train": 120, "test": 30}

        logistic = _trained(registry, split.body["id"], "logistic", "logistic_regression", {"max_iter": 500})
        stump = _trained(registry, split.body["id"], "stump", "decision_tree", {"max_depth": 1})
        models = registry.call("GET", "/experiments/iris/models").body
        accuracy = {model["id"]: model["evaluationMetrics"]["accuracy"] for model in models}
        best = max(accuracy, key=lambda model_id: accuracy[model_id])
        assert best == logistic, accuracy  # a one-split stump cannot tell three species apart
        assert accuracy[stump] < accuracy[logistic]

        # Deploying the stump would be refused by nothing; deploying the better one is the point.
        deployed = registry.call("POST", f"/experiments/iris/models/{best}/deploy")
        assert deployed.status == 200, deployed.body
        assert deployed.body["status"] == "DEPLOYED"
        name = deployed.body["servingName"]
        assert name.endswith(best)
        assert isinstance(deployed.body["deploytime"], int)

        # A setosa and a virginica, as raw columns, through up's gateway to up's MLServer.
        rows = {
            "sepal_length": [5.1, 6.9],
            "sepal_width": [3.5, 3.1],
            "petal_length": [1.4, 5.4],
            "petal_width": [0.2, 2.1],
        }
        request = {"inputs": [{"name": c, "shape": [2], "datatype": "FP64", "data": d} for c, d in rows.items()]}
        answer = post_json(f"http://{up.addresses['gateway']}/v2/models/{name}/infer", request)
        outputs = {output["name"]: output for output in answer["outputs"]}
        assert outputs["predict"]["data"] == ["setosa", "virginica"]

        # Deploying again is the same full-state request: still DEPLOYED, the same name.
        again = registry.call("POST", f"/experiments/iris/models/{best}/deploy")
        assert (again.status, again.body["status"], again.body["servingName"]) == (200, "DEPLOYED", name)
        # The command line's deploy and compare (modelplane/cli/registry_client.py) over the same registry.
        at = f"--registry=http://{registry.listen}"
        cli = run_modelplane("registry", "models", "deploy", "iris", best, at, timeout=400)
        assert cli.returncode == 0, cli.stderr
        assert (json.loads(cli.stdout)["status"], json.loads(cli.stdout)["servingName"]) == ("DEPLOYED", name)
        ranked = run_modelplane("registry", "models", "list", "iris", "--sort=accuracy", "--output=json", at)
        assert ranked.returncode == 0, ranked.stderr
        assert [model["id"] for model in json.loads(ranked.stdout)] == [logistic, stump]
        assert registry.call("POST", f"/experiments/iris/models/{stump}/deploy").status == 200

        registry = _promote_a_retrained_version(
            registry, up, split.body["id"], logistic, [f"--datasets-root={datasets}", f"--scheduler={up.listen}"]
        )
    finally:
        if registry is not None:
            stop_process(registry.process)
        assert_stops_cleanly(up)


def _promote_a_retrained_version(
    registry: RegistryProcess, up: Up, split_id: str, production: str, registry_flags: list[str]
) -> RegistryProcess:
    """The issue's last step: ``production`` (the deployed logistic regression) is served under the experiment's
    stable name; a retrained version (a new model, more iterations) goes through a 30% canary and --finish. Returns
    the registry running at the end (it is killed and restarted mid-canary)."""
    gateway = up.addresses["gateway"]
    at = f"--registry=http://{registry.listen}"
    retrained = _trained(registry, split_id, "logistic", "logistic_regression", {"max_iter": 800})

    moved = run_modelplane("registry", "aliases", "set", "iris", "production", production, at, timeout=400)
    assert moved.returncode == 0, moved.stderr
    stable = json.loads(moved.stdout)["servingName"]
    assert stable == "iris"  # the experiment's name as a model name: the one name clients call
    assert answered_by(gateway, stable) == (stable, "1")

    started = run_modelplane("registry", "promote", "iris", retrained, "--canary=30", at, timeout=400)
    assert started.returncode == 0, started.stderr
    canary = json.loads(started.stdout)
    assert (canary["state"], canary["servingName"], canary["percent"]) == ("CANARY", stable, 30)
    assert canary["production"] == {"model": production, "version": 1}
    candidate = canary["candidate"]["servingName"]
    assert candidate.endswith(retrained)

    # The canary is active once promote answers: requests to the stable name reach both versions, and no other.
    seen: Counter[tuple[str, str]] = Counter()

    def both_seen() -> bool:
        seen[answered_by(gateway, stable)] += 1
        return {(stable, "1"), (candidate, "1")} <= set(seen)

    until(both_seen, "answered by both production and the candidate")
    assert set(seen) == {(stable, "1"), (candidate, "1")}, seen

    # The registry killed mid-canary: its successor finds the canary in the database and finishes it.
    registry.process.kill()
    registry.process.wait(timeout=60)
    registry = start_registry(registry.state_dir.parent, *registry_flags)
    at = f"--registry=http://{registry.listen}"
    status = run_modelplane("registry", "promote", "iris", "--status", at)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "CANARY"
    held = registry.call("PUT", "/experiments/iris/aliases/production", {"model": retrained})
    assert held.status == 409, held.body  # the promotion owns production until it is finished or aborted

    finished = run_modelplane("registry", "promote", "iris", retrained, "--finish", at, timeout=400)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["state"] == "FINISHED"
    # The candidate's own name is unloaded last; once the gateway has forgotten it, it has applied every earlier
    # change too (the stable name's new version, the experiment stopped): all traffic is the new version's.
    until(lambda: infer(gateway, candidate)[0] == 404, "forgotten by the gateway (the candidate's own name)")
    after = Counter(answered_by(gateway, stable) for _ in range(20))
    assert after == Counter({(stable, "2"): 20}), after

    aliases = run_modelplane("registry", "aliases", "list", "iris", "--output=json", at)
    assert aliases.returncode == 0, aliases.stderr
    assert [(a["alias"], a["model"], a["servingName"]) for a in json.loads(aliases.stdout)] == [
        ("production", retrained, stable)
    ]
    again = run_modelplane("registry", "promote", "iris", retrained, "--finish", at)
    assert again.returncode == 1
    assert "409" in again.stderr

    # A canary aborted: the stump (deployed above under its own name) takes half the traffic, then none.
    stump = next(m["id"] for m in registry.call("GET", "/experiments/iris/models").body if m["name"] == "stump")
    tried = run_modelplane("registry", "promote", "iris", stump, "--canary=50", at, timeout=400)
    assert tried.returncode == 0, tried.stderr
    stump_name = json.loads(tried.stdout)["candidate"]["servingName"]
    split: Counter[tuple[str, str]] = Counter()

    def stump_seen() -> bool:
        split[answered_by(gateway, stable, any_prediction=True)] += 1
        return {(stable, "2"), (stump_name, "1")} <= set(split)

    until(stump_seen, "answered by both production and the stump")
    aborted = run_modelplane("registry", "promote", "iris", stump, "--abort", at, timeout=400)
    assert aborted.returncode == 0, aborted.stderr
    assert json.loads(aborted.stdout)["state"] == "ABORTED"
    until(lambda: infer(gateway, stump_name)[0] == 404, "forgotten by the gateway (the aborted candidate)")
    after = Counter(answered_by(gateway, stable) for _ in range(20))
    assert after == Counter({(stable, "2"): 20}), after
    listed = registry.call("GET", "/experiments/iris/aliases").body
    assert [(a["alias"], a["model"]) for a in listed] == [("production", retrained)]
    return registry
