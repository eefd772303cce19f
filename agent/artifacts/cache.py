"""The on-disk cache of fetched trees.

Layout of ``cache_dir``::

    <key>/.complete          JSON marker: uri, fetched_at, and what decides reuse (ETags, digests, sizes)
    <key>/data/...           the fetched tree
    .tmp-<key16>-<random>/   an entry being built (removed at start-up: a fetch that never finished)
    .old-<key16>-<random>/   a replaced entry being removed

An entry is built in a temporary folder whose marker is written last, then renamed to ``<key>`` in
one step, so a ``<key>`` folder is always complete; one without a readable marker (or whose marker names
a tree outside the entry) is treated as incomplete and removed. An entry is removed by renaming it to
``.old-...`` first, so a removal cut short leaves only what start-up removes. A cache folder belongs to
one ArtifactStore (one agent process).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.artifacts.safety import UnsafeName, safe_parts

MARKER = ".complete"
DATA = "data"
_KEY = re.compile(r"[0-9a-f]{64}")


def cache_key(*material: str) -> str:
    """The sha256 of the parts that identify a fetched tree (never credentials)."""
    digest = hashlib.sha256()
    for part in material:
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()


def is_key(text: str) -> bool:
    return _KEY.fullmatch(text) is not None


def tree_bytes(root: Path) -> int:
    """The sizes of the regular files under ``root``, added up (links are not followed)."""
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def resolved_inside(path: Path, folder: Path) -> Path | None:
    """``path`` relative to ``folder``, both resolved (``..`` and links followed), or None when it lies outside.

    Never a lexical check: ``folder/../x`` and a link inside ``folder`` to elsewhere lie outside it.
    """
    try:
        return path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):  # outside; unreadable; a link loop (RuntimeError before 3.13)
        return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CacheDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, key: str) -> Path:
        return self.root / key

    def read_marker(self, key: str) -> dict[str, Any] | None:
        """The marker of a complete entry, or None (also when its ``tree`` is not a folder inside the entry)."""
        try:
            loaded = json.loads((self.entry(key) / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(loaded, dict) or not self._tree_inside(key, loaded.get("tree", DATA)):
            return None
        return loaded

    def _tree_inside(self, key: str, tree: object) -> bool:
        if not isinstance(tree, str):
            return False
        try:
            parts = safe_parts(tree)
        except UnsafeName:
            return False
        entry = self.entry(key)
        inside = resolved_inside(entry.joinpath(*parts), entry)
        return inside is not None and inside.parts[:1] == (DATA,)

    def key_of(self, path: Path) -> str | None:
        """The key of the entry ``path`` lies in, judged on resolved paths, or None."""
        inside = resolved_inside(path, self.root)
        if inside is None or not inside.parts or not is_key(inside.parts[0]):
            return None
        return inside.parts[0]

    def new_temp(self, key: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".tmp-{key[:16]}-{secrets.token_hex(6)}"
        path.mkdir()
        return path

    def commit(self, key: str, temp: Path, marker: dict[str, Any]) -> Path:
        """Write the marker last, then put ``temp`` in place of the entry (replacing an older one)."""
        partial = temp / f"{MARKER}.part"
        with partial.open("w", encoding="utf-8") as file:
            json.dump(marker, file, indent=2, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        partial.replace(temp / MARKER)
        entry = self.entry(key)
        old: Path | None = None
        if entry.exists():
            old = self.root / f".old-{key[:16]}-{secrets.token_hex(6)}"
            entry.rename(old)
        temp.rename(entry)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return entry

    @staticmethod
    def discard(temp: Path) -> None:
        shutil.rmtree(temp, ignore_errors=True)

    def remove(self, key: str) -> None:
        entry = self.entry(key)
        if not entry.exists():
            return
        old = self.root / f".old-{key[:16]}-{secrets.token_hex(6)}"
        entry.rename(old)
        shutil.rmtree(old, ignore_errors=True)

    def complete_keys(self) -> list[str]:
        """The keys of the complete entries."""
        try:
            names = [child.name for child in self.root.iterdir()]
        except FileNotFoundError:
            return []
        return sorted(name for name in names if _KEY.fullmatch(name) and self.read_marker(name) is not None)

    def measure(self, key: str) -> int:
        """Bytes the entry's files take (their sizes; links are never made inside the cache)."""
        return tree_bytes(self.entry(key))

    def clean(self) -> None:
        """Remove what an earlier process left unfinished: temporary folders and entries without a marker."""
        try:
            children = list(self.root.iterdir())
        except FileNotFoundError:
            return
        for child in children:
            if child.name.startswith((".tmp-", ".old-")) or (
                _KEY.fullmatch(child.name) and child.is_dir() and self.read_marker(child.name) is None
            ):
                shutil.rmtree(child, ignore_errors=True)
