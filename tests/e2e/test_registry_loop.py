"""The loop of issue 15 with real components: a CSV dataset registered under the datasets root, split 80/20 at
random, two models of different algorithms trained by the trainer's own run, their metrics compared through GET
models, the better one deployed on `modelplane up` (a real scheduler, agent and MLServer) and asked for a
prediction through up's gateway. Stopped by PID; deadlines are hang guards for a loaded machine."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.modelplane_up import assert_stops_cleanly, start_up
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
    finally:
        if registry is not None:
            stop_process(registry.process)
        assert_stops_cleanly(up)
