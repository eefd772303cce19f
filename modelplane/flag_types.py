"""argparse value types shared by every command's flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from modelplane.addresses import Address, AddressError, parse_address
from modelplane.sizes import format_size, parse_size
from modelplane.whole_numbers import parse_whole_number


def peer_address(text: str) -> Address:
    """HOST:PORT of something to connect to (port 0 refused)."""
    try:
        return parse_address(text)
    except AddressError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def address(text: str) -> Address:
    """HOST:PORT, port 0 allowed (a listener picks a free port; for a peer it is refused when dialled)."""
    try:
        return parse_address(text, allow_port_zero=True)
    except AddressError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# A client's per-call deadline, and how long a command may follow a resource until it settles (``-w``).
MAX_CALL_SECONDS = 3600.0
MAX_WAIT_SECONDS = 86400.0


def seconds(maximum: float) -> Callable[[str], float]:
    """A positive number of seconds up to ``maximum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give 0 < seconds <= {maximum:g}")
        return value

    return parse


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high`` (digits only: no sign, no spaces)."""

    def parse(text: str) -> int:
        number = parse_whole_number(text)
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return number

    return parse


def byte_size(minimum: int = 0, maximum: int | None = None, *, what: str = "a size") -> Callable[[str], int]:
    """A number of bytes as :func:`modelplane.sizes.parse_size` reads it (2GiB, 512Mi, 1000), at least
    ``minimum`` and, when given, at most ``maximum``; ``what`` names the value in the error."""

    def parse(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a size from {format_size(minimum)} to {format_size(maximum)}"
            )
        if value < minimum:
            least = "more than 0 bytes" if minimum == 1 else f"at least {format_size(minimum)}"
            raise argparse.ArgumentTypeError(f"{what} must be {least}")
        return value

    return parse
