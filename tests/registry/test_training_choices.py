"""An algorithm or hyper-parameter no run could train is refused when it is given, at POST .../train and at model
creation: a 400 naming it with what is known (the training catalogue, modelplane/spec/training_algorithms.py, the
trainer's own), the model left as it was; never a run started only to end TRAINING_FAILED. Against a live registry
on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.registry_process import RegistryProcess, wait_for_status
from tests.support.training_schemas import write_iris_csv

IRIS = {"srcpath": "iris.csv", "outcome": "species", "outcomeType": "string"}
CLASSIFIERS = "logistic_regression, decision_tree, random_forest, gbdt"
REGRESSORS = "linear_regression, decision_tree, random_forest, gbdt"


def _ready_model(registry: RegistryProcess, datasets: Path) -> str:
    write_iris_csv(datasets / "iris.csv")
    assert registry.call("PUT", "/experiments/iris", IRIS).status == 201
    body = {"type": "random", "parameters": {"percent": 80, "seed": 11}, "directives": ["drop is_virginica"]}
    split_id = registry.call("POST", "/experiments/iris/splits", body).body["id"]
    done = wait_for_status(registry, f"/experiments/iris/splits/{split_id}/status", {"COMPLETE", "FAILED"})
    assert done["status"] == "COMPLETE", done
    created = registry.call("POST", "/experiments/iris/models", {"split": split_id})
    assert created.status == 201, created.body
    return str(created.body["id"])


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"algorithm": "deep dreaming"}, f"unknown algorithm 'deep dreaming'; known for classification: {CLASSIFIERS}"),
        # A regressor for an experiment whose outcome is a string: not one of the classification task's.
        ({"algorithm": "linear_regression"}, "unknown algorithm 'linear_regression'; known for classification: "),
        (
            {"algorithm": "decision tree", "hyperparameters": {"no_such_knob": 1}},
            "hyper-parameter 'no_such_knob' is not accepted by classification/decision_tree (accepted: ccp_alpha,",
        ),
        ({"algorithm": "decision_tree", "hyperparameters": {"max_depth": "-3"}}, "'max_depth'"),
        ({"algorithm": "gbdt", "hyperparameters": {"loss": "huber"}}, "expected one of ['log_loss', 'exponential']"),
        ({"algorithm": "random_forest", "hyperparameters": {"n_estimators": True}}, "'n_estimators'"),
    ],
)
def test_an_untrainable_choice_at_train_is_a_400_and_nothing_starts(
    registry: RegistryProcess, tmp_path: Path, body: dict[str, object], named: str
) -> None:
    model = _ready_model(registry, tmp_path / "datasets")
    refused = registry.call("POST", f"/experiments/iris/models/{model}/train", body)
    assert refused.status == 400, refused.body
    assert named in refused.error
    after = registry.call("GET", f"/experiments/iris/models/{model}").body
    assert (after["status"], after["algorithm"], after.get("trainingRun")) == ("DATA_READY", None, None)
    # The same model then trains with a choice the catalogue offers.
    started = registry.call("POST", f"/experiments/iris/models/{model}/train", {"algorithm": "Decision Tree"})
    assert started.status == 202, started.body
    trained = wait_for_status(registry, f"/experiments/iris/models/{model}/status", {"TRAINED", "TRAINING_FAILED"})
    assert trained == {"id": model, "status": "TRAINED"}


def test_the_algorithm_given_at_creation_is_checked_and_trained_with(registry: RegistryProcess, tmp_path: Path) -> None:
    write_iris_csv(tmp_path / "datasets" / "iris.csv")
    # No outcome type yet: the task is not decided, so either task's algorithms pass and nothing else does.
    assert registry.call("PUT", "/experiments/iris", {"srcpath": "iris.csv", "outcome": "species"}).status == 201
    refused = registry.call("POST", "/experiments/iris/models", {"algorithm": "deep dreaming"})
    assert refused.status == 400
    assert f"known for classification: {CLASSIFIERS}; regression: {REGRESSORS}" in refused.error
    assert registry.call("POST", "/experiments/iris/models", {"algorithm": "linear_regression"}).status == 201
    refused = registry.call("POST", "/experiments/iris/models", {"hyperparameters": {"max_depth": 2}})
    assert refused.status == 400
    assert "give the algorithm too" in refused.error
    assert registry.call("GET", "/experiments/iris/models").headers["x-total-count"] == "1"

    # The outcome type set: the classification task's catalogue alone.
    assert registry.call("PUT", "/experiments/iris", {"outcomeType": "string"}).status == 200
    refused = registry.call("POST", "/experiments/iris/models", {"algorithm": "linear_regression"})
    assert refused.status == 400
    assert "unknown algorithm 'linear_regression'; known for classification" in refused.error
    refused = registry.call("POST", "/experiments/iris/models", {"algorithm": "gbdt", "hyperparameters": {"C": 1}})
    assert refused.status == 400
    assert "'C' is not accepted by classification/gbdt" in refused.error

    # A model created with its algorithm and hyper-parameters is trained with them when the train call names none.
    body = {"type": "first", "parameters": {"percent": 80}, "directives": ["drop is_virginica"]}
    split_id = registry.call("POST", "/experiments/iris/splits", body).body["id"]
    assert wait_for_status(registry, f"/experiments/iris/splits/{split_id}/status", {"COMPLETE", "FAILED"}) == {
        "id": split_id,
        "status": "COMPLETE",
    }
    chosen = {"split": split_id, "algorithm": "decision tree", "hyperparameters": {"max_depth": "2"}}
    created = registry.call("POST", "/experiments/iris/models", chosen)
    assert created.status == 201, created.body
    model = created.body["id"]
    assert registry.call("GET", f"/experiments/iris/models/{model}").body["algorithm"] == "decision tree"
    assert registry.call("POST", f"/experiments/iris/models/{model}/train", {}).status == 202
    trained = wait_for_status(registry, f"/experiments/iris/models/{model}/status", {"TRAINED", "TRAINING_FAILED"})
    assert trained == {"id": model, "status": "TRAINED"}
    [version] = registry.call("GET", f"/experiments/iris/models/{model}/versions").body
    assert (version["lineage"]["algorithm"], version["lineage"]["hyperparameters"]) == (
        "decision tree",
        {"max_depth": "2"},
    )
    # A model created without one and trained without one: a 400 saying so.
    bare = registry.call("POST", "/experiments/iris/models", {"split": split_id}).body["id"]
    refused = registry.call("POST", f"/experiments/iris/models/{bare}/train", {})
    assert refused.status == 400
    assert "has no algorithm" in refused.error
