"""Where audit lines go, and the promise about them: a line is on disk before the call it records is answered.

Fsync policy: every line is written with one ``write`` and fsynced before ``AuditLog.record`` returns, and the
servers answer a call only after that. Mutations are rare next to inference (bench/audit_log_fsync.py measures
what the fsync costs), so each acknowledged mutation's line survives kill -9 of the process and a power cut alike.
The write and fsync run in a worker thread, so the event loop keeps serving streams meanwhile; a lock keeps lines
whole and in the order they were recorded.

Rotation (``RotatingFile``): before a line that would take the file past ``max_bytes``, the file is renamed to
``PATH.1`` (``PATH.1`` to ``PATH.2``, ... the oldest beyond ``keep`` rotated files is dropped) and a new file is
begun, so a line is never split between files and every line is in exactly one file. A line longer than
``max_bytes`` gets a file of its own. One process writes one log (the scheduler's state dir lock sees to the
default path).

A line cut short by a full disk (or a crash of the machine mid-write) is ended before the next line is written, so
it spoils only itself; the reader reports it and reads on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Protocol

from modelplane.audit.audit_record import AuditRecord, Resource, audit_record
from modelplane.auth.caller import Caller

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # about 40,000 lines per file
DEFAULT_KEEP = 8  # rotated files kept besides the current one: at most 144 MiB in all by default
MAX_KEEP = 1000


class AuditLogError(OSError):
    """An audit line could not be written; the message says where and why."""


class LineSink(Protocol):
    def append(self, line: bytes) -> None:
        """Write one whole line (ending in a line feed) and make it durable before returning."""

    def close(self) -> None: ...


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rotated_path(path: Path, number: int) -> Path:
    """The ``number``-th rotated file of the log at ``path`` (1 is the newest)."""
    return path.with_name(f"{path.name}.{number}")


class RotatingFile:
    """An append-only file of lines, rotated by size (see the module's docstring)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if not 1 <= keep <= MAX_KEEP:
            raise ValueError(f"keep must be 1 to {MAX_KEEP}, not {keep}")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._line_open = False  # the file's last line has no line feed (a write cut short)
        self._open()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size
            self._line_open = self._size > 0 and not self._ends_with_line_feed()
            _fsync_directory(self.path.parent)  # the file's name is durable too, not only its content
        except OSError as error:
            raise AuditLogError(f"cannot open the audit log {self.path}: {error.strerror or error}") from None

    def _ends_with_line_feed(self) -> bool:
        with self.path.open("rb") as existing:
            existing.seek(-1, os.SEEK_END)
            return existing.read(1) == b"\n"

    def append(self, line: bytes) -> None:
        with self._lock:
            try:
                self._append(line)
            except OSError as error:
                raise AuditLogError(f"cannot write the audit log {self.path}: {error.strerror or error}") from None

    def _append(self, line: bytes) -> None:
        if self._fd < 0:
            self._open()  # a rotation that failed half way left no file open
        data = b"\n" + line if self._line_open else line
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
            data = line
        self._line_open = True
        _write_all(self._fd, data)
        self._size += len(data)
        self._line_open = not data.endswith(b"\n")
        os.fsync(self._fd)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        for number in range(self.keep - 1, 0, -1):
            older = rotated_path(self.path, number)
            if older.exists():
                os.replace(older, rotated_path(self.path, number + 1))
        os.replace(self.path, rotated_path(self.path, 1))
        self._open()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class StdoutLines:
    """Lines to the process's standard output (fsynced when that is a file), for a log collector to pick up."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdout.fileno() if fd is None else fd
        self._lock = threading.Lock()

    def append(self, line: bytes) -> None:
        with self._lock:
            try:
                _write_all(self._fd, line)
                if stat.S_ISREG(os.fstat(self._fd).st_mode):
                    os.fsync(self._fd)
            except OSError as error:
                raise AuditLogError(f"cannot write audit lines to standard output: {error.strerror}") from None

    def close(self) -> None:
        """Standard output is the process's, not ours to close."""


class AuditLog:
    """The process's audit log: ``record`` returns once the line is durable (raising AuditLogError if it could
    not be written)."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    async def record(self, record: AuditRecord) -> None:
        await asyncio.to_thread(self._sink.append, record.to_line())

    async def record_refusal(
        self, caller: Caller, rpc: str, resource: Resource | None, code: str, message: str
    ) -> None:
        """Record a call refused before its handler ran (by an access check): ``code`` is the gRPC status code's
        name ("UNAUTHENTICATED", "PERMISSION_DENIED"), ``message`` what the caller was told, ``resource`` what the
        call was about when the refusal knows it (else None). Returns once the line is durable; an access check
        answers the call after it. Raises AuditLogError when the line cannot be written."""
        await self.record(audit_record(caller, rpc, resource, code, message))

    def close(self) -> None:
        self._sink.close()
