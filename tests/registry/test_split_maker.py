"""The SplitMaker over registry/data in a live registry (SQLite and PostgreSQL): a split read from the datasets
root, prepared by its directives, split, described, written as the trainer reads it, and its dataset registered
(seed 001); the failures named; unknown directives refused with a 400 at every call that takes directives."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tests.support.registry_process import RegistryProcess, wait_for_status
from tests.support.training_schemas import iris_frame, write_iris_csv
from trainer.run.datasets import load_dataset
from trainer.run.jobs import DatasetSource

IRIS = {"srcpath": "iris.csv", "outcome": "species", "outcomeType": "string"}
SETTLED = {"COMPLETE", "FAILED"}


def _split(registry: RegistryProcess, body: Mapping[str, Any], experiment: str = "iris") -> dict[str, Any]:
    created = registry.call("POST", f"/experiments/{experiment}/splits", body)
    assert created.status == 201, created.body
    split_id = created.body["id"]
    wait_for_status(registry, f"/experiments/{experiment}/splits/{split_id}/status", SETTLED)
    got = registry.call("GET", f"/experiments/{experiment}/splits/{split_id}")
    assert got.status == 200
    return dict(got.body)


def test_a_split_writes_halves_the_trainer_reads_and_registers_its_dataset(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    dataset = write_iris_csv(tmp_path / "datasets" / "iris.csv")
    assert registry.call("PUT", "/experiments/iris", IRIS).status == 201
    split = _split(
        registry, {"type": "random", "parameters": {"percent": 80, "seed": 7}, "directives": ["drop is_virginica"]}
    )
    assert split["status"] == "COMPLETE", split
    assert split["parameters"] == {"percent": 80.0, "seed": 7}

    # The halves: 120 and 30 rows, together exactly the dataset after its directives, read by the trainer's reader.
    train = load_dataset(DatasetSource(path=str(split["trainingPath"])), {}).frame
    test = load_dataset(DatasetSource(path=str(split["testPath"])), {}).frame
    assert (len(train), len(test)) == (120, 30)
    expected = iris_frame().drop(columns=["is_virginica"])
    assert list(train.columns) == list(test.columns) == list(expected.columns)
    together = pd.concat([train, test]).sort_values(list(expected.columns)).reset_index(drop=True)
    pd.testing.assert_frame_equal(together, expected.sort_values(list(expected.columns)).reset_index(drop=True))
    assert split["schema"] == {
        "sepal_length": "double",
        "sepal_width": "double",
        "petal_length": "double",
        "petal_width": "double",
        "species": "string",
    }
    stats = split["stats"]
    assert isinstance(stats, list)
    assert [field["field"] for field in stats] == ["species", *(c for c in split["schema"] if c != "species")]
    assert stats[0]["numTotal"] == {"train": 120, "test": 30}

    # Seed 001's dataset record: the file's format, sample count and sha256; the split names that version.
    digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert split["dataset"]["sha256"] == digest
    listed = registry.call("GET", "/datasets")
    assert listed.headers["x-total-count"] == "1"
    [record] = listed.body
    assert (record["srcpath"], record["format"], record["sampleCount"], record["sha256"]) == (
        "iris.csv",
        "csv",
        150,
        digest,
    )
    assert record["sizeBytes"] == dataset.stat().st_size
    assert "is_virginica" in record["columns"]  # as read, before the split's directives
    assert registry.call("GET", f"/datasets/{record['id']}").body == record

    # The same bytes again: the same dataset. Other bytes under the same srcpath: a new version.
    again = _split(registry, {"type": "first", "parameters": {"percent": 50}})
    assert again["dataset"] == split["dataset"]
    assert "seed" not in again["parameters"]
    iris_frame().head(100).to_csv(dataset, index=False)
    changed = _split(registry, {"type": "random", "parameters": {"percent": 80}})
    assert changed["status"] == "COMPLETE"
    assert changed["dataset"]["sha256"] != digest
    assert isinstance(changed["parameters"]["seed"], int)  # the seed chosen is kept
    versions = registry.call("GET", "/datasets?srcpath=iris.csv")
    assert sorted(item["sampleCount"] for item in versions.body) == [100, 150]


def test_a_model_split_moves_the_model_to_data_ready_with_its_features(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    write_iris_csv(tmp_path / "datasets" / "iris.csv")
    assert registry.call("PUT", "/experiments/iris", IRIS).status == 201
    model = registry.call("POST", "/experiments/iris/models", {"name": "lr", "directives": ["drop is_virginica"]})
    split = registry.call(
        "POST", f"/experiments/iris/models/{model.body['id']}/split", {"type": "first", "parameters": {"percent": 70}}
    )
    assert split.status == 201, split.body
    status = wait_for_status(
        registry, f"/experiments/iris/models/{model.body['id']}/status", {"DATA_READY", "SPLIT_FAILED"}
    )
    assert status["status"] == "DATA_READY", status
    got = registry.call("GET", f"/experiments/iris/models/{model.body['id']}").body
    assert got["features"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def test_splits_that_cannot_be_made_fail_with_the_cause(registry: RegistryProcess, tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    write_iris_csv(datasets / "iris.csv")
    (datasets / "images.txt").write_text("cat/1.jpg cat\ndog/2.jpg dog\n")
    assert registry.call("PUT", "/experiments/iris", IRIS).status == 201
    assert registry.call("PUT", "/experiments/missing", {"srcpath": "nothing-here.csv"}).status == 201
    assert registry.call("PUT", "/experiments/images", {"srcpath": "images.txt"}).status == 201
    random_80 = {"type": "random", "parameters": {"percent": 80}}

    no_column = _split(registry, {**random_80, "directives": ["drop petal_size"]})
    assert no_column["status"] == "FAILED"
    assert "petal_size" in no_column["reason"]
    dropped_outcome = _split(registry, {**random_80, "directives": ["drop species"]})
    assert "outcome 'species'" in dropped_outcome["reason"]
    missing = _split(registry, random_80, "missing")
    assert missing["status"] == "FAILED"
    assert "nothing-here.csv" in missing["reason"]
    images = _split(registry, random_80, "images")
    assert images["status"] == "FAILED"
    assert "counted, not split or trained on" in images["reason"]
    assert registry.call("GET", "/datasets").headers["x-total-count"] == "0"  # registered only with a split made


def test_unknown_directives_are_refused_with_400_naming_them(registry: RegistryProcess) -> None:
    bad = ["drop id", "frobnicate price"]
    put = registry.call("PUT", "/experiments/iris", {**IRIS, "directives": bad})
    assert put.status == 400
    assert "unknown directive 'frobnicate'" in put.error
    assert "directive 2" in put.error
    assert registry.call("GET", "/experiments/iris").status == 404  # nothing was written
    assert registry.call("PUT", "/experiments/iris", IRIS).status == 201

    split = registry.call(
        "POST", "/experiments/iris/splits", {"type": "first", "parameters": {"percent": 50}, "directives": bad}
    )
    assert split.status == 400
    assert "frobnicate" in split.error
    model = registry.call("POST", "/experiments/iris/models", {"directives": bad})
    assert model.status == 400
    assert "frobnicate" in model.error
    hostile = registry.call("POST", "/experiments/iris/models", {"directives": ["filter-rows __import__('os')"]})
    assert hostile.status == 400
    assert registry.call("GET", "/experiments/iris/models").headers["x-total-count"] == "0"

    model_id = registry.call("POST", "/experiments/iris/models", {"directives": ["drop id"]}).body["id"]
    directives = registry.call("PUT", f"/experiments/iris/models/{model_id}/directives", {"directives": bad})
    assert directives.status == 400
    assert "frobnicate" in directives.error
    model_split = registry.call(
        "POST",
        f"/experiments/iris/models/{model_id}/split",
        {"type": "first", "parameters": {"percent": 50}, "directives": bad},
    )
    assert model_split.status == 400
    assert "frobnicate" in model_split.error
    assert registry.call("GET", f"/experiments/iris/models/{model_id}/status").body["status"] == "PREPARING"
    assert registry.call("GET", f"/experiments/iris/models/{model_id}").body["directives"] == ["drop id"]
