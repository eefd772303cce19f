"""What every ``modelplane`` subcommand module shares: exit statuses, error output, subparser lookup.

Exit status: 0 on success, 1 when the work itself failed, 2 for bad command-line input or configuration.
"""

from __future__ import annotations

import argparse
import sys

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, status: int = EXIT_FAILURE) -> int:
    print(f"modelplane: error: {message}", file=sys.stderr)
    return status


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands (or actions) ``parser`` has, by name; empty when it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
