"""Limits and member-name checks shared by archive extraction and S3 downloads."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.artifacts.errors import ArtifactError

GIB = 1 << 30
CHUNK_BYTES = 1 << 20

_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[\\/]+")


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    """What one fetched tree (an extracted archive or an S3 prefix) may hold.

    ``max_files`` counts every member (files and folders); the byte limits count the bytes actually
    written, never the sizes an archive header or a listing claims.
    """

    max_total_bytes: int = 8 * GIB
    max_files: int = 100_000
    max_file_bytes: int = 4 * GIB

    def __post_init__(self) -> None:
        for name in ("max_total_bytes", "max_files", "max_file_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ExtractLimits.{name} must be at least 1")


class UnsafeName(Exception):  # noqa: N818 -- a reason, caught by the callers and turned into an ArtifactError
    """A member name that must not be written; the message is the reason."""


def safe_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive member or object key, relative to the target folder.

    Both ``/`` and ``\\`` separate components (archives made on Windows use backslashes). Empty and
    ``.`` components are dropped, so ``./a//b`` is ``("a", "b")`` and ``./`` is ``()`` (the target
    itself). Raises UnsafeName for an absolute path, a drive letter, a ``..`` component or a NUL byte.
    """
    if "\x00" in name:
        raise UnsafeName("holds a NUL byte")
    if name.startswith(("/", "\\")):
        raise UnsafeName("is an absolute path")
    if _DRIVE_LETTER.match(name):
        raise UnsafeName("starts with a drive letter")
    parts = tuple(part for part in _SEPARATORS.split(name) if part not in ("", "."))
    if ".." in parts:
        raise UnsafeName("has a '..' component")
    return parts


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class Budget:
    """Counts members and written bytes against ExtractLimits; ``what`` names the tree in messages."""

    def __init__(self, limits: ExtractLimits, what: str, stop: threading.Event | None = None) -> None:
        self.limits = limits
        self.what = what
        self.stop = stop
        self.members = 0
        self.files = 0
        self.total_bytes = 0

    def add_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_files:
            raise ArtifactError(
                f"{self.what} holds more than {self.limits.max_files} files (limit reached at {name!r})"
            )

    def check_declared_size(self, name: str, size: int) -> None:
        """Refuse early when a header or listing already claims too much (the real count still follows)."""
        if size > self.limits.max_file_bytes:
            raise ArtifactError(
                f"{self.what}: {name!r} is {size} bytes, over the per-file limit of {self.limits.max_file_bytes}"
            )
        if self.total_bytes + size > self.limits.max_total_bytes:
            raise ArtifactError(f"{self.what} is over the total size limit of {self.limits.max_total_bytes} bytes")

    def _count(self, name: str, file_bytes: int, added: int) -> None:
        self.total_bytes += added
        if file_bytes > self.limits.max_file_bytes:
            raise ArtifactError(
                f"{self.what}: {name!r} is over the per-file limit of {self.limits.max_file_bytes} bytes"
            )
        if self.total_bytes > self.limits.max_total_bytes:
            raise ArtifactError(f"{self.what} is over the total size limit of {self.limits.max_total_bytes} bytes")
        if self.stop is not None and self.stop.is_set():
            raise ArtifactError(f"{self.what}: fetch cancelled")

    def copy(self, source: Readable, target: Path, name: str) -> int:
        """Stream ``source`` into a new regular file ``target``, counting what is written. Returns the size."""
        self.files += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        written = 0
        with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                written += len(chunk)
                self._count(name, written, len(chunk))
                out.write(chunk)
        return written


class Tree:
    """Creates folders and files under a root that only this code writes to (so it holds no links)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = os.path.realpath(root)
        self._checked: set[tuple[str, ...]] = set()

    def folder(self, parts: tuple[str, ...]) -> Path:
        path = self.root.joinpath(*parts)
        if parts not in self._checked:
            path.mkdir(parents=True, exist_ok=True)
            real = os.path.realpath(path)
            if os.path.commonpath([real, self._real_root]) != self._real_root:  # defence in depth
                raise UnsafeName("resolves outside the target folder")
            self._checked.add(parts)
        return path

    def file(self, parts: tuple[str, ...]) -> Path:
        """The path for a file member; its parent folders are created. ``parts`` must not be empty."""
        return self.folder(parts[:-1]) / parts[-1]
