"""What a trained model's folder holds besides the artifact so that MLServer serves the whole design.

``model-settings.json`` names the runtime ``modelplane_designed_model.mlserver_runtime.DesignedModelRuntime``,
with ``parameters.uri`` the artifact and the model's ``inputs`` and ``outputs`` (V2 model metadata); and
``modelplane_designed_model/`` is a copy of servers/designed_model (its modules only). The agent's MLServer
adapter keeps an artifact's own model-settings.json (adding name and version), and MLServer imports the runtime
from the model's folder; see servers/designed_model/__init__.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import servers.designed_model
from servers.designed_model.served_model import ServedModel

RUNTIME_PACKAGE = "modelplane_designed_model"
RUNTIME_CLASS = f"{RUNTIME_PACKAGE}.mlserver_runtime.DesignedModelRuntime"
SETTINGS_FILE = "model-settings.json"
_SOURCE = Path(servers.designed_model.__file__).parent


def write_serving_bundle(output: Path, artifact_name: str) -> list[Path]:
    """Write model-settings.json and the runtime package into ``output``; the files written, relative to it."""
    package = output / RUNTIME_PACKAGE
    if package.exists():
        shutil.rmtree(package)  # a retried run in the same folder: never a mix of two copies
    package.mkdir(parents=True)
    written: list[Path] = []
    for module in sorted(_SOURCE.glob("*.py")):
        shutil.copyfile(module, package / module.name)
        written.append(Path(RUNTIME_PACKAGE) / module.name)
    # Loading the folder as the server will is the check that it can be served (a failure is a trainer bug);
    # it also says which inputs and outputs the model has, for the server's model metadata.
    served = ServedModel.load(output / artifact_name)
    settings = {
        "implementation": RUNTIME_CLASS,
        "parameters": {"uri": f"./{artifact_name}"},
        **served.tensor_metadata(),
    }
    (output / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    written.append(Path(SETTINGS_FILE))
    return written
