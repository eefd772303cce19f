"""The MLServer and Triton adapters and launchers, against real servers started from their own venvs.

Tests marked ``servers`` start one MLServer and one Triton for the module (the first run creates their
venvs under ~/.cache/modelplane/venvs, about two minutes; later runs reuse them). The rest check file
placement and config.pbtxt rewriting without a server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from agent.artifacts import ArtifactSource, ArtifactStore
from servers.adapter import InferenceServer, ModelFiles, ServerError
from servers.designed_model.served_model import InputTensor, ServedModel
from servers.launch import LaunchError, LocalServer, launch_mlserver, launch_triton, launchers, server_venv
from servers.launch.local import free_ports
from servers.launch.venvs import MARKER, REQUIREMENTS
from servers.mlserver import MLServer, model_settings
from servers.triton import TritonServer, rewrite_config
from tests.support import training_schemas as schemas
from tests.support.designed_models import expected_outputs, raw_rows, train_into
from tests.support.local_servers import adapter_to, stopped_at_exit
from tests.support.triton_models import DOUBLER_MODEL, write_doubler
from trainer.run.serving_bundle import RUNTIME_PACKAGE

# mlserver_process (one MLServer for this module) and mlserver (an adapter to it per test).
pytest_plugins = ["tests.support.mlserver_fixtures"]

# A hang guard only: a first run spends most of it creating the venvs inside a fixture.
SERVER_TEST_TIMEOUT = 900

NOWHERE = "http://127.0.0.1:9"  # for adapters whose tests never reach the server


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="session")
def mlserver_venv() -> Path:
    return server_venv("mlserver")


@pytest.fixture(scope="session")
def triton_venv() -> Path:
    return server_venv("triton")


@pytest.fixture(scope="module")
def triton_process(tmp_path_factory: pytest.TempPathFactory, triton_venv: Path) -> Iterator[LocalServer]:
    server = asyncio.run(launch_triton(tmp_path_factory.mktemp("triton"), venv=triton_venv))
    with stopped_at_exit(server):
        yield server


@pytest.fixture
async def triton(triton_process: LocalServer) -> AsyncIterator[InferenceServer]:
    async with adapter_to(triton_process) as adapter:
        yield adapter


async def _post_infer(server: InferenceServer, model: str, inputs: list[dict[str, Any]]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.http_url}/v2/models/{model}/infer",
            json={"inputs": inputs},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as response,
    ):
        return response.status, await response.json()


async def _infer(server: InferenceServer, model: str, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    status, body = await _post_infer(server, model, inputs)
    assert status == 200, body
    outputs: list[dict[str, Any]] = body["outputs"]
    return outputs


async def _index_states(server: InferenceServer, name: str) -> list[str | None]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.http_url}/v2/repository/index", json={}, timeout=aiohttp.ClientTimeout(total=30)
        ) as response,
    ):
        entries: list[dict[str, Any]] = await response.json()
    return [entry.get("state") for entry in entries if entry["name"] == name]


# --- MLServer -------------------------------------------------------------------------------------

TRAIN_IRIS = """
import json, sys
import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

features, labels = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=1000).fit(features, labels)
joblib.dump(model, sys.argv[1] + "/model.joblib")
rows = features[[0, 10, 60, 70, 120, 140]].astype(np.float32)  # all three classes, as the server decodes FP32
print(json.dumps({"rows": rows.tolist(), "predictions": model.predict(rows).tolist()}))
"""


@pytest.fixture(scope="session")
def iris_model(tmp_path_factory: pytest.TempPathFactory, mlserver_venv: Path) -> tuple[Path, dict[str, Any]]:
    """A LogisticRegression trained by the MLServer venv's scikit-learn (so the pickle matches the
    server's), with rows to ask about and the predictions the same process made for them."""
    folder = tmp_path_factory.mktemp("iris")
    done = subprocess.run(
        [str(mlserver_venv / "bin" / "python"), "-c", TRAIN_IRIS, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected: dict[str, Any] = json.loads(done.stdout)
    return folder, expected


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_mlserver_serves_a_scikit_learn_model(
    mlserver: InferenceServer, iris_model: tuple[Path, dict[str, Any]]
) -> None:
    artifact, expected = iris_model
    files = ModelFiles("iris", 3, artifact, frozenset({"sklearn"}))
    await mlserver.place_files(files)
    settings = json.loads((mlserver.repository / "iris_3" / "model-settings.json").read_text())
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert settings["parameters"] == {"uri": "./model.joblib", "version": "3"}

    await mlserver.load("iris_3")
    assert await mlserver.ready()
    assert "iris_3" in await mlserver.loaded_models()
    rows = expected["rows"]
    flat = [value for row in rows for value in row]
    outputs = await _infer(
        mlserver, "iris_3", [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP32", "data": flat}]
    )
    assert outputs[0]["data"] == expected["predictions"]

    await mlserver.unload("iris_3")
    assert "iris_3" not in await mlserver.loaded_models()
    assert "READY" not in await _index_states(mlserver, "iris_3")
    await mlserver.unload("iris_3")  # again: unknown to the server now, still not an error
    mlserver.remove_files("iris_3")
    assert not (mlserver.repository / "iris_3").exists()


SCALER_RUNTIME = """
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Scaler(MLModel):
    async def load(self) -> bool:
        self.factor = float(self.settings.parameters.extra["factor"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        values = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("scaled", values * self.factor)]
        )
"""


def _scaler_artifact(folder: Path) -> Path:
    """A custom MLServer runtime shipped inside the artifact, with its own model-settings.json."""
    folder.mkdir()
    (folder / "modelplane_test_scaler.py").write_text(SCALER_RUNTIME)
    settings = {
        "name": "whatever-the-author-called-it",
        "implementation": "modelplane_test_scaler.Scaler",
        "parameters": {"version": "v9", "extra": {"factor": 2}},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_mlserver_keeps_the_artifacts_own_runtime(mlserver: InferenceServer, tmp_path: Path) -> None:
    # No requirements that name a runtime: the artifact's model-settings.json decides. The spec's
    # parameters reach the runtime as `extra` and override the artifact's.
    files = ModelFiles("scaler", 1, _scaler_artifact(tmp_path / "scaler"), parameters={"factor": "3"})
    await mlserver.place_files(files)
    await mlserver.load("scaler_1")
    try:
        outputs = await _infer(
            mlserver, "scaler_1", [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]
        )
        assert outputs[0]["data"] == [3.0, 6.0, 9.0]
    finally:
        await mlserver.unload("scaler_1")
        mlserver.remove_files("scaler_1")


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_mlserver_reports_a_bad_artifact_as_not_retryable(mlserver: InferenceServer, tmp_path: Path) -> None:
    artifact = tmp_path / "garbage"
    artifact.mkdir()
    (artifact / "model.joblib").write_bytes(b"this is not a pickle")
    await mlserver.place_files(ModelFiles("garbage", 1, artifact, frozenset({"sklearn"})))
    with pytest.raises(ServerError) as caught:
        await mlserver.load("garbage_1")
    assert caught.value.retryable is False
    message = str(caught.value)
    assert "could not load model 'garbage_1'" in message
    # MLServer's reason: the exception its sklearn runtime raised, not a whole traceback.
    assert "Error" in message
    assert "Traceback" not in message
    assert "garbage_1" not in await mlserver.loaded_models()
    await mlserver.unload("garbage_1")
    mlserver.remove_files("garbage_1")
    assert await mlserver.ready()  # the server survives a bad model


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_mlserver_serves_trained_designs_with_their_preprocessing(
    mlserver: InferenceServer, tmp_path: Path
) -> None:
    # The trainer's folders as they are (model-settings.json naming the shipped runtime), two of them in one
    # MLServer; then, as in a rollout, the first folder goes away and later ones load from their own copies.
    designed = train_into(tmp_path / "designed", schemas.iris_designed(), schemas.write_iris_csv(tmp_path / "iris.csv"))
    regressor = train_into(
        tmp_path / "regressor", schemas.linear_regression(), schemas.write_regression_csv(tmp_path / "r.csv")
    )
    for name, folder in (("designed", designed), ("regressor", regressor)):
        await mlserver.place_files(ModelFiles(name, 1, folder, frozenset({"sklearn"})))
        await mlserver.load(f"{name}_1")
    try:
        # Raw columns, one input each: the server computes the design inputs and the postprocessing outputs.
        columns = {name: values[45:105] for name, values in raw_rows().items()}
        inputs = [
            {"name": name, "shape": [len(values)], "datatype": "FP64", "data": values.tolist()}
            for name, values in columns.items()
        ]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{mlserver.http_url}/v2/models/designed_1") as response,
        ):
            metadata = await response.json()
        assert [tensor["name"] for tensor in metadata["inputs"]] == list(columns)  # callers can ask what to send
        outputs = {output["name"]: output for output in await _infer(mlserver, "designed_1", inputs)}
        expected = expected_outputs(designed, columns)
        assert list(outputs) == ["predict", "score", "flag"]
        assert outputs["predict"]["data"] == expected["predict"].tolist()
        assert set(outputs["predict"]["data"]) == {0, 1}
        assert outputs["score"]["data"] == expected["score"].tolist()
        assert outputs["flag"]["data"] == expected["flag"].tolist()

        frame = schemas.regression_frame()
        served = ServedModel.load(regressor)
        matrix = frame[list(served.input_columns)].to_numpy()[:7]
        inputs = [{"name": "x", "shape": list(matrix.shape), "datatype": "FP64", "data": matrix.ravel().tolist()}]
        [answer] = await _infer(mlserver, "regressor_1", inputs)
        np.testing.assert_allclose(answer["data"], served.predict([InputTensor("x", matrix)])["predict"])

        # A request that does not fit is a 400 naming what is wrong, and the model keeps serving.
        status, body = await _post_infer(mlserver, "designed_1", inputs=[inputs[0] | {"name": "sepal_length"}])
        assert status == 400, body
        assert "missing ['petal_length', 'petal_width', 'sepal_width']" in body["error"]
        assert (await _infer(mlserver, "regressor_1", inputs))[0]["data"] == answer["data"]

        # The first folder is removed (unloaded; a new version rolled out). The next version loads from its own
        # folder, and so does a model whose runtime package differs (as one trained by another release would).
        await mlserver.unload("designed_1")
        mlserver.remove_files("designed_1")
        other = tmp_path / "other"
        shutil.copytree(regressor, other)
        with (other / RUNTIME_PACKAGE / "served_model.py").open("a") as source:
            source.write("\n# as trained by another release\n")
        await mlserver.place_files(ModelFiles("designed", 2, designed, frozenset({"sklearn"})))
        await mlserver.place_files(ModelFiles("other", 1, other, frozenset({"sklearn"})))
        await mlserver.load("designed_2")
        await mlserver.load("other_1")
        assert (await _infer(mlserver, "other_1", inputs))[0]["data"] == answer["data"]
        raw = [{"name": n, "shape": [len(v)], "datatype": "FP64", "data": v.tolist()} for n, v in columns.items()]
        again = {output["name"]: output["data"] for output in await _infer(mlserver, "designed_2", raw)}
        assert again["predict"] == expected["predict"].tolist()
    finally:
        for name in ("designed_1", "regressor_1", "designed_2", "other_1"):
            await mlserver.unload(name)
            mlserver.remove_files(name)


# --- MLServer files, without a server ---------------------------------------------------------------


def _artifact(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"weights")
    return folder


@pytest.mark.parametrize(
    ("requirements", "file_name", "implementation", "uri"),
    [
        ({"sklearn"}, "model.joblib", "mlserver_sklearn.SKLearnModel", "./model.joblib"),
        ({"SKLearn", "python"}, "model.pkl", "mlserver_sklearn.SKLearnModel", "./model.pkl"),
        ({"xgboost"}, "model.bst", "mlserver_xgboost.XGBoostModel", "./model.bst"),
        ({"xgboost"}, "model.ubj", "mlserver_xgboost.XGBoostModel", "./model.ubj"),
        ({"lightgbm"}, "model.txt", "mlserver_lightgbm.LightGBMModel", "./model.txt"),
        ({"sklearn"}, "classifier.sav", "mlserver_sklearn.SKLearnModel", "./classifier.sav"),
        ({"mlflow", "sklearn"}, "MLmodel", "mlserver_mlflow.MLflowRuntime", "./"),
        ({"huggingface"}, "config.json", "mlserver_huggingface.HuggingFaceRuntime", "./"),
    ],
)
def test_requirements_choose_the_runtime_and_the_model_file(
    tmp_path: Path, requirements: set[str], file_name: str, implementation: str, uri: str
) -> None:
    files = ModelFiles("m", 7, _artifact(tmp_path / "a", file_name), frozenset(requirements))
    settings = model_settings(files)
    assert settings == {"name": "m_7", "implementation": implementation, "parameters": {"uri": uri, "version": "7"}}


def test_a_known_file_name_wins_over_other_files(tmp_path: Path) -> None:
    files = ModelFiles("m", 1, _artifact(tmp_path / "a", "README.md", "model.joblib"), frozenset({"sklearn"}))
    assert model_settings(files)["parameters"]["uri"] == "./model.joblib"


def test_an_ambiguous_artifact_is_refused(tmp_path: Path) -> None:
    files = ModelFiles("m", 1, _artifact(tmp_path / "a", "one.bin", "two.bin"), frozenset({"sklearn"}))
    with pytest.raises(ServerError, match=r"cannot tell which file .* is the model.*one\.bin, two\.bin"):
        model_settings(files)


async def test_unknown_requirements_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    server = MLServer(NOWHERE, "127.0.0.1:9", repository)
    files = ModelFiles("tf", 1, _artifact(tmp_path / "a", "saved_model.pb"), frozenset({"tensorflow", "gpu"}))
    with pytest.raises(ServerError) as caught:
        await server.place_files(files)
    message = str(caught.value)
    assert "gpu, tensorflow" in message
    for runtime in ("sklearn", "xgboost", "lightgbm", "mlflow", "huggingface", "mlserver_sklearn.SKLearnModel"):
        assert runtime in message
    assert caught.value.retryable is False
    assert list(repository.iterdir()) == []
    await server.close()


async def test_own_settings_are_kept_with_name_version_and_workers_set(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    server = MLServer(NOWHERE, "127.0.0.1:9", repository)
    artifact = _scaler_artifact(tmp_path / "scaler")
    await server.place_files(ModelFiles("scaler", 4, artifact, frozenset({"sklearn"}), instance_count=2))
    placed = repository / "scaler_4"
    settings = json.loads((placed / "model-settings.json").read_text())
    assert settings == {
        "name": "scaler_4",
        "implementation": "modelplane_test_scaler.Scaler",
        "parameters": {"version": "4", "extra": {"factor": 2}},
        "parallel_workers": 2,
    }
    assert (placed / "modelplane_test_scaler.py").read_text() == SCALER_RUNTIME
    # The artifact itself is untouched.
    assert json.loads((artifact / "model-settings.json").read_text())["name"] == "whatever-the-author-called-it"
    await server.close()


async def test_placing_again_replaces_the_folder_and_leaves_no_temporary_folders(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    server = MLServer(NOWHERE, "127.0.0.1:9", repository)
    first = _artifact(tmp_path / "first", "model.joblib", "extra.txt")
    second = _artifact(tmp_path / "second", "model.joblib")
    (second / "model.joblib").write_bytes(b"newer weights")
    await server.place_files(ModelFiles("m", 1, first, frozenset({"sklearn"})))
    await server.place_files(ModelFiles("m", 1, second, frozenset({"sklearn"})))
    assert sorted(path.name for path in repository.iterdir()) == ["m_1"]  # no hidden leftovers
    assert sorted(path.name for path in (repository / "m_1").iterdir()) == ["model-settings.json", "model.joblib"]
    assert (repository / "m_1" / "model.joblib").read_bytes() == b"newer weights"
    server.remove_files("m_1")
    server.remove_files("m_1")  # already gone: fine
    assert list(repository.iterdir()) == []
    await server.close()


# --- placement from the artifact cache: hard links where the filesystem allows, copies elsewhere -------


async def _cached(tmp_path: Path, artifact: Path) -> Path:
    """``artifact`` as an agent gets it from a .tar.gz: extracted into an ArtifactStore's cache."""
    archive = tmp_path / f"{artifact.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(artifact, arcname=artifact.name)
    store = ArtifactStore(tmp_path / "cache", environ={})
    folder = await store.fetch(ArtifactSource(str(archive)))
    assert store.owns(folder)
    return folder


def _inodes(folder: Path) -> dict[str, int]:
    return {path.relative_to(folder).as_posix(): path.stat().st_ino for path in folder.rglob("*") if path.is_file()}


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_mlserver_serves_a_cached_artifact_placed_by_hard_link(
    mlserver: InferenceServer, iris_model: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    artifact, expected = iris_model
    cached = await _cached(tmp_path, artifact)
    await mlserver.place_files(ModelFiles("linked-iris", 1, cached, frozenset({"sklearn"}), linkable=True))
    placed = mlserver.repository / "linked-iris_1"
    assert (placed / "model.joblib").stat().st_ino == (cached / "model.joblib").stat().st_ino
    assert (placed / "model.joblib").stat().st_nlink == 2
    assert not (cached / "model-settings.json").exists()  # written in the repository only

    await mlserver.load("linked-iris_1")
    rows = expected["rows"]
    flat = [value for row in rows for value in row]
    outputs = await _infer(
        mlserver, "linked-iris_1", [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP32", "data": flat}]
    )
    assert outputs[0]["data"] == expected["predictions"]
    await mlserver.unload("linked-iris_1")
    mlserver.remove_files("linked-iris_1")
    assert (cached / "model.joblib").stat().st_nlink == 1
    assert (cached / "model.joblib").read_bytes() == (artifact / "model.joblib").read_bytes()


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_triton_serves_a_cached_artifact_placed_by_hard_link(triton: InferenceServer, tmp_path: Path) -> None:
    cached = await _cached(tmp_path, _triton_artifact(tmp_path / "doubler"))
    config = (cached / "config.pbtxt").read_text()
    await triton.place_files(ModelFiles("linked-doubler", 1, cached, linkable=True))
    placed = triton.repository / "linked-doubler_1"
    assert _inodes(placed)["1/model.py"] == _inodes(cached)["1/model.py"]
    # The config Triton needs renamed is a new file; the cached one is unchanged.
    assert _inodes(placed)["config.pbtxt"] != _inodes(cached)["config.pbtxt"]
    assert (cached / "config.pbtxt").read_text() == config
    assert 'name: "linked-doubler_1"' in (placed / "config.pbtxt").read_text()

    await triton.load("linked-doubler_1")
    outputs = await _infer(
        triton, "linked-doubler_1", [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1, -2]}]
    )
    assert outputs[0]["data"] == [2.0, -4.0]
    await triton.unload("linked-doubler_1")
    triton.remove_files("linked-doubler_1")
    assert (cached / "1" / "model.py").stat().st_nlink == 1


async def test_a_users_own_folder_is_copied_not_linked(tmp_path: Path) -> None:
    """A folder used in place belongs to its user, who may rewrite a file in place: the server gets a copy."""
    server = MLServer(NOWHERE, "127.0.0.1:9", tmp_path / "repository")
    artifact = _artifact(tmp_path / "mine", "model.joblib")
    await server.place_files(ModelFiles("mine", 1, artifact, frozenset({"sklearn"})))
    assert _inodes(tmp_path / "repository" / "mine_1")["model.joblib"] != _inodes(artifact)["model.joblib"]
    await server.close()


def _another_filesystem(here: Path) -> Path | None:
    """The shared-memory folder when it is a filesystem other than ``here``'s (tmpfs on Linux)."""
    shared_memory = Path("/dev/shm")  # noqa: S108 -- a private folder is made inside it
    if shared_memory.is_dir() and shared_memory.stat().st_dev != here.stat().st_dev:
        return shared_memory
    return None


async def test_placement_copies_across_filesystems_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared_memory = _another_filesystem(tmp_path)
    if shared_memory is None:
        pytest.skip("needs a second filesystem (/dev/shm) beside the test's temporary folder")
    with tempfile.TemporaryDirectory(dir=shared_memory) as elsewhere:
        cached = await _cached(Path(elsewhere), _artifact(Path(elsewhere) / "far", "model.joblib"))
        server = MLServer(NOWHERE, "127.0.0.1:9", tmp_path / "repository")
        with caplog.at_level(logging.WARNING, logger="servers.v2_repository"):
            await server.place_files(ModelFiles("far", 1, cached, frozenset({"sklearn"}), linkable=True))
        placed = tmp_path / "repository" / "far_1" / "model.joblib"
        assert placed.read_bytes() == (cached / "model.joblib").read_bytes()
        assert placed.stat().st_nlink == 1
        assert "different filesystems" in caplog.text
        await server.close()


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden"])
def test_names_that_are_not_plain_folder_names_are_refused(tmp_path: Path, name: str) -> None:
    server = MLServer(NOWHERE, "127.0.0.1:9", tmp_path)
    with pytest.raises(ServerError, match="not a plain folder name"):
        server.remove_files(name)


async def test_an_unreachable_server_is_a_retryable_error(tmp_path: Path) -> None:
    server = MLServer(NOWHERE, "127.0.0.1:9", tmp_path)
    assert await server.ready() is False
    with pytest.raises(ServerError) as caught:
        await server.load("m_1")
    assert caught.value.retryable is True
    assert "unreachable" in str(caught.value)
    await server.close()


# --- Triton ---------------------------------------------------------------------------------------


FAILING_MODEL = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("the weights are missing")

    def execute(self, requests):
        return []
"""


def _triton_artifact(folder: Path, model_py: str = DOUBLER_MODEL) -> Path:
    return write_doubler(folder, model_py)


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_triton_serves_a_python_backend_model(triton: InferenceServer, tmp_path: Path) -> None:
    files = ModelFiles("doubler", 2, _triton_artifact(tmp_path / "doubler"), instance_count=2)
    await triton.place_files(files)
    config = (triton.repository / "doubler_2" / "config.pbtxt").read_text()
    assert 'name: "doubler_2"' in config
    assert "instance_group [{ count: 2 kind: KIND_CPU }]" in config

    await triton.load("doubler_2")
    assert await triton.ready()
    assert "doubler_2" in await triton.loaded_models()
    outputs = await _infer(
        triton, "doubler_2", [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 2.5, -3]}]
    )
    assert outputs[0]["name"] == "OUTPUT0"
    assert outputs[0]["data"] == [2.0, 5.0, -6.0]

    await triton.unload("doubler_2")
    # Triton unloads in the background; unload() returned only once it finished.
    states = await _index_states(triton, "doubler_2")
    assert "READY" not in states
    assert "UNLOADING" not in states
    assert "doubler_2" not in await triton.loaded_models()
    await triton.unload("doubler_2")  # again: not an error
    await triton.unload("never_placed_1")
    triton.remove_files("doubler_2")
    assert not (triton.repository / "doubler_2").exists()


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_triton_reports_a_failing_model_as_not_retryable(triton: InferenceServer, tmp_path: Path) -> None:
    await triton.place_files(ModelFiles("failing", 1, _triton_artifact(tmp_path / "failing", FAILING_MODEL)))
    with pytest.raises(ServerError) as caught:
        await triton.load("failing_1")
    assert caught.value.retryable is False
    assert "the weights are missing" in str(caught.value)
    assert "failing_1" not in await triton.loaded_models()
    triton.remove_files("failing_1")


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
async def test_triton_reports_a_model_it_cannot_find_as_not_retryable(triton: InferenceServer) -> None:
    with pytest.raises(ServerError) as caught:
        await triton.load("not_placed_1")
    assert caught.value.retryable is False
    assert "is the model placed" in str(caught.value)


async def test_triton_needs_a_config_pbtxt(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    server = TritonServer(NOWHERE, "127.0.0.1:9", repository)
    artifact = _artifact(tmp_path / "a", "model.onnx")
    with pytest.raises(ServerError, match=r"Triton models need a config\.pbtxt"):
        await server.place_files(ModelFiles("m", 1, artifact))
    assert list(repository.iterdir()) == []
    await server.close()


# --- config.pbtxt rewriting, without a server ----------------------------------------------------


@pytest.mark.parametrize(
    ("before", "count", "after"),
    [
        pytest.param(
            'name: "old"\nbackend: "python"\n',
            0,
            'name: "new_1"\nbackend: "python"\n',
            id="replace-name",
        ),
        pytest.param(
            'backend: "onnxruntime"\nmax_batch_size: 8\n',
            0,
            'name: "new_1"\nbackend: "onnxruntime"\nmax_batch_size: 8\n',
            id="add-missing-name",
        ),
        pytest.param(
            textwrap.dedent("""\
                # name: "in a comment" stays
                platform: "onnxruntime_onnx"
                input [
                  { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] }
                ]
                name:"old" # trailing comment
                output { name: "OUT]PUT" data_type: TYPE_FP32 dims: [ 2 ] }
                """),
            0,
            textwrap.dedent("""\
                # name: "in a comment" stays
                platform: "onnxruntime_onnx"
                input [
                  { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] }
                ]
                name:"new_1" # trailing comment
                output { name: "OUT]PUT" data_type: TYPE_FP32 dims: [ 2 ] }
                """),
            id="nested-names-comments-and-brackets-in-strings-untouched",
        ),
        pytest.param(
            'name: "old"\ninstance_group [\n  { count: 4 kind: KIND_GPU gpus: [ 0, 1 ] }\n]\nbackend: "python"\n',
            3,
            'name: "new_1"\ninstance_group [{ count: 3 kind: KIND_CPU }]\nbackend: "python"\n',
            id="replace-instance-group-list",
        ),
        pytest.param(
            'name: "old"\ninstance_group { count: 1 }\ninstance_group: { kind: KIND_GPU }\nbackend: "python"\n',
            2,
            'name: "new_1"\ninstance_group [{ count: 2 kind: KIND_CPU }]\nbackend: "python"\n',
            id="merge-repeated-instance-group-blocks",
        ),
        pytest.param(
            'backend: "python"',
            5,
            'name: "new_1"\nbackend: "python"\ninstance_group [{ count: 5 kind: KIND_CPU }]\n',
            id="append-instance-group-no-final-newline",
        ),
        pytest.param(
            'name: "old"\ninstance_group [ { count: 4 } ]\n',
            0,
            'name: "new_1"\ninstance_group [ { count: 4 } ]\n',
            id="count-zero-keeps-instance-group",
        ),
        pytest.param(
            "name: 'single \\' quoted', backend: \"python\";\n"
            'parameters { key: "name" value: { string_value: "x" } }\n',
            0,
            'name: "new_1", backend: "python";\nparameters { key: "name" value: { string_value: "x" } }\n',
            id="escapes-separators-and-parameters",
        ),
        pytest.param("", 1, 'name: "new_1"\ninstance_group [{ count: 1 kind: KIND_CPU }]\n', id="empty-config"),
    ],
)
def test_config_pbtxt_rewrite(before: str, count: int, after: str) -> None:
    assert rewrite_config(before, name="new_1", instance_count=count) == after


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('name: "old"\ninput [ { name: "x" }\n', "line 3: missing ']'"),
        ('name: "unterminated\n', "line 1: unterminated string"),
        ("input [ { name: 'x' ] }", "line 1: unexpected ']'"),
        ("name:", "expected a value"),
        ("{ }", "line 1: expected a field name"),
    ],
)
def test_config_pbtxt_that_does_not_parse_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ServerError, match=problem):
        rewrite_config(text, name="new_1")


# --- Launchers ------------------------------------------------------------------------------------


def _fake_venv(folder: Path, script: str) -> Path:
    """A "venv" whose mlserver binary is a shell script: for launch failures without a real server."""
    binary = folder / "bin" / "mlserver"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n" + script)
    binary.chmod(0o755)
    return folder


async def test_launch_with_a_bogus_venv_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"MLServer is not installed: .*/no-such-venv/bin/mlserver does not exist"):
        await launch_mlserver(tmp_path / "work", venv=tmp_path / "no-such-venv")
    with pytest.raises(LaunchError, match=r"Triton is not installed"):
        await launch_triton(tmp_path / "work", venv=tmp_path / "no-such-venv")


async def test_launch_of_a_binary_that_exits_reports_its_log(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    venv = _fake_venv(tmp_path / "venv", f'echo $$ > {pid_file}\necho "boom: no settings"\nexit 3\n')
    with pytest.raises(LaunchError) as caught:
        await launch_mlserver(tmp_path / "work", venv=venv, ready_timeout=60)
    assert "exited with status 3" in str(caught.value)
    assert "boom: no settings" in str(caught.value)
    assert _pid_gone(int(pid_file.read_text()))


async def test_launch_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    venv = _fake_venv(tmp_path / "venv", f"echo $$ > {pid_file}\necho waiting forever\nexec sleep 600\n")
    with pytest.raises(LaunchError) as caught:
        await launch_mlserver(tmp_path / "work", venv=venv, ready_timeout=1)
    assert "not ready after 1s" in str(caught.value)
    assert "waiting forever" in str(caught.value)
    assert _pid_gone(int(pid_file.read_text()))


def test_an_installed_venv_is_reused(tmp_path: Path) -> None:
    venv = tmp_path / "mlserver"
    venv.mkdir()
    (venv / MARKER).write_text("\n".join(REQUIREMENTS["mlserver"]) + "\n")
    assert server_venv("mlserver", tmp_path) == venv  # returns at once: nothing is installed
    with pytest.raises(ValueError, match="unknown server kind 'torchserve'"):
        server_venv("torchserve", tmp_path)


@pytest.mark.servers
@pytest.mark.timeout(SERVER_TEST_TIMEOUT)
@pytest.mark.parametrize("kind", ["mlserver", "triton"])
async def test_stop_is_idempotent_and_the_process_is_gone(tmp_path: Path, kind: str) -> None:
    venv = await asyncio.to_thread(server_venv, kind)
    launch = launch_mlserver if kind == "mlserver" else launch_triton
    server = await launch(tmp_path, venv=venv)
    try:
        assert server.running
        assert server.log_path == tmp_path / f"{kind}.log"
        adapter = server.adapter()
        assert await adapter.ready()
        await adapter.close()
        assert await server.stop() == 0  # a clean exit on SIGTERM
        assert await server.stop() == 0
        assert _pid_gone(server.pid)
        assert not server.running
    finally:
        await server.stop()


def test_a_trained_models_pickle_beside_its_metadata_is_the_model(tmp_path: Path) -> None:
    (tmp_path / "retail_forecasting_model.pkl").write_bytes(b"pickle")
    (tmp_path / "metadata.json").write_text("{}")
    files = ModelFiles("trained", 1, tmp_path, frozenset({"sklearn"}))
    assert model_settings(files)["parameters"]["uri"] == "./retail_forecasting_model.pkl"
    (tmp_path / "other.joblib").write_bytes(b"pickle")
    with pytest.raises(ServerError, match="cannot tell which file"):
        model_settings(files)


def test_free_ports_are_below_the_kernels_ephemeral_range() -> None:
    """A port bind(0) hands out comes from the ephemeral range, where any outgoing connection may take it as its
    source port between the pick and the server's own bind (seen: MLServer exiting with 'address already in use')."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(200)
    assert len(set(ports)) == 200
    assert all(1024 < port < low for port in ports), sorted(ports)[-5:]


@pytest.mark.parametrize("kind", ["mlserver", "triton"])
async def test_a_server_whose_port_was_taken_meanwhile_starts_on_other_ports(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlserver_venv: Path, triton_venv: Path
) -> None:
    """Ports are picked, then the server binds them: anything may take one in between. The launcher notices
    (the server exits saying so) and starts it again on ports picked anew."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    picks: list[list[int]] = []

    def first_pick_taken(count: int) -> list[int]:
        ports = free_ports(count)
        if not picks:
            ports[0] = taken_port  # the HTTP port, the first a server binds
        picks.append(ports)
        return ports

    monkeypatch.setattr(launchers, "free_ports", first_pick_taken)
    try:
        if kind == "mlserver":
            server = await launch_mlserver(tmp_path / "work", venv=mlserver_venv)
        else:
            server = await launch_triton(tmp_path / "work", venv=triton_venv)
        try:
            assert len(picks) == 2
            assert server.http_url == f"http://127.0.0.1:{picks[1][0]}"
            assert server.running
        finally:
            await server.stop()
    finally:
        taken.close()
