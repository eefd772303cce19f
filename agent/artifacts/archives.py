"""Safe extraction of tar and zip archives.

An archive is untrusted input. Extraction refuses, naming the member:

- a name that is absolute, starts with a drive letter, has a ``..`` component or a NUL byte;
- every symbolic or hard link, wherever it points (a link inside the target can still be swapped or
  chained to reach outside it, and model folders do not need links);
- device files, FIFOs, sockets, and tar member types it does not know;
- encrypted zip members;
- a name nested more than MAX_DEPTH folders deep;
- more members than ``ExtractLimits.max_files`` (or more files and folders made, parents included),
  a file over ``max_file_bytes`` (if set) or a tree over ``max_total_bytes``, counting the bytes actually
  written (headers are only used to refuse early);
- a tree, or a tar's decompressed stream, that expands to more than ``max_ratio`` times the archive's
  size (``ExtractLimits.expansion_limit``): a decompression bomb, gzip/bzip2/xz, zip or a sparse tar
  member, is stopped at the first byte over that, before it is written;
- a tar header (a GNU long name, a pax record) over 16 MiB, before tarfile reads it into memory, and a
  tar stream that would have to be read backwards (only a malformed sparse member asks for that).

Files are written with mode 0644 and folders with the default mode: permission bits, owners and
times in the archive are ignored. Everything is extracted into a temporary sibling of the destination
that is renamed into place only when complete; on any failure it is removed, so nothing remains.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import secrets
import shutil
import stat
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import BinaryIO, Literal

from agent.artifacts.errors import ArtifactError
from agent.artifacts.safety import CHUNK_BYTES, Budget, Charge, ExtractLimits, Tree, UnsafeName, safe_parts

ArchiveKind = Literal["tar", "zip"]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
_HEADER_BYTES = 512
_USTAR_OFFSET = 257
# tarfile reads a GNU long name or a pax header whole, in one read of the size its header claims; real ones
# are a few hundred bytes. Member data is read in CHUNK_BYTES pieces, below this.
_MAX_TAR_READ = 16 * CHUNK_BYTES


def _is_ustar(block: bytes) -> bool:
    return block[_USTAR_OFFSET : _USTAR_OFFSET + 5] == b"ustar"


def _open_compressed(head: bytes, file: BinaryIO) -> io.BufferedIOBase | None:
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=file, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(file)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(file)
    return None


def _decompressed_head(head: bytes, file: BinaryIO) -> bytes:
    """The first bytes of a gzip, bzip2 or xz stream, or b"" when it is none of these or is corrupt."""
    file.seek(0)
    stream = _open_compressed(head, file)
    if stream is None:
        return b""
    try:
        with stream:
            return stream.read(_HEADER_BYTES)
    except Exception:  # zlib.error, EOFError, OSError, ...: a corrupt stream is simply not a tar by content
        return b""


def archive_kind_by_name(name: str) -> ArchiveKind | None:
    lowered = name.lower()
    if lowered.endswith(TAR_SUFFIXES):
        return "tar"
    if lowered.endswith(ZIP_SUFFIXES):
        return "zip"
    return None


def detect_archive(path: Path, name: str | None = None) -> ArchiveKind | None:
    """Whether ``path`` holds a tar (plain or compressed) or zip archive.

    ``name`` (default: the file's own name) decides first: an archive suffix (.tar, .tar.gz, .tgz,
    .zip, ...) makes it that archive; any other suffix makes it a plain file, since many model formats
    are zip files underneath (PyTorch .pt, Keras .keras, NumPy .npz) and must not be unpacked. A name
    without a suffix leaves it to the content: zip magic, a ustar header, or a gzip/bzip2/xz stream
    whose first block is a ustar header.
    """
    label = path.name if name is None else name
    by_name = archive_kind_by_name(label)
    if by_name is not None:
        return by_name
    if "." in label.lstrip("."):
        return None
    with path.open("rb") as file:
        head = file.read(_HEADER_BYTES)
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            return "zip"
        if _is_ustar(head) or _is_ustar(_decompressed_head(head, file)):
            return "tar"
    return None


class _Refused(Exception):  # noqa: N818 -- internal, always turned into an ArtifactError
    pass


def _refuse(member: str, reason: str) -> _Refused:
    return _Refused(f"member {member!r} {reason}")


def _parts(name: str) -> tuple[str, ...]:
    try:
        return safe_parts(name)
    except UnsafeName as exc:
        raise _refuse(name, str(exc)) from None


class _CountedTarStream:
    """The (decompressed) tar stream tarfile reads, with every byte counted against ``limit``.

    It only moves forward: a forward seek reads and drops the bytes in between (counted like the rest).
    """

    def __init__(self, stream: BinaryIO, limit: int, budget: Budget, archive_bytes: int) -> None:
        self._stream = stream
        self._limit = limit
        self._budget = budget
        self._archive_bytes = archive_bytes
        self._position = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_TAR_READ:
            claimed = "an unbounded read" if size is None or size < 0 else f"{size} bytes"
            raise ArtifactError(f"{self._budget.what}: a tar header asks for {claimed}; refused")
        if self._budget.stop is not None and self._budget.stop.is_set():
            raise ArtifactError(f"{self._budget.what}: fetch cancelled")
        allowed = self._limit - self._position
        data = self._stream.read(min(size, allowed + 1))
        if len(data) > allowed:
            raise self._budget.limits.ratio_refusal(self._budget.what, self._archive_bytes, self._budget.total_bytes)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._position + offset if whence == io.SEEK_CUR else -1
        if target < self._position:
            raise ArtifactError(f"{self._budget.what}: the tar stream would have to be read backwards (malformed)")
        while self._position < target:
            if not self.read(min(target - self._position, CHUNK_BYTES)):
                break  # past the end: the next read finds nothing, and tarfile reports the truncation
        return self._position


def _extract_tar(archive: Path, tree: Tree, budget: Budget, current: list[str]) -> None:
    archive_bytes = archive.stat().st_size
    with archive.open("rb") as raw:
        head = raw.read(_HEADER_BYTES)
        raw.seek(0)
        decompressed = _open_compressed(head, raw)
        stream: BinaryIO = raw if decompressed is None else decompressed  # type: ignore[assignment]
        counted = _CountedTarStream(stream, budget.limits.expansion_limit(archive_bytes), budget, archive_bytes)
        try:
            _extract_tar_members(counted, tree, budget, current)
        finally:
            if decompressed is not None:
                decompressed.close()


def _extract_tar_members(stream: _CountedTarStream, tree: Tree, budget: Budget, current: list[str]) -> None:
    with tarfile.open(fileobj=stream, mode="r:") as tar:  # type: ignore[call-overload]
        while (member := tar.next()) is not None:
            name = member.name
            current[0] = name
            parts = _parts(name)
            budget.add_member(name)
            if member.isdir():
                tree.folder(parts)
                continue
            if member.issym():
                raise _refuse(name, f"is a symbolic link (to {member.linkname!r}); links are not extracted")
            if member.islnk():
                raise _refuse(name, f"is a hard link (to {member.linkname!r}); links are not extracted")
            if member.ischr() or member.isblk() or member.isfifo():
                raise _refuse(name, "is a device file or FIFO")
            if not member.isreg():
                raise _refuse(name, f"has an unsupported tar type {member.type!r}")
            if not parts:
                raise _refuse(name, "has an empty file name")
            budget.check_declared_size(name, member.size)
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover -- isreg() members always have data
                raise _refuse(name, "has no data")
            with source:
                budget.copy(source, tree.file(parts), name)


def _extract_zip(archive: Path, tree: Tree, budget: Budget, current: list[str]) -> None:
    with zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
        if len(infos) > budget.limits.max_files:
            raise ArtifactError(
                f"{budget.what} holds {len(infos)} members, over the limit of {budget.limits.max_files}"
            )
        for info in infos:
            name = info.filename
            current[0] = name
            parts = _parts(name)
            budget.add_member(name)
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type == stat.S_IFLNK:
                raise _refuse(name, "is a symbolic link; links are not extracted")
            if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse(name, "is a device file, FIFO or socket")
            if info.is_dir() or file_type == stat.S_IFDIR:
                tree.folder(parts)
                continue
            if not parts:
                raise _refuse(name, "has an empty file name")
            if info.flag_bits & 0x1:
                raise _refuse(name, "is encrypted")
            budget.check_declared_size(name, info.file_size)
            with zipped.open(info) as source:
                budget.copy(source, tree.file(parts), name)


def extract_archive(
    archive: Path,
    destination: Path,
    limits: ExtractLimits,
    *,
    kind: ArchiveKind | None = None,
    name: str | None = None,
    stop: threading.Event | None = None,
    charge: Charge | None = None,
) -> ArchiveKind:
    """Extract ``archive`` into ``destination`` (which must not exist yet), safely; returns the kind.

    ``kind`` skips detection; ``name`` is the archive's name for detection and messages (default: the
    file's name); ``charge`` counts every written byte against the cache's limit too. Every failure,
    whatever the archive holds, is an ArtifactError, and leaves neither ``destination`` nor any
    temporary folder behind.
    """
    label = archive.name if name is None else name
    what = f"archive {label!r}"
    if kind is None:
        try:
            kind = detect_archive(archive, name)
        except OSError as exc:
            raise ArtifactError(f"cannot read {what}: {exc.strerror or exc}") from exc
        if kind is None:
            raise ArtifactError(f"{what} is not a tar or zip archive")
    if os.path.lexists(destination):
        raise ArtifactError(f"cannot extract {what}: {destination} already exists")
    temporary = destination.with_name(f".{destination.name}.extracting-{secrets.token_hex(6)}")
    try:
        archive_bytes = archive.stat().st_size
    except OSError as exc:
        raise ArtifactError(f"cannot read {what}: {exc.strerror or exc}") from exc
    temporary.mkdir(parents=True)
    budget = Budget(limits, what, stop, archive_bytes=archive_bytes, charge=charge)
    current: list[str] = [""]
    try:
        extract = _extract_tar if kind == "tar" else _extract_zip
        extract(archive, Tree(temporary, budget), budget, current)
        if budget.files == 0:
            raise ArtifactError(f"{what} holds no files")
        temporary.rename(destination)
    except ArtifactError:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    except _Refused as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise ArtifactError(f"refused {what}: {exc}") from None
    except (IsADirectoryError, NotADirectoryError, FileExistsError):
        shutil.rmtree(temporary, ignore_errors=True)
        raise ArtifactError(
            f"refused {what}: member {current[0]!r} clashes with another member: a file and a folder of one path"
        ) from None
    except Exception as exc:  # untrusted bytes reach tarfile, zipfile and the decompressors: any error is the archive's
        shutil.rmtree(temporary, ignore_errors=True)
        at = f" at member {current[0]!r}" if current[0] else ""
        raise ArtifactError(f"cannot extract {what} as {kind}{at}: {type(exc).__name__}: {exc}") from exc
    return kind
