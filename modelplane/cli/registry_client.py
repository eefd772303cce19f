"""``modelplane registry GROUP ACTION``: the client commands over a running registry's REST API (registry/api/).

    modelplane registry experiments list|get|put|delete
    modelplane registry splits list|get|create
    modelplane registry models list|get|create|train|deploy|status      (list: --sort METRIC [--order desc|asc])

They share ``modelplane registry`` with the serving command (``modelplane registry --listen ...``): a first word
that is one of GROUPS is a client command, anything else (flags) is the server's, exactly as before.

Output: lists as a table by default, single documents as the registry's JSON (``--output`` chooses). Exit status:
0 done; 2 bad input (the command line, or a request the registry refused as malformed: 400, 413); 1 the work failed
(the registry unreachable, no such experiment/split/model, a state that does not allow it (409), a training that
failed under --wait). Errors are one line in words: the registry's own reason, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from modelplane.auth_flags import add_client_token_flag, client_token
from modelplane.cli import registry_promotion, registry_tables
from modelplane.cli.registry_http import Answer, RegistryCallError, RegistryHttp, path_of
from modelplane.command_line import EXIT_FAILURE, EXIT_USAGE, fail, subparsers
from modelplane.flag_types import seconds
from modelplane.transport import TransportError, TransportSecurity, http_client_ssl
from registry.settings import DEFAULT_LISTEN

DEFAULT_REGISTRY: Final = f"http://{DEFAULT_LISTEN}"
GROUPS: Final = ("experiments", "splits", "models", *registry_promotion.GROUPS)
# The registry's metrics and orders (registry/service/model_order.py) are its to check: the CLI passes them on.
SPLIT_SETTLED: Final = frozenset({"COMPLETE", "FAILED"})
MODEL_SETTLED_AFTER_TRAIN: Final = frozenset({"TRAINED", "TRAINING_FAILED"})
WAIT_INTERVAL_SECONDS: Final = 0.5
EPILOG: Final = (
    "client commands over a running registry: modelplane registry experiments|splits|models ACTION ... "
    "(modelplane registry models --help)"
)

Job = Callable[[RegistryHttp, argparse.Namespace], Coroutine[Any, Any, int]]


class UsageError(Exception):
    """Bad input found after parsing (an unreadable hyper-parameter): exit 2."""


# --- the calls, one per action ------------------------------------------------------------------------------


def _print(
    options: argparse.Namespace, answer: Answer, columns: Sequence[registry_tables.Column] | None = None
) -> None:
    if options.output == "json" or (options.output is None and columns is None):
        print(json.dumps(answer.body, indent=2))
    elif columns is not None and isinstance(answer.body, list):
        print(registry_tables.table(answer.body, columns) if answer.body else f"no {options.group}")
        _note_more(options, answer)
    else:
        print(registry_tables.document_lines(answer.body))


def _note_more(options: argparse.Namespace, answer: Answer) -> None:
    shown = len(answer.body)
    if answer.total is not None and options.offset + shown < answer.total:
        first = options.offset + 1
        print(f"({first}-{options.offset + shown} of {answer.total}: --offset for more)", file=sys.stderr)


def _page(options: argparse.Namespace) -> dict[str, str]:
    return {"offset": str(options.offset), "limit": str(options.limit)}


async def experiments_list(http: RegistryHttp, options: argparse.Namespace) -> int:
    query = _page(options) | ({"srcpath": options.srcpath} if options.srcpath is not None else {})
    _print(options, await http.call("GET", "/experiments", query=query), registry_tables.EXPERIMENT_COLUMNS)
    return 0


async def experiments_get(http: RegistryHttp, options: argparse.Namespace) -> int:
    _print(options, await http.call("GET", path_of("experiments", options.experiment)))
    return 0


async def experiments_put(http: RegistryHttp, options: argparse.Namespace) -> int:
    given = {
        "description": options.description,
        "srcpath": options.srcpath,
        "outcome": options.outcome,
        "outcomeType": options.outcome_type,
        "directives": options.directive,
    }
    document = {key: value for key, value in given.items() if value is not None}
    _print(options, await http.call("PUT", path_of("experiments", options.experiment), document))
    return 0


async def experiments_delete(http: RegistryHttp, options: argparse.Namespace) -> int:
    await http.call("DELETE", path_of("experiments", options.experiment))
    print(f"deleted experiment {options.experiment}")
    return 0


async def splits_list(http: RegistryHttp, options: argparse.Namespace) -> int:
    answer = await http.call("GET", path_of("experiments", options.experiment, "splits"), query=_page(options))
    _print(options, answer, registry_tables.SPLIT_COLUMNS)
    return 0


async def splits_get(http: RegistryHttp, options: argparse.Namespace) -> int:
    _print(options, await http.call("GET", path_of("experiments", options.experiment, "splits", options.split)))
    return 0


async def splits_create(http: RegistryHttp, options: argparse.Namespace) -> int:
    parameters: dict[str, Any] = {"percent": options.percent}
    if options.seed is not None:
        parameters["seed"] = options.seed
    document: dict[str, Any] = {"type": options.type, "parameters": parameters}
    if options.directive is not None:
        document["directives"] = options.directive
    if options.description is not None:
        document["description"] = options.description
    answer = await http.call("POST", path_of("experiments", options.experiment, "splits"), document)
    if not options.wait:
        _print(options, answer)
        return 0
    status_path = path_of("experiments", options.experiment, "splits", str(answer.body["id"]), "status")
    settled = await _wait(http, status_path, SPLIT_SETTLED, options.wait_timeout)
    _print(options, settled)
    return 0 if settled.body.get("status") == "COMPLETE" else EXIT_FAILURE


async def models_list(http: RegistryHttp, options: argparse.Namespace) -> int:
    query = _page(options)
    if options.sort is not None:
        query["sort"] = options.sort
    if options.order is not None:
        query["order"] = options.order
    answer = await http.call("GET", path_of("experiments", options.experiment, "models"), query=query)
    _print(options, answer, registry_tables.model_columns(options.sort))
    return 0


async def models_get(http: RegistryHttp, options: argparse.Namespace) -> int:
    _print(options, await http.call("GET", path_of("experiments", options.experiment, "models", options.model)))
    return 0


async def models_status(http: RegistryHttp, options: argparse.Namespace) -> int:
    path = path_of("experiments", options.experiment, "models", options.model, "status")
    _print(options, await http.call("GET", path))
    return 0


async def models_create(http: RegistryHttp, options: argparse.Namespace) -> int:
    given = {
        "name": options.name,
        "description": options.description,
        "split": options.split,
        "directives": options.directive,
        "features": options.feature,
    }
    document = {key: value for key, value in given.items() if value is not None}
    _print(options, await http.call("POST", path_of("experiments", options.experiment, "models"), document))
    return 0


async def models_train(http: RegistryHttp, options: argparse.Namespace) -> int:
    document: dict[str, Any] = {
        "algorithm": options.algorithm,
        "hyperparameters": _hyperparameters(options.param or []),
    }
    if options.feature is not None:
        document["features"] = options.feature
    model_path = ("experiments", options.experiment, "models", options.model)
    answer = await http.call("POST", path_of(*model_path, "train"), document)
    if not options.wait:
        _print(options, answer)
        return 0
    settled = await _wait(http, path_of(*model_path, "status"), MODEL_SETTLED_AFTER_TRAIN, options.wait_timeout)
    if settled.body.get("status") != "TRAINED":
        _print(options, settled)
        return EXIT_FAILURE
    _print(options, await http.call("GET", path_of(*model_path)))
    return 0


async def models_deploy(http: RegistryHttp, options: argparse.Namespace) -> int:
    path = path_of("experiments", options.experiment, "models", options.model, "deploy")
    _print(options, await http.call("POST", path))
    return 0


async def _wait(http: RegistryHttp, status_path: str, settled: frozenset[str], timeout: float) -> Answer:
    """Poll a status until it is one of ``settled``; a RegistryCallError past ``timeout`` (--wait-timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await http.call("GET", status_path)
        if isinstance(answer.body, dict) and answer.body.get("status") in settled:
            return answer
        if time.monotonic() > deadline:
            status = answer.body.get("status") if isinstance(answer.body, dict) else answer.body
            raise RegistryCallError(f"{status_path}: still {status} after {timeout:g}s (--wait-timeout)")
        await asyncio.sleep(WAIT_INTERVAL_SECONDS)


def _hyperparameters(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs: a VALUE that is a JSON number or true/false is that, anything else a string (a
    string that looks like a number is given JSON-quoted: ``key='"3"'``)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key:
            raise UsageError(f"--param {pair!r}: give KEY=VALUE")
        if key in values:
            raise UsageError(f"--param {key}: given twice")
        values[key] = _hyperparameter(text)
    return values


def _hyperparameter(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float | str) else text


JOBS: Final[dict[tuple[str, str], Job]] = {
    ("experiments", "list"): experiments_list,
    ("experiments", "get"): experiments_get,
    ("experiments", "put"): experiments_put,
    ("experiments", "delete"): experiments_delete,
    ("splits", "list"): splits_list,
    ("splits", "get"): splits_get,
    ("splits", "create"): splits_create,
    ("models", "list"): models_list,
    ("models", "get"): models_get,
    ("models", "create"): models_create,
    ("models", "train"): models_train,
    ("models", "deploy"): models_deploy,
    ("models", "status"): models_status,
    **registry_promotion.jobs(_print),
}

# --- the command line ---------------------------------------------------------------------------------------


def _common_flags(parser: argparse.ArgumentParser, *, listing: bool, timeout: float = 30.0) -> None:
    parser.add_argument(
        "--registry",
        default=DEFAULT_REGISTRY,
        metavar="URL",
        help=f"the registry's REST API (default {DEFAULT_REGISTRY})",
    )
    parser.add_argument(
        "--output",
        choices=("json", "table"),
        default=None,
        help=f"json (the registry's documents as they are) or table (default: {'table' if listing else 'json'})",
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


def _action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    *,
    listing: bool = False,
    timeout: float = 30.0,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
    _common_flags(parser, listing=listing, timeout=timeout)
    return parser


def _experiment_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", metavar="EXPERIMENT", help="the experiment's name")


def _directive_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--directive",
        action="append",
        metavar="LINE",
        help=f"{what}, one directive per flag, in order (README: Directives)",
    )


def _wait_flags(parser: argparse.ArgumentParser, until: str, default: float) -> None:
    parser.add_argument("--wait", action="store_true", help=f"wait until {until}; exit 1 if it failed")
    parser.add_argument(
        "--wait-timeout",
        type=seconds(7 * 86_400),
        default=default,
        metavar="SECONDS",
        help=f"how long --wait waits (default {default:g})",
    )


def _experiments_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listed = _action(actions, "list", "list experiments", listing=True)
    listed.add_argument("--srcpath", metavar="SRCPATH", help="only the experiments of this dataset")
    _experiment_argument(_action(actions, "get", "show an experiment"))
    put = _action(actions, "put", "add an experiment or update one (srcpath, outcome, outcome type are set once)")
    _experiment_argument(put)
    put.add_argument("--description", metavar="TEXT")
    put.add_argument("--srcpath", metavar="SRCPATH", help="under the registry's datasets root, or s3:// / file://")
    put.add_argument("--outcome", metavar="COLUMN", help="the column models predict")
    put.add_argument("--outcome-type", metavar="TYPE", help="the outcome's type (e.g. double, string)")
    _directive_flag(put, "the experiment's directives")
    _experiment_argument(_action(actions, "delete", "delete an experiment with its splits and models"))


def _splits_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _experiment_argument(_action(actions, "list", "list an experiment's splits", listing=True))
    got = _action(actions, "get", "show a split with its per-field train/test stats")
    _experiment_argument(got)
    got.add_argument("split", metavar="SPLIT_ID")
    create = _action(actions, "create", "split the experiment's dataset into train and test")
    _experiment_argument(create)
    create.add_argument("--type", choices=("random", "first"), default="random", help="default random")
    create.add_argument("--percent", type=float, required=True, metavar="P", help="percent of rows to train on")
    create.add_argument("--seed", type=int, metavar="N", help="random: the same seed gives the same split")
    create.add_argument("--description", metavar="TEXT")
    _directive_flag(create, "prepare the data before splitting")
    _wait_flags(create, "the split is computed (COMPLETE or FAILED)", 600.0)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    _experiment_argument(parser)
    parser.add_argument("model", metavar="MODEL_ID")


def _models_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listed = _action(actions, "list", "list an experiment's models, or compare them by a metric", listing=True)
    _experiment_argument(listed)
    listed.add_argument(
        "--sort",
        metavar="METRIC",
        help="order by this evaluation metric, the best first (accuracy, f1, ...: higher; rmse, mae, ...: lower); "
        "models without it last",
    )
    listed.add_argument("--order", choices=("desc", "asc"), help="with --sort: highest or lowest first instead")
    _model_arguments(_action(actions, "get", "show a model"))
    _model_arguments(_action(actions, "status", "show a model's lifecycle state (and why it failed)"))
    create = _action(actions, "create", "add a model, from an existing split or with directives")
    _experiment_argument(create)
    create.add_argument("--name", metavar="NAME")
    create.add_argument("--description", metavar="TEXT")
    create.add_argument("--split", metavar="SPLIT_ID", help="train on this split (then no --directive)")
    _directive_flag(create, "the model's directives (it is split later)")
    create.add_argument("--feature", action="append", metavar="COLUMN", help="a feature (default: the split's)")
    train = _action(actions, "train", "train the model on its split")
    _model_arguments(train)
    train.add_argument("--algorithm", required=True, metavar="NAME", help="e.g. random_forest, linear_regression")
    train.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a hyper-parameter (a JSON number or true/false is that; else a string)",
    )
    train.add_argument("--feature", action="append", metavar="COLUMN", help="a feature (default: the model's)")
    _wait_flags(train, "the training ends (TRAINED or TRAINING_FAILED)", 3600.0)
    # A deploy is answered once the model serves (the registry's --deploy-timeout, 300 s by default).
    _model_arguments(_action(actions, "deploy", "deploy the model's newest version; answered once it serves",
                             timeout=330.0))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelplane registry",
        description="Client commands over a running registry's REST API. (Serving it: modelplane registry "
        "--listen HOST:PORT ...)",
    )
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for name, help_text, add in (
        ("experiments", "experiments: a dataset and the outcome to predict", _experiments_commands),
        ("splits", "an experiment's train/test splits", _splits_commands),
        ("models", "an experiment's models: create, train, compare, deploy", _models_commands),
    ):
        group = groups.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        add(group.add_subparsers(dest="action", metavar="ACTION", required=True))
    registry_promotion.add_groups(groups, _action)
    return parser


def _usage_problem(options: argparse.Namespace, base: str) -> str | None:
    if not base.startswith(("http://", "https://")):
        return f"--registry {options.registry!r} must be an http:// or https:// URL"
    if base.startswith("http://") and (options.tls_ca or options.tls_cert or options.tls_key):
        return "--tls-ca/--tls-cert/--tls-key need an https:// --registry URL"
    listing = hasattr(options, "limit")  # the list actions page
    if listing and not 1 <= options.limit <= 1000:
        return "--limit must be from 1 to 1000"
    if listing and options.offset < 0:
        return "--offset must be 0 or more"
    if getattr(options, "order", None) is not None and options.sort is None:
        return "--order needs --sort"
    return None


def run(argv: Sequence[str]) -> int:
    """Run one client command (``argv`` after ``modelplane registry``, starting with one of GROUPS)."""
    parser = build_parser()
    options = parser.parse_args(argv)
    group_parser = subparsers(parser)[options.group]
    action_parser = subparsers(group_parser).get(options.action, group_parser)  # promote has no actions
    base = str(options.registry).rstrip("/")
    problem = _usage_problem(options, base) or registry_promotion.usage_problem(options)
    if problem is not None:
        action_parser.error(problem)  # exit 2 with the action's usage
    try:
        TransportSecurity(cert_file=options.tls_cert, key_file=options.tls_key, ca_file=options.tls_ca).validate()
        context = http_client_ssl(options.tls_ca, options.tls_cert, options.tls_key)
        presented = client_token(options.auth_token_file)
        token = presented.current() if presented is not None else None  # one command: one read
    except TransportError as error:
        return fail(str(error), EXIT_USAGE)
    http = RegistryHttp(base, options.timeout, context, token)
    try:
        return asyncio.run(JOBS[(options.group, options.action)](http, options))
    except UsageError as error:
        return fail(str(error), EXIT_USAGE)
    except RegistryCallError as error:
        return fail(error.message, error.exit_status)
