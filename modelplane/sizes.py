"""Byte sizes as people write them (2GiB, 512Mi, 1.5G, 1000000), and the largest sizes the base allows."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
# ASCII: \d would take any script's digits (which float() reads). Used with fullmatch; white space around is allowed.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", re.ASCII)
# The largest size anything accepts (1 PiB): more than any machine's memory today, so a bigger figure is a mistake,
# and sums of many stay far from overflowing anything.
MAX_SIZE = 1 << 50
# The largest gRPC message any process sends or accepts (modelplane/transport.py sets it on every server and channel):
# model specs and status snapshots are small, inference is not ours. Here, not in transport, so that domain code can
# size its messages by it without importing grpc.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def parse_size(text: str) -> int:
    """Bytes in ``text``; raises ValueError with the accepted forms when it is not a size."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: use e.g. 2GiB, 512Mi, 1.5G or a number of bytes")
    number = float(match.group(1))  # inf for absurdly long numbers: refused below, never int(inf)
    if not number * _UNITS[unit] <= MAX_SIZE:
        raise ValueError(f"{text[:40]!r} is more than 1 PiB")
    return int(number * _UNITS[unit])


def format_size(count: int) -> str:
    """``count`` bytes in the largest binary unit that holds it exactly (8GiB, 16MiB, 1000), as parse_size reads it."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count and count % size == 0:
            return f"{count // size}{unit}"
    return str(count)
