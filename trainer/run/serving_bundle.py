"""What a trained model's folder holds besides the artifact so that MLServer serves the whole design.

- ``modelplane_designed_model/``: a copy of servers/designed_model (its modules only);
- ``modelplane_designed_runtime.py``: a copy of servers/designed_model_entry.py, the module MLServer imports;
- ``model-settings.json``: ``implementation`` ``modelplane_designed_runtime.DesignedModelRuntime``,
  ``parameters.uri`` the artifact, and the model's ``inputs`` and ``outputs`` (V2 model metadata).

The agent's MLServer adapter keeps an artifact's own model-settings.json (adding name and version); see
servers/designed_model/__init__.py and servers/designed_model_entry.py for how MLServer imports the runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import servers.designed_model
from servers.designed_model.served_model import ServedModel

RUNTIME_PACKAGE = "modelplane_designed_model"
ENTRY_MODULE = "modelplane_designed_runtime"
RUNTIME_CLASS = f"{ENTRY_MODULE}.DesignedModelRuntime"
SETTINGS_FILE = "model-settings.json"
_SOURCE = Path(servers.designed_model.__file__).parent
_ENTRY_SOURCE = _SOURCE.parent / "designed_model_entry.py"


def write_serving_bundle(output: Path, artifact_name: str) -> None:
    """Write the runtime package, the entry module and model-settings.json into ``output``."""
    package = output / RUNTIME_PACKAGE
    if package.exists():
        shutil.rmtree(package)  # a retried run in the same folder: never a mix of two copies
    package.mkdir(parents=True)
    for module in sorted(_SOURCE.glob("*.py")):
        shutil.copyfile(module, package / module.name)
    shutil.copyfile(_ENTRY_SOURCE, output / f"{ENTRY_MODULE}.py")
    # Loading the folder as the server will is the check that it can be served (a failure is a trainer bug);
    # it also says which inputs and outputs the model has, for the server's model metadata.
    served = ServedModel.load(output / artifact_name)
    settings = {
        "implementation": RUNTIME_CLASS,
        "parameters": {"uri": f"./{artifact_name}"},
        **served.tensor_metadata(),
    }
    (output / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def bundle_files(output: Path) -> list[Path]:
    """The bundle's files in ``output`` (relative), model-settings.json last: a reader that finds it finds the
    rest, so an upload that stops midway never leaves a folder that looks servable and is not."""
    package = sorted(Path(RUNTIME_PACKAGE) / module.name for module in (output / RUNTIME_PACKAGE).glob("*.py"))
    entry = [Path(f"{ENTRY_MODULE}.py")] if (output / f"{ENTRY_MODULE}.py").is_file() else []
    settings = [Path(SETTINGS_FILE)] if (output / SETTINGS_FILE).is_file() else []
    return [*package, *entry, *settings]
