"""The flags every long-running process takes alike: where to write its ready file, how to log, which TOML file
holds its settings. Declared once here so that they read and behave the same in every process."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelplane import logs


def add_process_flags(parser: argparse.ArgumentParser, *, section: str, ready_file_help: str) -> None:
    """``--ready-file``, ``--log-level``, ``--log-json`` and ``--config`` (the ``[section]`` table of a TOML file)."""
    parser.add_argument("--ready-file", type=Path, metavar="FILE", help=ready_file_help)
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument("--config", type=Path, metavar="FILE", help=f"TOML settings file ([{section}] table)")
