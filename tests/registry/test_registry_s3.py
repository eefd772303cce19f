"""The registry on S3 (SeaweedFS, real): an ``s3://`` srcpath read through the registry's ``--s3-*`` settings (the
trainer's flags; the secret key from a file, never the command line), the model trained from it uploaded to the model
store bucket (the manifest's URL ``s3://``, its sha256 that of the bytes the store holds), deployed on a real
scheduler and agent (MLServer) that fetch it from S3 with the storage secret the registry names, and answering; an
S3 that cannot be reached named in the split's and the model's reason (never a 500)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from servers.launch.local import free_ports
from tests.support.processes import stop_process
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, S3Server
from tests.support.registry_process import RegistryProcess, start_registry, wait_for_status
from tests.support.training_schemas import iris_frame

pytest_plugins = ["tests.support.real_components"]

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETTLED_SPLIT = {"COMPLETE", "FAILED"}
SETTLED_MODEL = {"TRAINED", "TRAINING_FAILED"}


def s3_flags(tmp_path: Path, endpoint: str, bucket: str) -> list[str]:
    key_file = tmp_path / "s3-secret-key"
    key_file.write_text(SECRET_KEY)
    return [
        f"--s3-endpoint={endpoint.removeprefix('http://')}",
        f"--s3-access-key={ACCESS_KEY}",
        f"--s3-secret-key-file={key_file}",
        f"--s3-bucket={bucket}",
        "--s3-timeout=5",
    ]


@pytest.fixture
def iris_csv() -> bytes:
    return bytes(iris_frame().drop(columns=["is_virginica"]).to_csv(index=False).encode())


def _split(registry: RegistryProcess, srcpath: str) -> dict[str, Any]:
    put = registry.call("PUT", "/experiments/iris", {"srcpath": srcpath, "outcome": "species", "outcomeType": "string"})
    assert put.status == 201, put.body
    body = {"type": "random", "parameters": {"percent": 80, "seed": 3}}
    created = registry.call("POST", "/experiments/iris/splits", body)
    assert created.status == 201, created.body
    return wait_for_status(registry, f"/experiments/iris/splits/{created.body['id']}/status", SETTLED_SPLIT) | {
        "id": created.body["id"]
    }


def _train(registry: RegistryProcess, split_id: str) -> tuple[str, dict[str, Any]]:
    model = registry.call("POST", "/experiments/iris/models", {"name": "logistic", "split": split_id}).body["id"]
    started = registry.call("POST", f"/experiments/iris/models/{model}/train", {"algorithm": "logistic_regression"})
    assert started.status == 202, started.body
    return model, wait_for_status(registry, f"/experiments/iris/models/{model}/status", SETTLED_MODEL)


@pytest.mark.timeout(900)
def test_an_s3_dataset_trains_a_model_stored_in_s3_that_a_remote_agent_loads(
    tmp_path: Path, s3_server: S3Server, iris_csv: bytes, s3_deploy_target: tuple[str, str]
) -> None:
    scheduler, agent_proxy = s3_deploy_target
    datasets = s3_server.new_bucket({"tables/iris.csv": iris_csv})
    models = s3_server.new_bucket()
    extra = [*s3_flags(tmp_path, s3_server.endpoint, models), f"--scheduler={scheduler}"]
    registry = start_registry(tmp_path / "registry", *extra, "--deploy-storage-secret=modelstore")
    try:
        split = _split(registry, f"s3://{datasets}/tables/iris.csv")
        assert split["status"] == "COMPLETE", split
        named = registry.call("GET", f"/experiments/iris/splits/{split['id']}").body["dataset"]
        dataset = registry.call("GET", f"/datasets/{named['id']}").body
        assert dataset["sha256"] == hashlib.sha256(iris_csv).hexdigest()
        assert (dataset["format"], dataset["sampleCount"]) == ("csv", 150)

        model, trained = _train(registry, split["id"])
        assert trained["status"] == "TRAINED", trained
        [version] = registry.call("GET", f"/experiments/iris/models/{model}/versions").body
        manifest = version["manifest"]
        run = version["lineage"]["trainingRun"]
        # experiment / model / run: the version's folder in the model store, not a folder on the registry's host.
        assert manifest["downloadURL"] == f"s3://{models}/registry/iris/{model}/{run}"
        key = f"registry/iris/{model}/{run}/{manifest['artifact']}"
        stored = s3_server.client.get_object(models, key).read()
        assert hashlib.sha256(stored).hexdigest() == manifest["sha256sum"]
        assert len(stored) == manifest["sizeBytes"]
        settings = s3_server.client.stat_object(models, f"registry/iris/{model}/{run}/model-settings.json")
        assert settings.size  # what MLServer serves the folder with went along

        # The scheduler's agent has no access to the registry's disk: it loads the model from S3.
        deployed = registry.call("POST", f"/experiments/iris/models/{model}/deploy")
        assert deployed.status == 200, deployed.body
        assert deployed.body["status"] == "DEPLOYED", deployed.body
        flowers = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]]
        answer = asyncio.run(infer(agent_proxy, deployed.body["servingName"], flowers))
        assert answer["outputs"][0]["data"] == ["setosa", "virginica"]
    finally:
        stop_process(registry.process)


async def infer(proxy: str, name: str, rows: list[list[float]]) -> dict[str, Any]:
    request = {"inputs": [{"name": "predict", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]}
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(f"{proxy}/v2/models/{name}/infer", json=request) as response,
    ):
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


@pytest.mark.timeout(600)
def test_an_s3_store_that_cannot_be_reached_is_the_split_and_the_model_reason(tmp_path: Path, iris_csv: bytes) -> None:
    """Nothing listens on the S3 endpoint: the s3:// split fails saying so; a model trained from a local split
    fails its training saying its artifact could not be stored, and nothing claims a version."""
    [port] = free_ports(1)
    datasets = tmp_path / "registry" / "datasets"
    datasets.mkdir(parents=True)
    (datasets / "iris.csv").write_bytes(iris_csv)
    extra = s3_flags(tmp_path, f"127.0.0.1:{port}", "models")
    registry = start_registry(tmp_path / "registry", *extra, f"--datasets-root={datasets}")
    try:
        put = registry.call("PUT", "/experiments/remote", {"srcpath": "s3://data/iris.csv", "outcome": "species"})
        assert put.status == 201, put.body
        created = registry.call("POST", "/experiments/remote/splits", {"type": "first", "parameters": {"percent": 80}})
        assert created.status == 201, created.body
        failed = wait_for_status(registry, f"/experiments/remote/splits/{created.body['id']}/status", SETTLED_SPLIT)
        assert failed["status"] == "FAILED"
        assert f"127.0.0.1:{port}" in failed["reason"], failed
        assert "cannot connect" in failed["reason"], failed

        split = _split(registry, "iris.csv")
        assert split["status"] == "COMPLETE", split
        model, trained = _train(registry, split["id"])
        assert trained["status"] == "TRAINING_FAILED", trained
        assert f"storing the trained model in the model store http://127.0.0.1:{port}" in trained["reason"]
        assert "cannot connect" in trained["reason"]
        assert registry.call("GET", f"/experiments/iris/models/{model}/versions").body == []
    finally:
        stop_process(registry.process)


def test_the_s3_secret_key_is_refused_on_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--s3-secret-key is not accepted") as refused:
        start_registry(tmp_path, "--s3-endpoint=127.0.0.1:9000", "--s3-secret-key=hunter2")
    assert "hunter2" not in str(refused.value)
