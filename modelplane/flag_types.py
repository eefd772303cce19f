"""argparse value types shared by every command's flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
