"""What every ``modelplane registry GROUP ACTION`` client command is made of, shared by the modules that declare
them (registry_client.py, registry_model_commands.py, registry_versions.py, ...): the flags all actions take,
the arguments naming an experiment or a model, printing an answer (``--output json|table``, a page's "more"
note), and waiting for a status to settle."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

from modelplane.auth_flags import add_client_token_flag
from modelplane.backoff import Backoff
from modelplane.cli import registry_tables
from modelplane.cli.registry_http import Answer, RegistryCallError, RegistryHttp, path_of
from modelplane.command_line import EXIT_FAILURE
from modelplane.flag_types import seconds
from modelplane.output_formats import OUTPUT_FORMATS, as_yaml
from registry.settings import DEFAULT_LISTEN

DEFAULT_REGISTRY: Final = f"http://{DEFAULT_LISTEN}"
# --wait polls a status: soon at first (a split of a small dataset is ready in a moment), then less and less often,
# so a training of an hour costs the registry a call every few seconds, not two a second.
FIRST_POLL_SECONDS: Final = 0.1
LONGEST_POLL_SECONDS: Final = 5.0
SPLIT_SETTLED: Final = frozenset({"COMPLETE", "FAILED"})  # a split's statuses that are final

Job = Callable[[RegistryHttp, argparse.Namespace], Coroutine[Any, Any, int]]
Actions: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """Bad input found after parsing (an unreadable hyper-parameter): exit 2."""


def print_answer(
    options: argparse.Namespace, answer: Answer, columns: Sequence[registry_tables.Column] | None = None
) -> None:
    """A list as a table (unless ``--output json|yaml``), a document as the registry's JSON (unless ``--output table``
    or ``yaml``)."""
    if options.output == "yaml":
        print(as_yaml(answer.body))
    elif options.output == "json" or (options.output is None and columns is None):
        print(json.dumps(answer.body, indent=2))
    elif columns is not None and isinstance(answer.body, list):
        print(registry_tables.table(answer.body, columns) if answer.body else f"no {options.group}")
        note_more(options, answer)
    else:
        print(registry_tables.document_lines(answer.body))


def note_more(options: argparse.Namespace, answer: Answer) -> None:
    shown = len(answer.body)
    if answer.total is not None and options.offset + shown < answer.total:
        first = options.offset + 1
        print(f"({first}-{options.offset + shown} of {answer.total}: --offset for more)", file=sys.stderr)


def page(options: argparse.Namespace) -> dict[str, str]:
    return {"offset": str(options.offset), "limit": str(options.limit)}


async def wait(http: RegistryHttp, status_path: str, settled: frozenset[str], timeout: float) -> Answer:
    """Poll a status until it is one of ``settled``, at growing intervals (modelplane/backoff.py), never past
    ``timeout`` (--wait-timeout): then a RegistryCallError saying what it still was."""
    deadline = time.monotonic() + timeout
    pause = Backoff(FIRST_POLL_SECONDS, LONGEST_POLL_SECONDS)
    while True:
        answer = await http.call("GET", status_path)
        if isinstance(answer.body, dict) and answer.body.get("status") in settled:
            return answer
        left = deadline - time.monotonic()
        if left <= 0:
            status = answer.body.get("status") if isinstance(answer.body, dict) else answer.body
            raise RegistryCallError(f"{status_path}: still {status} after {timeout:g}s (--wait-timeout)")
        await asyncio.sleep(min(pause.next(), left))


async def split_outcome(http: RegistryHttp, options: argparse.Namespace, created: Answer) -> int:
    """A split just asked for (``created``, the registry's answer): printed, or with --wait its settled status,
    exit 1 unless COMPLETE."""
    if not options.wait:
        print_answer(options, created)
        return 0
    status_path = path_of("experiments", options.experiment, "splits", str(created.body["id"]), "status")
    settled = await wait(http, status_path, SPLIT_SETTLED, options.wait_timeout)
    print_answer(options, settled)
    return 0 if settled.body.get("status") == "COMPLETE" else EXIT_FAILURE


def common_flags(parser: argparse.ArgumentParser, *, listing: bool, timeout: float = 30.0) -> None:
    parser.add_argument(
        "--registry",
        default=DEFAULT_REGISTRY,
        metavar="URL",
        help=f"the registry's REST API (default {DEFAULT_REGISTRY})",
    )
    parser.add_argument(
        "--output",
        choices=OUTPUT_FORMATS,
        default=None,
        help="json or yaml (the registry's documents as they are) or table "
        f"(default: {'table' if listing else 'json'})",
    )
    parser.add_argument(
        "--timeout",
        type=seconds(86_400),
        default=timeout,
        metavar="SECONDS",
        help=f"per-call deadline (default {timeout:g})",
    )
    tls = parser.add_argument_group("HTTPS (a registry serving with --serve-tls-*)")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA the registry's certificate chains to")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="client private key (mutual TLS)")
    add_client_token_flag(parser, presented_to="the registry")
    if listing:
        parser.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N (default 0)")
        parser.add_argument("--limit", type=int, default=100, metavar="N", help="at most N, 1-1000 (default 100)")


def action(
    actions: Actions, name: str, help_text: str, *, listing: bool = False, timeout: float = 30.0
) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
    common_flags(parser, listing=listing, timeout=timeout)
    return parser


def experiment_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", metavar="EXPERIMENT", help="the experiment's name")


def model_arguments(parser: argparse.ArgumentParser) -> None:
    experiment_argument(parser)
    parser.add_argument("model", metavar="MODEL_ID")


def split_arguments(parser: argparse.ArgumentParser) -> None:
    experiment_argument(parser)
    parser.add_argument("split", metavar="SPLIT_ID")


def directive_flag(parser: argparse.ArgumentParser, what: str, *, required: bool = False) -> None:
    parser.add_argument(
        "--directive",
        action="append",
        required=required,
        metavar="LINE",
        help=f"{what}, one directive per flag, in order (README: Directives)",
    )


def wait_flags(parser: argparse.ArgumentParser, until: str, default: float) -> None:
    parser.add_argument("--wait", action="store_true", help=f"wait until {until}; exit 1 if it failed")
    parser.add_argument(
        "--wait-timeout",
        type=seconds(7 * 86_400),
        default=default,
        metavar="SECONDS",
        help=f"how long --wait waits (default {default:g})",
    )


def split_flags(parser: argparse.ArgumentParser) -> None:
    """How a split is made (``splits create``, ``models split``)."""
    parser.add_argument("--type", choices=("random", "first"), default="random", help="default random")
    parser.add_argument("--percent", type=float, required=True, metavar="P", help="percent of rows to train on")
    parser.add_argument("--seed", type=int, metavar="N", help="random: the same seed gives the same split")
    parser.add_argument("--description", metavar="TEXT")


def split_document(options: argparse.Namespace) -> dict[str, Any]:
    """The seed's split body from split_flags and --directive."""
    parameters: dict[str, Any] = {"percent": options.percent}
    if options.seed is not None:
        parameters["seed"] = options.seed
    document: dict[str, Any] = {"type": options.type, "parameters": parameters}
    if options.directive is not None:
        document["directives"] = options.directive
    if options.description is not None:
        document["description"] = options.description
    return document
