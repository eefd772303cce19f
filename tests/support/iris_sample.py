"""samples/train_iris.py, run by the MLServer venv's Python so the pickle matches MLServer's scikit-learn: what the
tests that serve the iris sample share."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from servers.launch import server_venv

REPO = Path(__file__).resolve().parents[2]


def train_iris_sample(out: Path) -> dict[str, Any]:
    """Train into ``out`` (model.joblib, model.yaml); what the script prints: a V2 ``request`` and the classes
    ``expected`` for it."""
    done = subprocess.run(
        [str(server_venv("mlserver") / "bin" / "python"), str(REPO / "samples" / "train_iris.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed: dict[str, Any] = json.loads(done.stdout)
    return printed
