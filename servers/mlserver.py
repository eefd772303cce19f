"""The MLServer adapter: places a model with its ``model-settings.json`` and drives MLServer's repository API.

The runtime comes from the artifact's own ``model-settings.json`` when it has one (custom runtimes and
hand-tuned settings keep working); otherwise the model's requirements choose one of MLServer's
standard runtimes, and the single model file in the artifact becomes ``parameters.uri``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from servers.adapter import ModelFiles, ServerError
from servers.v2_repository import V2Http, model_dir, place_atomically, ready_names, remove_dir, write_new_file

SETTINGS_FILE = "model-settings.json"

# Requirement -> runtime, most specific first: an MLflow or Hugging Face model may also list the
# framework it wraps (e.g. {"mlflow", "sklearn"}), and then the wrapper's runtime is the right one.
RUNTIMES: dict[str, str] = {
    "mlflow": "mlserver_mlflow.MLflowRuntime",
    "huggingface": "mlserver_huggingface.HuggingFaceRuntime",
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
}
# Runtimes that read a model folder rather than one file.
_FOLDER_RUNTIMES = frozenset({"mlflow", "huggingface"})
# File names the single-file runtimes save to, in the order they are looked for.
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
MODEL_FILE_NAMES = ("model.joblib", "model.pkl", "model.bst", "model.json", "model.txt", "model.ubj")


class MLServer:
    """One MLServer replica, driven through its V2 REST API (aiohttp) and its model repository folder."""

    def __init__(
        self,
        http_url: str,
        grpc_target: str,
        repository: Path,
        *,
        load_timeout: float = 120.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.kind: str = "mlserver"
        self.http_url = http_url
        self.grpc_target = grpc_target
        self.repository = repository
        self.load_timeout = load_timeout
        self._http = V2Http("MLServer", http_url, request_timeout=request_timeout)

    async def ready(self) -> bool:
        return await self._http.ready()

    async def live(self, timeout: float) -> bool:
        return await self._http.live(timeout)

    async def place_files(self, files: ModelFiles) -> None:
        target = model_dir(self.repository, files.loaded_name)
        # Everything that can reject the model runs before anything is written.
        settings = await asyncio.to_thread(model_settings, files)
        text = json.dumps(settings, indent=2) + "\n"

        def write_settings(folder: Path) -> None:
            write_new_file(folder / SETTINGS_FILE, text)

        await asyncio.to_thread(place_atomically, files.artifact_dir, target, write_settings, link=files.linkable)

    async def load(self, loaded_name: str) -> None:
        # MLServer answers a load once the model is ready (or has failed), so no polling is needed.
        reply = await self._http.call(
            "POST", f"/v2/repository/models/{loaded_name}/load", body={}, timeout=self.load_timeout
        )
        if not reply.ok:
            # MLServer reports a model whose own load raised (a bad artifact) as a 500 with the traceback
            # as plain text: that is the model's fault, not the server's, so retrying will not help.
            model_fault = reply.status < 500 or (reply.status == 500 and reply.is_traceback)
            raise self._http.failure("load", loaded_name, reply, model_fault=model_fault)

    async def unload(self, loaded_name: str) -> None:
        reply = await self._http.call("POST", f"/v2/repository/models/{loaded_name}/unload", body={})
        if not reply.ok and reply.status != 404:
            raise self._http.failure("unload", loaded_name, reply)

    async def loaded_models(self) -> list[str]:
        return ready_names(await self._http.index({}))

    def remove_files(self, loaded_name: str) -> None:
        remove_dir(model_dir(self.repository, loaded_name))

    async def close(self) -> None:
        await self._http.close()


def model_settings(files: ModelFiles) -> dict[str, Any]:
    """The ``model-settings.json`` content for ``files``. Raises ServerError when no runtime fits."""
    own = files.artifact_dir / SETTINGS_FILE
    if own.is_file():
        settings = _read_own_settings(own)
    else:
        runtime = _runtime_key(files.requirements)
        settings = {"implementation": RUNTIMES[runtime], "parameters": {"uri": _uri_for(files, runtime)}}
    parameters = settings.setdefault("parameters", {})
    if not isinstance(parameters, dict):
        raise ServerError(f"{own}: 'parameters' must be an object")
    settings["name"] = files.loaded_name
    parameters["version"] = str(files.version)
    if files.parameters:
        # The model spec's parameters reach the runtime as `extra` (e.g. a Hugging Face `task`);
        # they override the artifact's values, being the more specific instruction.
        extra = parameters.get("extra") or {}
        if not isinstance(extra, dict):
            raise ServerError(f"the artifact's {SETTINGS_FILE}: 'parameters.extra' must be an object")
        parameters["extra"] = {**extra, **files.parameters}
    if files.instance_count > 0:
        settings["parallel_workers"] = files.instance_count
    return settings


def _read_own_settings(path: Path) -> dict[str, Any]:
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ServerError(f"the artifact's {SETTINGS_FILE} is unreadable: {error}") from error
    if not isinstance(settings, dict) or not isinstance(settings.get("implementation"), str):
        raise ServerError(f"the artifact's {SETTINGS_FILE} must be an object naming an 'implementation'")
    return settings


def _runtime_key(requirements: frozenset[str]) -> str:
    wanted = {requirement.lower() for requirement in requirements}
    for requirement in RUNTIMES:
        if requirement in wanted:
            return requirement
    shown = ", ".join(sorted(requirements)) or "none"
    raise ServerError(
        f"no MLServer runtime for requirements [{shown}] and the artifact has no {SETTINGS_FILE}; "
        f"known: {', '.join(f'{key} ({value})' for key, value in RUNTIMES.items())}"
    )


def _uri_for(files: ModelFiles, runtime: str) -> str:
    if runtime in _FOLDER_RUNTIMES:
        return "./"
    for name in MODEL_FILE_NAMES:
        if (files.artifact_dir / name).is_file():
            return f"./{name}"
    present = sorted(path.name for path in files.artifact_dir.iterdir()) if files.artifact_dir.is_dir() else []
    if len(present) == 1 and (files.artifact_dir / present[0]).is_file():
        return f"./{present[0]}"
    # A trained model's folder (trainer/): one pickled model beside its metadata.json.
    pickles = [name for name in present if name.endswith(PICKLE_SUFFIXES) and (files.artifact_dir / name).is_file()]
    if len(pickles) == 1:
        return f"./{pickles[0]}"
    raise ServerError(
        f"cannot tell which file in {files.artifact_dir} is the model: expected one of "
        f"{', '.join(MODEL_FILE_NAMES)} or a single file, found [{', '.join(present) or 'nothing'}]"
    )
