"""The index file the agent keeps next to its server's repository: each model it holds, with its memory and the
cached artifact it holds, so that after an agent restart it can take over what the server still serves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modelplane.whole_numbers import is_whole_number

log = logging.getLogger(__name__)
INDEX_FILE = ".modelplane-agent.json"


def is_agents_name(loaded_name: str) -> bool:
    """``<name>_<version>``: how this agent names what it loads (anything else on the server is not ours)."""
    name, _, version = loaded_name.rpartition("_")
    return bool(name) and is_whole_number(version)


def read_index(repository: Path) -> dict[str, dict[str, Any]]:
    """The index as last written (loaded name -> entry); empty when it is missing or unreadable."""
    try:
        document = json.loads((repository / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {name: entry for name, entry in document.items() if isinstance(entry, dict)}


def write_index(repository: Path, document: dict[str, dict[str, Any]]) -> None:
    """Replace the index in one step (a crash leaves the old one or the new one, never half of either)."""
    path = repository / INDEX_FILE
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(document))
        temporary.replace(path)
    except OSError as error:
        log.warning("could not write %s: %s", path, error)
