"""The trainer's commands, for modelplane/cli/main.py to mount:

- ``modelplane trainer [FLAGS]``: run the trainer process (flags: trainer/settings.py).
- ``modelplane training status [--trainer URL] [RUN_ID]``: the runs a trainer knows (newest first), or one
  run, from its status API (trainer/service/status_api.py).

Exit status as for every modelplane command: 0 success, 1 the work failed (trainer unreachable, run not
found), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from modelplane import logs
from modelplane.auth_flags import add_client_token_flag, client_token
from modelplane.command_line import EXIT_USAGE, fail, subparsers
from modelplane.config import parse_layered
from modelplane.flag_types import seconds
from modelplane.output_formats import add_output_flag, as_yaml
from modelplane.transport import TransportError, TransportSecurity, http_client_ssl
from trainer.settings import build_parser, parse_settings

TRAINER_COMMANDS = ("trainer", "training")
DEFAULT_TRAINER_URL = "http://127.0.0.1:9600"


def add_trainer_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build_parser(
        commands.add_parser(
            "trainer",
            help="run the trainer: training events from Kafka become trained, stored (and served) models",
            description="Run the trainer: consume training events, train each in a job, store the model in S3, "
            "publish its status. Every flag can also be set as MODELPLANE_TRAINER_<FLAG> or in the [trainer] "
            "table of a TOML file given with --config.",
        )
    )
    training = commands.add_parser("training", help="ask a running trainer about training runs")
    actions = training.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="list recent runs, or show one run")
    status.add_argument("run_id", nargs="?", metavar="RUN_ID", help="one run's id (default: list recent runs)")
    status.add_argument(
        "--trainer",
        default=DEFAULT_TRAINER_URL,
        metavar="URL",
        help=f"the trainer's status API (default {DEFAULT_TRAINER_URL}; env MODELPLANE_TRAINING_TRAINER)",
    )
    status.add_argument("--limit", type=int, default=20, metavar="N", help="how many runs to list (default 20)")
    add_output_flag(status)
    # Before --output: kept working, as scripts call it.
    status.add_argument("--json", action="store_true", help="the same as --output json")
    status.add_argument("--timeout", type=seconds(3600), default=10.0, metavar="SECONDS")
    status.add_argument("--config", metavar="FILE", help="TOML settings file ([training] table)")
    tls = status.add_argument_group("HTTPS (a trainer serving its status API with --serve-tls-*)")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA the trainer's certificate chains to")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="client private key (mutual TLS)")
    add_client_token_flag(status)


def run_trainer_command(parser: argparse.ArgumentParser, command: str, argv: Sequence[str]) -> int:
    """Run ``command`` ("trainer" or "training") with its arguments; ``parser`` is that command's parser."""
    if command == "trainer":
        settings = parse_settings(parser, argv)
        logs.configure("trainer", settings.log_level, json_output=settings.log_json)
        try:
            from trainer import process  # noqa: PLC0415 - the CLI loads a process's code only to run it

            asyncio.run(process.run(settings))
        except (TransportError, OSError, RuntimeError) as error:
            return fail(str(error))
        return 0
    actions = subparsers(parser)
    if not argv or argv[0] not in actions:
        parser.parse_args(argv)  # usage error or help
        return EXIT_USAGE
    options = parse_layered(actions[argv[0]], "training", argv[1:])
    return _status(options)


def _usage_problem(options: argparse.Namespace, base: str) -> str | None:
    if not base.startswith(("http://", "https://")):
        return f"--trainer {base!r} must be an http:// or https:// URL"
    if not 1 <= options.limit <= 1000:
        return "--limit must be from 1 to 1000"
    if base.startswith("http://") and (options.tls_ca or options.tls_cert):
        return "--tls-ca/--tls-cert/--tls-key need an https:// --trainer URL"
    return None


def _status(options: argparse.Namespace) -> int:
    base = str(options.trainer).rstrip("/")
    problem = _usage_problem(options, base)
    if problem is not None:
        return fail(problem, EXIT_USAGE)
    if options.run_id:
        url = f"{base}/runs/{urllib.parse.quote(options.run_id, safe='')}"
    else:
        url = f"{base}/runs?limit={options.limit}"
    try:
        # The same checks as every client's TLS flags: cert and key together, files that exist.
        TransportSecurity(cert_file=options.tls_cert, key_file=options.tls_key, ca_file=options.tls_ca).validate()
        context = http_client_ssl(options.tls_ca, options.tls_cert, options.tls_key)
        presented = client_token(options.auth_token_file)
        token = presented.current() if presented is not None else None
        status, body = asyncio.run(_get(url, options.timeout, context, token))
    except TransportError as error:
        return fail(str(error), EXIT_USAGE)
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        return fail(f"cannot reach the trainer at {base}: {error or type(error).__name__}")
    if status != 200:
        message = body.get("error", body) if isinstance(body, dict) else body
        return fail(f"{url}: HTTP {status}: {message}")
    output = "json" if options.json else options.output
    if output == "json":
        print(json.dumps(body, indent=2))
    elif output == "yaml":
        print(as_yaml(body))
    elif options.run_id:
        print(_render_run(body, detailed=True))
    else:
        runs = body.get("runs", []) if isinstance(body, dict) else []
        print("\n".join(_render_run(run, detailed=False) for run in runs) if runs else "no runs")
    return 0


async def _get(url: str, timeout: float, context: ssl.SSLContext | None, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Loopback status APIs must not go through a proxy from the environment.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False) as session,
        session.get(url, ssl=True if context is None else context, headers=headers) as response,
    ):
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text[:500]


def _render_run(run: dict[str, Any], *, detailed: bool) -> str:
    line = (
        f"{run.get('run_id', '?')}  {run.get('state', '?'):<10} design={run.get('design_schema_id', '')} "
        f"event={run.get('event_id', '')} attempts={run.get('attempts', 0)}"
    )
    if not detailed:
        errors = run.get("errors") or []
        return line + (f"  error: {errors[-1]}" if errors else "")
    lines = [line]
    if run.get("model_uri"):
        lines.append(f"  model: {run['model_uri']}")
    for name, value in sorted((run.get("metrics") or {}).items()):
        lines.append(f"  metric {name} = {value}")
    for error in run.get("errors") or []:
        lines.append(f"  error: {error}")
    for state, at in run.get("history") or []:
        lines.append(f"  {state} at {at}")
    return os.linesep.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.commands trainer|training ...``: the same commands without the modelplane CLI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="modelplane")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_trainer_commands(commands)
    choices = subparsers(parser)
    if not argv or argv[0] not in choices:
        parser.parse_args(argv)
        return EXIT_USAGE
    return run_trainer_command(choices[argv[0]], argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
