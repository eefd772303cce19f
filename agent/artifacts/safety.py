"""Limits and member-name checks shared by archive extraction and S3 downloads."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.artifacts.errors import ArtifactError

MIB = 1 << 20
GIB = 1 << 30
CHUNK_BYTES = 1 << 20

# Real model trees are a few folders deep; a limit keeps one member from making thousands of folders.
MAX_DEPTH = 64
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[\\/]+")


# The per-model defaults, here and nowhere else: the agent's --max-model-disk and --max-compression-ratio take
# theirs from these. Why these values:
# - 8 GiB per model version (fetched, or extracted from an archive): far above what CPU MLServer/Triton replicas
#   serve (scikit-learn, XGBoost, ONNX models take megabytes; a quantised 7B LLM ~4-5 GiB, in one file), low
#   enough that one wrong URI cannot fill a disk. A bigger model needs only that flag: one file may take all of
#   it (there is no separate per-file default).
DEFAULT_MAX_MODEL_BYTES = 8 * GIB
# - 100:1 expansion for an archive as a whole: tensors of floats compress ~1.1-2:1, pickles and text ~3-10:1, so a
#   real model is far below it, while a deflate bomb reaches ~1000:1 and bzip2, xz or a sparse tar member
#   millions to one. Archives that expand to under RATIO_EXEMPT_BYTES are never refused for it.
DEFAULT_MAX_COMPRESSION_RATIO = 100
RATIO_EXEMPT_BYTES = 16 * MIB


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    """What one fetched tree (an extracted archive or an S3 prefix) may hold: the per-model limits.

    ``max_files`` bounds the members read (files and folders) and, separately, the files and folders
    written, including the parent folders a member's path makes; the byte limits count the bytes actually
    written, never the sizes an archive header or a listing claims (those only refuse early).

    - ``max_total_bytes``: what one model version's tree may take on disk (the agent's --max-model-disk);
    - ``max_file_bytes``: a narrower limit for each file, or None (the default, and the agent's): one file
      may take all of ``max_total_bytes``;
    - ``max_ratio``: an archive may expand to at most ``max_ratio`` times its own size (the agent's
      --max-compression-ratio), and always to ``ratio_exempt_bytes``. Extraction stops at the first byte
      over, so a decompression bomb costs that much disk and time, never what it claims.
    """

    max_total_bytes: int = DEFAULT_MAX_MODEL_BYTES
    max_files: int = 100_000
    max_file_bytes: int | None = None
    max_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO
    ratio_exempt_bytes: int = RATIO_EXEMPT_BYTES

    def __post_init__(self) -> None:
        for name in ("max_total_bytes", "max_files", "max_file_bytes", "max_ratio", "ratio_exempt_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"ExtractLimits.{name} must be at least 1")

    def file_refusal(self, what: str, size: int) -> ArtifactError | None:
        """Why one file of ``size`` bytes may not be written, naming the limit it is over; None if it may."""
        if self.max_file_bytes is not None and size > self.max_file_bytes:
            return ArtifactError(f"{what} is {size} bytes, over the per-file limit of {self.max_file_bytes}")
        if size > self.max_total_bytes:
            return ArtifactError(
                f"{what} is {size} bytes, over the per-model size limit of {self.max_total_bytes} bytes "
                "(the agent's --max-model-disk)"
            )
        return None

    def expansion_limit(self, archive_bytes: int) -> int:
        """The most an archive of ``archive_bytes`` may expand to under the compression ratio limit."""
        return max(self.max_ratio * archive_bytes, self.ratio_exempt_bytes)

    def ratio_refusal(self, what: str, archive_bytes: int, written: int) -> ArtifactError:
        return ArtifactError(
            f"{what} expands to more than {self.expansion_limit(archive_bytes)} bytes, over the compression ratio "
            f"limit of {self.max_ratio}:1 for its {archive_bytes} bytes (the agent's --max-compression-ratio); "
            f"extraction stopped after {written} bytes and was undone: refused as a likely decompression bomb"
        )

    def size_refusal(self, what: str, written: int) -> ArtifactError:
        return ArtifactError(
            f"{what} is over the per-model size limit of {self.max_total_bytes} bytes (the agent's "
            f"--max-model-disk); stopped after {written} bytes and undone"
        )


class Charge(Protocol):
    """Where written bytes are counted against the artifact cache's limit (quota.py)."""

    def take(self, count: int) -> None:
        """Count ``count`` more bytes about to be written; raises ArtifactError when they do not fit."""
        ...

    def check_room(self, count: int, claim: str) -> None:
        """Refuse early when ``count`` more bytes (what ``claim`` says is coming) would not fit."""
        ...


class UnsafeName(Exception):  # noqa: N818 -- a reason, caught by the callers and turned into an ArtifactError
    """A member name that must not be written; the message is the reason."""


def safe_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive member or object key, relative to the target folder.

    Both ``/`` and ``\\`` separate components (archives made on Windows use backslashes). Empty and
    ``.`` components are dropped, so ``./a//b`` is ``("a", "b")`` and ``./`` is ``()`` (the target
    itself). Raises UnsafeName for an absolute path, a drive letter, a ``..`` component, a NUL byte or
    more than MAX_DEPTH components.
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
    if len(parts) > MAX_DEPTH:
        raise UnsafeName(f"is nested more than {MAX_DEPTH} folders deep")
    return parts


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class Budget:
    """Counts members and written bytes against ExtractLimits; ``what`` names the tree in messages.

    ``archive_bytes`` (for an archive) turns on the compression ratio limit; ``charge`` also counts every
    byte against the cache's limit.
    """

    def __init__(
        self,
        limits: ExtractLimits,
        what: str,
        stop: threading.Event | None = None,
        *,
        archive_bytes: int | None = None,
        charge: Charge | None = None,
    ) -> None:
        self.limits = limits
        self.what = what
        self.stop = stop
        self.archive_bytes = archive_bytes
        self.charge = charge
        self.members = 0
        self.files = 0
        self.written_entries = 0  # files and folders made on disk
        self.total_bytes = 0

    def add_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_files:
            raise ArtifactError(
                f"{self.what} holds more than {self.limits.max_files} files (limit reached at {name!r})"
            )

    def add_entry(self, name: str) -> None:
        """A file or folder is about to be made on disk."""
        self.written_entries += 1
        if self.written_entries > self.limits.max_files:
            raise ArtifactError(
                f"{self.what} makes more than {self.limits.max_files} files and folders (limit reached at {name!r})"
            )

    def check_declared_size(self, name: str, size: int) -> None:
        """Refuse early when a header or listing already claims too much (the real count still follows)."""
        refusal = self.limits.file_refusal(f"{self.what}: {name!r}", size)
        if refusal is not None:
            raise refusal
        if self.total_bytes + size > self.limits.max_total_bytes:
            raise ArtifactError(
                f"{self.what}: {name!r} is {size} bytes, which takes it over the per-model size limit of "
                f"{self.limits.max_total_bytes} bytes (the agent's --max-model-disk)"
            )
        if self.archive_bytes is not None and self.total_bytes + size > self.limits.expansion_limit(self.archive_bytes):
            raise self.limits.ratio_refusal(self.what, self.archive_bytes, self.total_bytes)
        if self.charge is not None:
            self.charge.check_room(size, f"{name!r} is {size} bytes")

    def _count(self, name: str, file_bytes: int, added: int) -> None:
        """Count ``added`` bytes about to be written (so nothing over a limit is ever written)."""
        written = self.total_bytes
        self.total_bytes += added
        if self.limits.max_file_bytes is not None and file_bytes > self.limits.max_file_bytes:
            raise ArtifactError(
                f"{self.what}: {name!r} is over the per-file limit of {self.limits.max_file_bytes} bytes"
            )
        if self.total_bytes > self.limits.max_total_bytes:
            raise self.limits.size_refusal(self.what, written)
        if self.archive_bytes is not None and self.total_bytes > self.limits.expansion_limit(self.archive_bytes):
            raise self.limits.ratio_refusal(self.what, self.archive_bytes, written)
        if self.stop is not None and self.stop.is_set():
            raise ArtifactError(f"{self.what}: fetch cancelled")
        if self.charge is not None:
            self.charge.take(added)

    def copy(self, source: Readable, target: Path, name: str) -> int:
        """Stream ``source`` into a new regular file ``target``, counting what is written. Returns the size."""
        self.files += 1
        self.add_entry(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        written = 0
        with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                written += len(chunk)
                self._count(name, written, len(chunk))
                out.write(chunk)
        return written


def check_plain_name(part: str) -> None:
    """Raises UnsafeName unless ``part`` names one entry of a folder: not empty, ``.`` or ``..``, without a
    separator or a NUL byte."""
    if part in ("", ".", ".."):
        raise UnsafeName(f"has a path component {part!r}")
    if "/" in part or "\\" in part or "\x00" in part:
        raise UnsafeName(f"has a path component {part!r} that is not a plain name")


class Tree:
    """Creates folders and files under a root that only this code writes to (so it holds no links).

    Every component is checked to be a plain name before anything is made, so nothing is ever made outside
    the root, whatever the caller passes (the resolved path is checked again after, in case a link appeared).
    Every folder it makes, a member's parent folders too, is counted by ``budget``.
    """

    def __init__(self, root: Path, budget: Budget | None = None) -> None:
        self.root = root
        self._budget = budget
        self._real_root = os.path.realpath(root)
        self._made: set[tuple[str, ...]] = {()}

    def folder(self, parts: tuple[str, ...]) -> Path:
        path = self.root.joinpath(*parts)
        if parts in self._made:
            return path
        for part in parts:
            check_plain_name(part)
        for depth in range(1, len(parts) + 1):
            prefix = parts[:depth]
            if prefix in self._made:
                continue
            if self._budget is not None:
                self._budget.add_entry("/".join(prefix))
            self.root.joinpath(*prefix).mkdir(exist_ok=True)
            self._made.add(prefix)
        real = os.path.realpath(path)
        if os.path.commonpath([real, self._real_root]) != self._real_root:  # defence in depth
            raise UnsafeName("resolves outside the target folder")
        return path

    def file(self, parts: tuple[str, ...]) -> Path:
        """The path for a file member; its parent folders are created. ``parts`` must not be empty."""
        if not parts:
            raise UnsafeName("names no file")
        check_plain_name(parts[-1])
        return self.folder(parts[:-1]) / parts[-1]
