"""``modelplane audit``: read a scheduler's audit log (and its rotated files, oldest first), filtered.

Lines that are not audit records (cut short by a full disk, edited by hand) are reported on stderr with their file
and line number, and reading goes on; the exit status is still 0 when the log could be read. Every text shown in
the table is one printable line, cut to its column's limit, whatever the file holds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from modelplane.audit.audit_reader import BadLine, log_files, read_log
from modelplane.audit.audit_record import AuditRecord
from modelplane.audit.audit_settings import AUDIT_FILE_NAME
from modelplane.bounded_text import cut, one_line
from modelplane.command_line import EXIT_FAILURE, fail
from modelplane.output_formats import OUTPUT_FORMATS, as_yaml

DEFAULT_AUDIT_LOG = Path(".modelplane/state") / AUDIT_FILE_NAME  # `modelplane scheduler`'s default state dir
MAX_BAD_LINES_SHOWN = 20  # each one on stderr; beyond that, only how many more
_RELATIVE = re.compile(r"(\d{1,9})\s*([smhd])", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REFUSED = "refused"  # --result: every code but OK


def moment(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when it names no offset), or a time that long ago: "90s", "15m", "1h", "7d"."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        ago = timedelta(seconds=int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)])
        return (now or datetime.now(UTC)) - ago
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give ISO 8601 (2026-12-04T15:00:00Z) or how long ago (90s, 15m, 1h, 7d)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--audit-log",
        type=Path,
        default=DEFAULT_AUDIT_LOG,
        metavar="FILE",
        help=f"the audit log to read, with its rotated files FILE.1, FILE.2, ... (default {DEFAULT_AUDIT_LOG}; "
        "`modelplane up` keeps it in .modelplane/up/scheduler/audit.log)",
    )
    parser.add_argument("--identity", metavar="ID", help='only calls by this identity ("" for anonymous ones)')
    parser.add_argument("--resource", metavar="NAME", help="only calls about this model, pipeline or experiment")
    parser.add_argument("--rpc", metavar="NAME", help="only this RPC (LoadModel, or its full name)")
    parser.add_argument(
        "--result",
        metavar="CODE",
        help=f"only calls answered with this gRPC code (OK, NOT_FOUND, ...), or {REFUSED!r} for every code but OK",
    )
    parser.add_argument("--since", type=moment, metavar="TIME", help="only calls at or after TIME (ISO 8601, or 1h)")
    parser.add_argument("--until", type=moment, metavar="TIME", help="only calls before TIME (ISO 8601, or 15m)")
    parser.add_argument(
        "--output",
        choices=OUTPUT_FORMATS,
        default="table",
        help="json: one record per line; yaml: one document per record (---)",
    )
    return parser


@dataclass(frozen=True, slots=True)
class AuditFilter:
    identity: str | None = None
    resource: str | None = None
    rpc: str | None = None
    result: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: AuditRecord) -> bool:
        return (
            (self.identity is None or record.identity == self.identity)
            and (self.resource is None or record.resource_name == self.resource)
            and (self.rpc is None or self.rpc in (record.rpc, record.method))
            and (self.result is None or _result_matches(self.result, record.code))
            and (self.since is None or record.time >= self.since)
            and (self.until is None or record.time < self.until)
        )


def _result_matches(wanted: str, code: str) -> bool:
    return code != "OK" if wanted.lower() == REFUSED else code.upper() == wanted.upper()


_COLUMNS = (
    ("TIME", 24),
    ("IDENTITY", 32),
    ("PEER", 24),
    ("RPC", 19),
    ("RESOURCE", 40),
    ("VERSION", 11),
    ("RESULT", 19),
)
ANONYMOUS = "(anonymous)"


def _row(record: AuditRecord) -> list[str]:
    resource = "" if record.resource is None else f"{record.resource.kind}/{record.resource_name}"
    if record.resource is not None and record.resource.namespace:
        resource = f"{record.resource.namespace}/{resource}"
    version = f"{_version(record.version_before)}->{_version(record.version_after)}"
    return [
        record.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        record.identity or ANONYMOUS,
        record.peer or "-",
        record.method,
        resource,
        version,
        record.code,
        record.request_id,
        record.message,
    ]


def _version(version: int | None) -> str:
    return "none" if version is None else str(version)


def render_table(records: Iterable[AuditRecord], out: TextIO) -> None:
    widths = [width for _, width in _COLUMNS]
    head = [name for name, _ in _COLUMNS]
    out.write("  ".join(name.ljust(width) for name, width in zip(head, widths, strict=True)) + "  REQUEST  MESSAGE\n")
    for record in records:
        cells = [cut(one_line(cell), 200) for cell in _row(record)]
        fixed = [cut(cell, width).ljust(width) for cell, width in zip(cells[: len(widths)], widths, strict=True)]
        out.write("  ".join([*fixed, *cells[len(widths) :]]).rstrip() + "\n")


def run(
    parser: argparse.ArgumentParser, argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    options = parser.parse_args(argv)
    path: Path = options.audit_log
    if not log_files(path):
        return fail(f"no audit log at {path} (nor rotated files {path}.1, ...): give --audit-log FILE")
    wanted = AuditFilter(options.identity, options.resource, options.rpc, options.result, options.since, options.until)
    bad: list[BadLine] = []  # the first MAX_BAD_LINES_SHOWN
    bad_count = 0
    unreadable = False

    def matching() -> Iterable[AuditRecord]:
        nonlocal bad_count, unreadable
        for item in read_log(path):
            if isinstance(item, BadLine):
                bad_count += 1
                unreadable = unreadable or item.line_number == 0
                if len(bad) < MAX_BAD_LINES_SHOWN:
                    bad.append(item)
            elif wanted.matches(item):
                yield item

    if options.output == "json":
        for record in matching():
            out.write(json.dumps(record.to_document(), separators=(",", ":")) + "\n")
    elif options.output == "yaml":
        for record in matching():  # streamed like json: a log may be long
            out.write("---\n" + as_yaml(record.to_document()) + "\n")
    else:
        render_table(matching(), out)
    for line in bad:
        where = f"{one_line(str(line.path))}:{line.line_number}" if line.line_number else one_line(str(line.path))
        err.write(f"modelplane audit: {where}: {line.reason}\n")
    if bad_count > len(bad):
        err.write(f"modelplane audit: ... and {bad_count - len(bad)} more lines that are not audit records\n")
    return EXIT_FAILURE if unreadable else 0
