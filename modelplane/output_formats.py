"""``--output json|yaml|table`` for every read command (the scheduler's, the registry's, the trainer's, the audit
log's): one flag, one renderer.

A read command gathers its answer as records (plain dicts and lists, from the Scheduler API's messages with
``as_record``) and a table renderer for people; ``render`` picks. JSON and YAML carry every field the scheduler sent,
under the messages' own JSON names (camelCase, as Seldon's CLI prints them), so a script reads what a client
generated from the protos would; the table is the command's own and may leave fields out.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

OUTPUT_FORMATS = ("table", "json", "yaml")
Record = dict[str, Any]


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default="table",
        help="how to print the answer: a table for people (default), or every field as json or yaml",
    )


def as_record(message: Message) -> Record:
    """A message as a dict of its JSON names; enums by name, 64-bit numbers as numbers (not strings)."""
    numbers: Record = _numbers(MessageToDict(message))
    return numbers


def _numbers(value: Any) -> Any:
    # The JSON mapping writes 64-bit integers as strings (for JavaScript); a CLI's reader wants numbers, and a
    # string of digits that stood for a string (a name) cannot be told apart here, so only known fields change.
    if isinstance(value, dict):
        return {key: _int_field(key, _numbers(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    return value


_INT64_FIELDS = frozenset(
    {"totalMemoryBytes", "availableMemoryBytes", "memoryBytes", "generation", "timestamp", "modelGwTimestamp"}
)


def _int_field(key: str, value: Any) -> Any:
    if key in _INT64_FIELDS and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def render(output: str, records: Sequence[Record] | Record, table: Callable[[], str]) -> str:
    """The answer as ``output`` asks: ``table()`` for "table", else the records as JSON or YAML."""
    if output == "json":
        return json.dumps(records, indent=2, sort_keys=False)
    if output == "yaml":
        return as_yaml(records)
    return table()


def as_yaml(records: Sequence[Record] | Record | Any) -> str:
    """Plain data as block YAML, in the given key order."""
    import yaml  # noqa: PLC0415 - only a command printing yaml pays for it

    text: str = yaml.safe_dump(records, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text.rstrip("\n")


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under a header, each column as wide as its widest cell (the last column is left ragged)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
