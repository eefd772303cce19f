"""Training through the trainer's own run, from a live registry (SQLite and PostgreSQL): models of one split with
different algorithms trained, their metrics those of exactly the split's test rows, each a registered version
(seed 001: manifest, metrics, metadata, lineage); failures named; a failed model trained again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression

from modelplane import __version__ as modelplane_version
from servers.launch.local import free_ports
from tests.support.processes import stop_process
from tests.support.registry_process import RegistryProcess, start_registry, wait_for_status
from tests.support.training_schemas import write_iris_csv

IRIS = {"srcpath": "iris.csv", "outcome": "species", "outcomeType": "string"}
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TRAINED = {"TRAINED", "TRAINING_FAILED"}


def _iris_split(registry: RegistryProcess, datasets: Path) -> tuple[str, Path]:
    dataset = write_iris_csv(datasets / "iris.csv")
    assert registry.call("PUT", "/experiments/iris", IRIS).status == 201
    body = {"type": "random", "parameters": {"percent": 80, "seed": 11}, "directives": ["drop is_virginica"]}
    split_id = registry.call("POST", "/experiments/iris/splits", body).body["id"]
    done = wait_for_status(registry, f"/experiments/iris/splits/{split_id}/status", {"COMPLETE", "FAILED"})
    assert done["status"] == "COMPLETE", done
    return split_id, dataset


def _model(registry: RegistryProcess, split_id: str, name: str) -> str:
    created = registry.call("POST", "/experiments/iris/models", {"name": name, "split": split_id})
    assert created.status == 201, created.body
    return str(created.body["id"])


def _train(registry: RegistryProcess, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    started = registry.call("POST", f"/experiments/iris/models/{model_id}/train", body)
    assert started.status == 202, started.body
    assert started.body["status"] == "TRAINING"
    return wait_for_status(registry, f"/experiments/iris/models/{model_id}/status", TRAINED)


@pytest.mark.timeout(600)
def test_two_algorithms_trained_on_one_split_become_registered_versions(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    split_id, dataset = _iris_split(registry, tmp_path / "datasets")
    logistic = _model(registry, split_id, "logistic")
    tree = _model(registry, split_id, "tree")
    trained = _train(registry, logistic, {"algorithm": "logistic_regression", "hyperparameters": {"max_iter": "500"}})
    assert trained == {"id": logistic, "status": "TRAINED"}
    trained = _train(registry, tree, {"algorithm": "decision tree", "hyperparameters": {"max_depth": 1}})
    assert trained == {"id": tree, "status": "TRAINED"}

    listed = {model["name"]: model for model in registry.call("GET", "/experiments/iris/models").body}
    for model in listed.values():
        assert set(model["evaluationMetrics"]) >= {"accuracy", "precision", "recall", "f1"}
        assert model["features"] == FEATURES
        assert isinstance(model["traintime"], int)
    # The logistic model's accuracy is that of the same fit on exactly the split's test rows, computed here.
    split = registry.call("GET", f"/experiments/iris/splits/{split_id}").body
    train, test = pd.read_parquet(split["trainingPath"]), pd.read_parquet(split["testPath"])
    direct = LogisticRegression(max_iter=500).fit(train[FEATURES].to_numpy(), train["species"])
    accuracy = float((direct.predict(test[FEATURES].to_numpy()) == test["species"].to_numpy()).mean())
    assert listed["logistic"]["evaluationMetrics"]["accuracy"] == pytest.approx(accuracy)
    # A stump separates one species of three: the two algorithms' metrics differ, and the comparison says which.
    assert listed["tree"]["evaluationMetrics"]["accuracy"] < listed["logistic"]["evaluationMetrics"]["accuracy"]

    versions = registry.call("GET", f"/experiments/iris/models/{logistic}/versions")
    assert versions.headers["x-total-count"] == "1"
    [version] = versions.body
    assert version == registry.call("GET", f"/experiments/iris/models/{logistic}/versions/1").body
    manifest = version["manifest"]
    assert manifest["version"] == "1"
    folder = Path(urlsplit(manifest["downloadURL"]).path)
    artifact = folder / manifest["artifact"]
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == manifest["sha256sum"]
    assert (folder / "model-settings.json").is_file()  # what MLServer serves the folder with
    assert version["evaluationMetrics"] == listed["logistic"]["evaluationMetrics"]
    assert version["fittedParameters"]["estimator"] == "LogisticRegression"
    assert version["metadata"] == {
        "taskType": "multiclass_classification",
        "labels": ["setosa", "versicolor", "virginica"],
        "framework": "scikit-learn",
        "frameworkVersion": sklearn.__version__,
    }
    lineage = version["lineage"]
    assert lineage["datasetSha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert lineage["datasetId"] == split["dataset"]["id"]
    assert (lineage["split"], lineage["splitType"], lineage["splitParameters"]) == (
        split_id,
        "random",
        {"percent": 80.0, "seed": 11},
    )
    assert lineage["directives"] == ["drop is_virginica"]
    assert lineage["trainingRun"] == listed["logistic"]["trainingRun"]
    assert (lineage["algorithm"], lineage["hyperparameters"]) == ("logistic_regression", {"max_iter": "500"})
    assert lineage["modelplaneVersion"] == modelplane_version
    assert registry.call("GET", f"/experiments/iris/models/{logistic}/versions/2").status == 404

    # A trained model is not trained again (the lifecycle table): 409, and its version stays the one.
    again = registry.call("POST", f"/experiments/iris/models/{logistic}/train", {"algorithm": "gbdt"})
    assert again.status == 409
    assert "TRAINED" in again.error


@pytest.mark.timeout(600)
def test_training_failures_are_named_and_a_failed_model_trains_again(registry: RegistryProcess, tmp_path: Path) -> None:
    """A run that fails on the data (what the catalogue cannot know up front: a feature the split does not have;
    an unknown algorithm or hyper-parameter is a 400 before any run, tests/registry/test_training_choices.py)
    leaves the model TRAINING_FAILED with the trainer's reason, and the model trains again."""
    split_id, _ = _iris_split(registry, tmp_path / "datasets")
    model = _model(registry, split_id, "tries")
    failed = _train(registry, model, {"algorithm": "decision_tree", "features": ["petal_length", "no_such_column"]})
    assert failed["status"] == "TRAINING_FAILED"
    assert "no_such_column" in failed["reason"]
    assert registry.call("GET", f"/experiments/iris/models/{model}/versions").body == []

    body = {"algorithm": "random_forest", "hyperparameters": {"n_estimators": 5}, "features": FEATURES}
    done = _train(registry, model, body)
    assert done == {"id": model, "status": "TRAINED"}
    [version] = registry.call("GET", f"/experiments/iris/models/{model}/versions").body
    assert version["lineage"]["algorithm"] == "random_forest"


def test_a_model_without_a_computed_split_is_not_trained(registry: RegistryProcess) -> None:
    assert registry.call("PUT", "/experiments/iris", IRIS).status == 201
    model = registry.call("POST", "/experiments/iris/models", {"directives": []}).body["id"]
    refused = registry.call("POST", f"/experiments/iris/models/{model}/train", {"algorithm": "gbdt"})
    assert refused.status == 409
    assert "PREPARING" in refused.error


@pytest.mark.timeout(600)
def test_a_deploy_the_scheduler_cannot_take_is_502_with_the_reason_and_the_model_stays_trained(
    tmp_path: Path,
) -> None:
    """A scheduler that is not there: the deploy answers 502 naming it, the model stays TRAINED with the reason."""
    port = free_ports(1)[0]  # nothing listens on it
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    registry = start_registry(tmp_path, f"--datasets-root={datasets}", f"--scheduler=127.0.0.1:{port}")
    try:
        split_id, _ = _iris_split(registry, datasets)
        model = _model(registry, split_id, "logistic")
        trained = _train(registry, model, {"algorithm": "logistic_regression", "hyperparameters": {"max_iter": 500}})
        assert trained == {"id": model, "status": "TRAINED"}
        refused = registry.call("POST", f"/experiments/iris/models/{model}/deploy")
        assert refused.status == 502
        assert f"127.0.0.1:{port}" in refused.error
        status = registry.call("GET", f"/experiments/iris/models/{model}/status").body
        assert status["status"] == "TRAINED"
        assert status["reason"].startswith("deploy failed:")
    finally:
        stop_process(registry.process)


def test_a_registry_given_a_relative_state_dir_trains(tmp_path: Path) -> None:
    """A relative --state-dir (`modelplane up`'s default, .modelplane/up, gives its registry one): the training
    run, a child working in its own job folder, still finds its job and the split's halves."""
    state = Path(os.path.relpath(tmp_path / "state"))
    assert not state.is_absolute()
    registry = start_registry(tmp_path, state_dir=state)
    try:
        split_id, _ = _iris_split(registry, tmp_path / "state" / "datasets")
        model_id = _model(registry, split_id, "logistic")
        done = _train(registry, model_id, {"algorithm": "logistic_regression", "hyperparameters": {"max_iter": 500}})
        assert done["status"] == "TRAINED", registry.call("GET", f"/experiments/iris/models/{model_id}").body["reason"]
    finally:
        stop_process(registry.process)
