"""The module MLServer imports from a trained model's folder (copied there as ``modelplane_designed_runtime.py``).

model-settings.json names ``modelplane_designed_runtime.DesignedModelRuntime``. MLServer imports it with the
model's folder first on ``sys.path`` and reloads it for every model it loads; a top-level module is found
through ``sys.path`` again on reload, so each load runs this file from the folder being loaded. (Naming the
package's own module instead would tie every later load to the first folder's package path, and fail once
that folder is removed.)

This file then imports the folder's ``modelplane_designed_model/`` under a name of its own, derived from the
package's contents: models trained by the same modelplane share one copy in memory, models trained by another
version get theirs, and nothing is read from a folder after its model loaded (every module is imported here).
Standard library only; nothing from modelplane is installed where it runs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "modelplane_designed_model"


def load_package(folder: Path) -> ModuleType:
    """``folder``'s copy of the package, imported under ``PACKAGE_<hash of its modules>``; its runtime module."""
    package = folder / PACKAGE
    digest = hashlib.sha256()
    for source in sorted(package.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    name = f"{PACKAGE}_{digest.hexdigest()[:16]}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, package / "__init__.py", submodule_search_locations=[str(package)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {package}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return importlib.import_module(f"{name}.mlserver_runtime")


DesignedModelRuntime = load_package(Path(__file__).resolve().parent).DesignedModelRuntime
