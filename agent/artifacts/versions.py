"""Choosing the version folder inside a fetched model folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

from agent.artifacts.errors import ArtifactError

SETTINGS_FILES = frozenset({"model-settings.json", "config.pbtxt"})
_NUMBER = re.compile(r"[0-9]+")
# Folders that archivers add beside the content; ignored when unwrapping an archive's single top folder.
_ARCHIVER_LITTER = frozenset({"__MACOSX"})


def _visible(root: Path) -> list[os.DirEntry[str]]:
    """The entries that count: hidden ones (``.git``, ``.DS_Store``, our own markers) never do."""
    with os.scandir(root) as entries:
        return [entry for entry in entries if not entry.name.startswith(".")]


def _numbered_folders(entries: list[os.DirEntry[str]]) -> dict[str, int]:
    return {entry.name: int(entry.name) for entry in entries if _NUMBER.fullmatch(entry.name) and entry.is_dir()}


def select_version(root: Path, artifact_version: int | None, label: str) -> Path:
    """The folder to serve from ``root``.

    With ``artifact_version`` N: the subfolder named N (``007`` also matches 7, ``7`` is preferred).
    Without: ``root`` itself if it holds a settings file (model-settings.json, config.pbtxt) or any
    file whose name is not a number; else the highest numbered subfolder; else ``root``.
    """
    try:
        entries = _visible(root)
    except OSError as exc:
        raise ArtifactError(f"cannot list {label}: {exc.strerror or exc}") from exc
    numbered = _numbered_folders(entries)
    if artifact_version is not None:
        if artifact_version < 0:
            raise ArtifactError(f"artifact version must not be negative, got {artifact_version}")
        if str(artifact_version) in numbered:
            return root / str(artifact_version)
        for name, number in sorted(numbered.items()):
            if number == artifact_version:
                return root / name
        present = ", ".join(sorted(numbered, key=lambda name: (numbered[name], name))) or "none"
        raise ArtifactError(f"{label} has no version folder {artifact_version}; numbered folders present: {present}")
    if any(entry.name in SETTINGS_FILES for entry in entries):
        return root
    if any(entry.is_file() and not _NUMBER.fullmatch(entry.name) for entry in entries):
        return root
    if numbered:
        highest = max(numbered, key=lambda name: (numbered[name], name))
        return root / highest
    return root


def unwrap_single_folder(root: Path) -> Path:
    """An archive whose top level is one folder that is not a version number (``mymodel/...``, as
    ``tar czf mymodel.tgz mymodel`` makes it) is served from that folder; otherwise from ``root``."""
    entries = [entry for entry in _visible(root) if entry.name not in _ARCHIVER_LITTER]
    if len(entries) == 1 and entries[0].is_dir(follow_symlinks=False) and not _NUMBER.fullmatch(entries[0].name):
        return root / entries[0].name
    return root
