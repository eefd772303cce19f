"""The audit log's settings and flags, shared by ``modelplane scheduler`` and ``modelplane up``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from modelplane.audit.audit_log import DEFAULT_KEEP, DEFAULT_MAX_BYTES, MAX_KEEP, AuditLog, RotatingFile, StdoutLines
from modelplane.sizes import parse_size

AUDIT_FILE_NAME = "audit.log"  # in the state dir, unless --audit-log says otherwise


@dataclass(frozen=True, slots=True)
class AuditSettings:
    # None: AUDIT_FILE_NAME in the scheduler's state dir.
    path: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    keep: int = DEFAULT_KEEP
    # Lines to standard output instead of the file (for a log collector).
    stdout: bool = False

    def file_in(self, state_dir: Path) -> Path:
        return self.path if self.path is not None else state_dir / AUDIT_FILE_NAME

    def open(self, state_dir: Path) -> AuditLog:
        """The audit log these settings describe (raises AuditLogError when its file cannot be opened)."""
        if self.stdout:
            return AuditLog(StdoutLines())
        return AuditLog(RotatingFile(self.file_in(state_dir), self.max_bytes, self.keep))


def _max_bytes(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if size < 4096:
        raise argparse.ArgumentTypeError(f"{text} is too small for an audit log file: give at least 4KiB")
    return size


def _keep(text: str) -> int:
    try:
        keep = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= keep <= MAX_KEEP:
        raise argparse.ArgumentTypeError(f"{text} is out of range: keep 1 to {MAX_KEEP} rotated files")
    return keep


def add_audit_flags(parser: argparse.ArgumentParser, state_dir_name: str = "the state dir") -> None:
    parser.add_argument(
        "--audit-log",
        type=Path,
        metavar="FILE",
        help=f"the audit log: one JSON line per accepted or refused mutation, fsynced before the answer "
        f"(default {AUDIT_FILE_NAME} in {state_dir_name}); read it with `modelplane audit`",
    )
    parser.add_argument(
        "--audit-log-max-bytes",
        type=_max_bytes,
        default=DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help=f"rotate the audit log before it grows past this (default {DEFAULT_MAX_BYTES // (1024 * 1024)}MiB)",
    )
    parser.add_argument(
        "--audit-log-keep",
        type=_keep,
        default=DEFAULT_KEEP,
        metavar="N",
        help=f"how many rotated audit files to keep, FILE.1 the newest (default {DEFAULT_KEEP})",
    )
    parser.add_argument(
        "--audit-stdout",
        action="store_true",
        help="write audit lines to standard output instead of the file",
    )


def audit_settings_from(parser: argparse.ArgumentParser, options: argparse.Namespace) -> AuditSettings:
    if options.audit_stdout and options.audit_log is not None:
        parser.error("--audit-stdout writes audit lines to standard output instead of --audit-log: give one")
    return AuditSettings(
        path=options.audit_log,
        max_bytes=options.audit_log_max_bytes,
        keep=options.audit_log_keep,
        stdout=options.audit_stdout,
    )
