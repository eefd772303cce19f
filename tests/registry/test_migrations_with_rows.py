"""Rows written at an older schema (0002, 0003) with plain SQL, as a registry of that time wrote them (experiments,
splits in every state, models in every state), then the registry started on the database: `upgrade head` at its
start, and every row read back through the REST API with its meaning (list, get, status, sort by a metric), on
SQLite and PostgreSQL. A run or split in flight then was left by a registry that is gone: it is failed with a
reason, never left in flight for ever."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from registry.store import schema
from registry.store.database import database_url as url_of
from registry.store.database import open_engine
from tests.support.processes import stop_process
from tests.support.registry_process import RegistryProcess, start_registry, wait_for_status

SPLIT_STOPPED = "the registry computing this split stopped before it finished"
TRAINING_STOPPED = "the registry running this training stopped before it finished"
DATASET_ID = "d" * 16
DATASET_SHA256 = "ab" * 32
COMPLETE, FAILED, SPLITTING = "0000000000000c01", "0000000000000c02", "0000000000000c03"
STATS = [
    {
        "field": "size",
        "numTotal": {"train": 8, "test": 2},
        "numNull": {"train": 0, "test": 0},
        "mean": {"train": 71.5, "test": 64.0},
        "histo": [{"bin": "[0,100)", "count": {"train": 8, "test": 2}}],
        "similarity": 0.88,
    },
    {"field": "city", "numTotal": {"train": 8, "test": 2}, "unique": {"train": 3, "test": 2}, "similarity": 0.5},
]
EXPERIMENTS: list[dict[str, Any]] = [
    {
        "name": "houses",
        "description": 'prix de l\'immobilier, "quoted" \u00e9t\u00e9',
        "srcpath": "houses.csv",
        "outcome": "price",
        "outcome_type": "double",
        "directives": ["drop id", "fill-null size 0"],
        "create_time": 100,
        "row_version": 3,
    },
    {
        "name": "bare",
        "description": "",
        "srcpath": None,
        "outcome": None,
        "outcome_type": None,
        "directives": [],
        "create_time": 101,
        "row_version": 1,
    },
]
SPLITS: list[dict[str, Any]] = [
    {
        "id": COMPLETE,
        "type": "random",
        "parameters": {"percent": 80.0, "seed": 7},
        "directives": ["drop id"],
        "schema": {"fields": [{"name": "size", "type": "double"}]},
        "training_path": "/old/splits/c01/train.parquet",
        "test_path": "/old/splits/c01/test.parquet",
        "stats": STATS,
        "state": "COMPLETE",
        "reason": None,
        "create_time": 110,
    },
    {
        "id": FAILED,
        "type": "first",
        "parameters": {"percent": 75},
        "directives": [],
        "schema": None,
        "training_path": None,
        "test_path": None,
        "stats": None,
        "state": "FAILED",
        "reason": "cannot read houses.csv: no such file",
        "create_time": 111,
    },
    {
        "id": SPLITTING,
        "type": "random",
        "parameters": {"percent": 50.0, "seed": 1},
        "directives": [],
        "schema": None,
        "training_path": None,
        "test_path": None,
        "stats": None,
        "state": "SPLITTING",
        "reason": None,
        "create_time": 112,
    },
]


def _model(number: int, state: str, split: str | None, **given: Any) -> dict[str, Any]:
    return {
        "id": f"00000000000000{number:02d}",
        "name": f"in-{state.lower()}",
        "description": f"a model that was {state}",
        "split_id": split,
        "directives": ["drop id"] if split != FAILED else [],
        "algorithm": None,
        "hyperparameters": {},
        "evaluation_metrics": {},
        "features": ["size", "city"] if split == COMPLETE else [],
        "state": state,
        "create_time": 120 + number,
        "train_time": None,
        "deploy_time": None,
        "reason": None,
        "training_run": None,
        **given,
    }


MODELS: list[dict[str, Any]] = [
    _model(1, "PREPARING", None),
    _model(2, "SPLITTING", SPLITTING),
    _model(3, "SPLIT_FAILED", FAILED, reason="cannot read houses.csv: no such file"),
    _model(4, "DATA_READY", COMPLETE),
    _model(5, "TRAINING", COMPLETE, algorithm="gbdt", hyperparameters={"n_estimators": 5}, training_run="run-5"),
    _model(
        6, "TRAINED", COMPLETE, algorithm="decision tree", hyperparameters={"max_depth": "3"},
        evaluation_metrics={"rmse": 1.5, "r2": 0.8, "mae": None}, train_time=130, training_run="run-6",
    ),
    _model(
        7, "TRAINING_FAILED", COMPLETE, algorithm="gbdt", reason="hyper-parameter 'loss' got 'x'",
        training_run="run-7",
    ),
    _model(
        8, "DEPLOYED", COMPLETE, algorithm="random_forest", hyperparameters={"n_estimators": 10},
        evaluation_metrics={"rmse": 0.9, "r2": 0.9}, train_time=131, deploy_time=140, training_run="run-8",
    ),
]  # fmt: skip
JSON_COLUMNS = {"directives", "parameters", "schema", "stats", "hyperparameters", "evaluation_metrics", "features"}


def _insert(connection: Any, table: str, row: dict[str, Any]) -> None:
    """One row by plain SQL, JSON columns as their JSON text (what SQLAlchemy's JSON type stores on both)."""
    values = {key: json.dumps(value) if key in JSON_COLUMNS | {"columns"} and value is not None else value
              for key, value in row.items()}  # fmt: skip
    columns = ", ".join(f'"{key}"' for key in values)
    marks = ", ".join(f":{key}" for key in values)
    connection.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({marks})"), values)  # noqa: S608 - names are ours


def _write_rows(url: Any, revision: str) -> None:
    engine = open_engine(url)
    try:
        assert schema.current_revision(engine) == revision
        with engine.begin() as connection:
            for experiment in EXPERIMENTS:
                _insert(connection, "experiments", experiment)
            if revision >= "0003":
                _insert(connection, "datasets", {
                    "id": DATASET_ID, "srcpath": "houses.csv", "sha256": DATASET_SHA256, "format": "csv",
                    "sample_count": 10, "size_bytes": 321, "columns": ["id", "size", "city", "price"],
                    "label_counts": None, "create_time": 105, "description": "", "row_version": 1,
                })  # fmt: skip
            for split in SPLITS:
                row = {**split, "experiment_name": "houses", "description": f"split {split['id']}", "row_version": 2}
                if revision >= "0003" and split["id"] == COMPLETE:
                    row |= {"dataset_id": DATASET_ID, "dataset_sha256": DATASET_SHA256}
                _insert(connection, "splits", row)
            for model in MODELS:
                _insert(connection, "models", {**model, "experiment_name": "houses", "row_version": 2})
    finally:
        engine.dispose()


def _model_document(model: dict[str, Any]) -> dict[str, Any]:
    """What GET .../models/{id} answers for a row: seed 002's names; times and reasons only when there are some."""
    document = {
        "id": model["id"],
        "name": model["name"],
        "description": model["description"],
        "split": model["split_id"],
        "algorithm": model["algorithm"],
        "hyperparameters": model["hyperparameters"],
        "evaluationMetrics": model["evaluation_metrics"],
        "directives": model["directives"],
        "features": model["features"],
        "status": model["state"],
        "createtime": model["create_time"],
    }
    for key, name in (("train_time", "traintime"), ("deploy_time", "deploytime"), ("training_run", "trainingRun"),
                      ("reason", "reason")):  # fmt: skip
        if model[key] is not None:
            document[name] = model[key]
    return document


@pytest.mark.parametrize("revision", ["0002", "0003"])
def test_rows_written_at_an_older_schema_keep_their_meaning(tmp_path: Path, database_url: str, revision: str) -> None:
    url = url_of(database_url, tmp_path / "state")
    schema.upgrade(url, revision)
    _write_rows(url, revision)

    database = [f"--database={database_url}"] if database_url.startswith("postgresql") else []
    registry = start_registry(tmp_path, *database)
    try:
        _check_served(registry, revision)
    finally:
        stop_process(registry.process)
    engine = open_engine(url)
    try:
        assert schema.current_revision(engine) == schema.head_revision()
    finally:
        engine.dispose()


def _check_served(registry: RegistryProcess, revision: str) -> None:
    # What was in flight under a registry that is gone is failed, with the reason saying so.
    split_status = wait_for_status(registry, f"/experiments/houses/splits/{SPLITTING}/status", {"FAILED"})
    assert split_status == {"id": SPLITTING, "status": "FAILED", "reason": SPLIT_STOPPED}
    training = MODELS[4]["id"]
    status = wait_for_status(registry, f"/experiments/houses/models/{training}/status", {"TRAINING_FAILED"})
    assert status == {"id": training, "status": "TRAINING_FAILED", "reason": TRAINING_STOPPED}
    split_waiter = MODELS[1]["id"]
    assert registry.call("GET", f"/experiments/houses/models/{split_waiter}/status").body == {
        "id": split_waiter,
        "status": "SPLIT_FAILED",
        "reason": SPLIT_STOPPED,
    }

    listed = registry.call("GET", "/experiments")
    assert listed.headers["x-total-count"] == "2"
    assert sorted(listed.body, key=lambda document: document["name"]) == [
        {
            "name": experiment["name"],
            "description": experiment["description"],
            "srcpath": experiment["srcpath"],
            "outcome": experiment["outcome"],
            "outcomeType": experiment["outcome_type"],
            "directives": experiment["directives"],
            "createtime": experiment["create_time"],
        }
        for experiment in sorted(EXPERIMENTS, key=lambda row: row["name"])
    ]
    [houses] = registry.call("GET", "/experiments?srcpath=houses.csv").body
    assert houses == registry.call("GET", "/experiments/houses").body
    assert houses["description"] == EXPERIMENTS[0]["description"]

    splits = registry.call("GET", "/experiments/houses/splits")
    assert splits.headers["x-total-count"] == "3"
    assert [split["id"] for split in splits.body] == [COMPLETE, FAILED, SPLITTING]
    complete = registry.call("GET", f"/experiments/houses/splits/{COMPLETE}").body
    expected = SPLITS[0]
    assert (complete["type"], complete["parameters"], complete["directives"]) == (
        "random",
        expected["parameters"],
        expected["directives"],
    )
    assert (complete["schema"], complete["stats"], complete["status"]) == (expected["schema"], STATS, "COMPLETE")
    assert (complete["trainingPath"], complete["testPath"]) == (expected["training_path"], expected["test_path"])
    assert (complete["description"], complete["createtime"]) == (f"split {COMPLETE}", 110)
    assert sorted(complete["models"]) == [model["id"] for model in MODELS if model["split_id"] == COMPLETE]
    if revision >= "0003":
        assert complete["dataset"] == {"id": DATASET_ID, "sha256": DATASET_SHA256}
        [dataset] = registry.call("GET", "/datasets").body
        assert (dataset["id"], dataset["sampleCount"], dataset["format"]) == (DATASET_ID, 10, "csv")
        assert dataset["columns"] == ["id", "size", "city", "price"]
    else:
        assert "dataset" not in complete  # none was recorded then: none is made up
        assert registry.call("GET", "/datasets").body == []
    assert registry.call("GET", f"/experiments/houses/splits/{FAILED}/status").body == {
        "id": FAILED,
        "status": "FAILED",
        "reason": "cannot read houses.csv: no such file",
    }

    models = registry.call("GET", "/experiments/houses/models")
    assert models.headers["x-total-count"] == str(len(MODELS))
    settled = {MODELS[1]["id"]: ("SPLIT_FAILED", SPLIT_STOPPED), MODELS[4]["id"]: ("TRAINING_FAILED", TRAINING_STOPPED)}
    expected_models = []
    for row in MODELS:
        state, reason = settled.get(row["id"], (row["state"], row["reason"]))
        expected_models.append(_model_document({**row, "state": state, "reason": reason}))
    assert models.body == expected_models
    for document in expected_models:
        assert registry.call("GET", f"/experiments/houses/models/{document['id']}").body == document
    # Compared by a metric on migrated rows: the lower rmse first, the models without one after, in creation order.
    by_rmse = registry.call("GET", "/experiments/houses/models?sort=rmse").body
    assert [model["id"] for model in by_rmse[:2]] == [MODELS[7]["id"], MODELS[5]["id"]]

    # The migrated rows take writes under the new schema (their row versions still guard them) and the rules.
    assert registry.call("PUT", "/experiments/houses", {"srcpath": "houses.csv"}).status == 200
    assert registry.call("PUT", "/experiments/houses", {"outcome": "rooms"}).status == 409
    assert registry.call("DELETE", f"/experiments/houses/models/{MODELS[0]['id']}").status == 204
    assert (
        registry.call("POST", f"/experiments/houses/models/{MODELS[5]['id']}/train", {"algorithm": "gbdt"}).status
        == 409
    )
