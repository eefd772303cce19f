"""argparse value types shared by every command's flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from modelplane.addresses import Address, AddressError, parse_address


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
