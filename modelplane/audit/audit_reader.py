"""Reading an audit log back: its rotated files oldest first, then the current one, line by line.

Whatever a file holds (a line cut short by a full disk, a file edited by hand, a binary file given by mistake),
every line that is not an audit record is reported as a ``BadLine`` (file, line number, why) and reading goes
on; no line is held whole in memory beyond MAX_LINE_BYTES.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelplane.audit.audit_record import AuditRecord

# Far above any line the writer makes (its fields are bounded to a few KiB).
MAX_LINE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class BadLine:
    path: Path
    line_number: int
    reason: str


def log_files(path: Path) -> list[Path]:
    """The files of the log at ``path``, oldest first: ``PATH.N`` ... ``PATH.1``, then ``PATH`` (those that exist)."""
    numbered = re.compile(re.escape(path.name) + r"\.([1-9][0-9]{0,5})")
    rotated: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            match = numbered.fullmatch(candidate.name)
            if match and candidate.is_file():
                rotated.append((int(match.group(1)), candidate))
    files = [candidate for _, candidate in sorted(rotated, reverse=True)]
    return [*files, path] if path.is_file() else files


def read_log(path: Path) -> Iterator[AuditRecord | BadLine]:
    """Every record of the log at ``path`` and its rotated files, oldest first, with the lines that are not."""
    for file in log_files(path):
        yield from read_file(file)


def read_file(path: Path) -> Iterator[AuditRecord | BadLine]:
    try:
        stream = path.open("rb")
    except OSError as error:
        yield BadLine(path, 0, f"cannot be read: {error.strerror}")
        return
    with stream:
        line_number = 0
        while True:
            line = stream.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            line_number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # skip the rest of the overlong line
                    line = stream.readline(MAX_LINE_BYTES)
                yield BadLine(path, line_number, f"longer than {MAX_LINE_BYTES} bytes")
                continue
            if not line.strip():
                continue  # an empty line: what ends a line cut short when the next is written
            yield _parse(path, line_number, line)


def _parse(path: Path, line_number: int, line: bytes) -> AuditRecord | BadLine:
    try:
        document = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return BadLine(path, line_number, "not JSON" if line.endswith(b"\n") else "not JSON (cut short)")
    try:
        return AuditRecord.from_document(document)
    except ValueError as error:
        return BadLine(path, line_number, f"not an audit record: {error}")
