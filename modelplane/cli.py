"""The ``modelplane`` command: one entry point, one subcommand per process or client action.

Exit status: 0 on success, 1 when the work itself failed (e.g. a scheduler that cannot be reached,
a port in use), 2 for bad command-line input or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc

from modelplane import __version__, logs, status_command
from modelplane.addresses import Address, AddressError, parse_address
from modelplane.config import parse_layered
from modelplane.transport import TransportError
from modelplane.transport_flags import add_tls_flags, security_from
from scheduler import process
from scheduler.settings import build_parser, parse_settings
from scheduler.state_dir import StateDirError

EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_SCHEDULER = "127.0.0.1:9004"


def _scheduler_address(text: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelplane",
        description="modelplane: a control plane for machine-learning models (Seldon Core v2 scheduler API).",
    )
    parser.add_argument("--version", action="version", version=f"modelplane {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("version", help="print the version", description="Print modelplane's version.")
    build_parser(
        commands.add_parser(
            "scheduler",
            help="run the scheduler (the Scheduler API server)",
            description="Run the scheduler: the Seldon Core v2 Scheduler API on --listen and the agent "
            "service on --agent-listen. Every flag can also be set as MODELPLANE_<FLAG> or in a "
            "TOML file given with --config.",
        )
    )
    status = commands.add_parser(
        "status",
        help="show a running scheduler's version, health and services",
        description="Ask a running scheduler for its version, health and services.",
    )
    status.add_argument(
        "--scheduler",
        type=_scheduler_address,
        default=DEFAULT_SCHEDULER,
        metavar="HOST:PORT",
        help=f"the scheduler's API address (default {DEFAULT_SCHEDULER}; env MODELPLANE_SCHEDULER)",
    )
    status_command.add_arguments(status)
    status.add_argument("--config", metavar="FILE", help="TOML settings file ([status] table)")
    add_tls_flags(status, server=False)
    return parser


def _fail(message: str, status: int = EXIT_FAILURE) -> int:
    print(f"modelplane: error: {message}", file=sys.stderr)
    return status


def _run_scheduler(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    subparser = _subparser(parser, "scheduler")
    settings = parse_settings(subparser, argv)
    logs.configure("scheduler", settings.log_level, json_output=settings.log_json)
    try:
        asyncio.run(process.run(settings))
    except StateDirError as error:
        return _fail(str(error), EXIT_USAGE)
    except TransportError as error:
        return _fail(str(error))
    return 0


def _run_status(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    options = parse_layered(_subparser(parser, "status"), "status", argv)
    security = security_from(options)
    try:
        report = asyncio.run(status_command.fetch_report(options.scheduler, security, options.timeout))
    except TransportError as error:
        return _fail(str(error), EXIT_USAGE)
    except grpc.aio.AioRpcError as error:
        return _fail(status_command.describe_rpc_error(options.scheduler, error))
    print(report.render())
    return 0


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise LookupError(name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # Parse the command name first; each command then parses its own flags with layered defaults.
    options, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    rest = argv[1:]
    if options.command == "version":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(f"modelplane {__version__}")
        return 0
    if options.command == "scheduler":
        return _run_scheduler(parser, rest)
    if options.command == "status":
        return _run_status(parser, rest)
    return _fail(f"unknown command {options.command!r}", EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
