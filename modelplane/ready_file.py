"""The ready file every process writes once it serves: JSON with its pid and addresses.

Written to a temporary sibling and renamed into place, so a reader (a test, a supervisor, `./run demo`)
never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_ready_file(path: Path, fields: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), **fields}) + "\n")
    temporary.replace(path)
