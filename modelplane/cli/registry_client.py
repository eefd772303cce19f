"""``modelplane registry GROUP ACTION``: the client commands over a running registry's REST API (registry/api/).

    modelplane registry experiments list|get|put|delete
    modelplane registry splits list|get|create
    modelplane registry splits status|delete
    modelplane registry models list|get|create|train|deploy|status      (list: --sort METRIC [--order desc|asc])
    modelplane registry models delete|split|unsplit|directives
    modelplane registry versions list|get
    modelplane registry datasets list|get

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
from collections.abc import Sequence
from typing import Any, Final

from modelplane.auth_flags import client_token
from modelplane.cli import (
    registry_datasets,
    registry_model_commands,
    registry_promotion,
    registry_tables,
    registry_versions,
)
from modelplane.cli.registry_command_kit import Job, UsageError, split_document, split_outcome
from modelplane.cli.registry_command_kit import action as _action
from modelplane.cli.registry_command_kit import directive_flag as _directive_flag
from modelplane.cli.registry_command_kit import experiment_argument as _experiment_argument
from modelplane.cli.registry_command_kit import model_arguments as _model_arguments
from modelplane.cli.registry_command_kit import page as _page
from modelplane.cli.registry_command_kit import print_answer as _print
from modelplane.cli.registry_command_kit import split_flags as _split_flags
from modelplane.cli.registry_command_kit import wait as _wait
from modelplane.cli.registry_command_kit import wait_flags as _wait_flags
from modelplane.cli.registry_http import RegistryCallError, RegistryHttp, path_of
from modelplane.command_line import EXIT_FAILURE, EXIT_USAGE, fail, subparsers
from modelplane.transport import TransportError, TransportSecurity, http_client_ssl

GROUPS: Final = ("experiments", "splits", "models", "versions", "datasets", *registry_promotion.GROUPS)
# The registry's metrics and orders (registry/service/model_order.py) are its to check: the CLI passes them on.
MODEL_SETTLED_AFTER_TRAIN: Final = frozenset({"TRAINED", "TRAINING_FAILED"})
EPILOG: Final = (
    "client commands over a running registry: modelplane registry experiments|splits|models|versions|datasets "
    "ACTION ... (modelplane registry models --help)"
)

# --- the calls, one per action ------------------------------------------------------------------------------


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
    path = path_of("experiments", options.experiment, "splits")
    return await split_outcome(http, options, await http.call("POST", path, split_document(options)))


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
        "algorithm": options.algorithm,
        "hyperparameters": _hyperparameters(options.param) if options.param else None,
    }
    document = {key: value for key, value in given.items() if value is not None}
    _print(options, await http.call("POST", path_of("experiments", options.experiment, "models"), document))
    return 0


async def models_train(http: RegistryHttp, options: argparse.Namespace) -> int:
    document: dict[str, Any] = {}  # no algorithm, no hyper-parameters: the model's own
    if options.algorithm is not None:
        document["algorithm"] = options.algorithm
    if options.param:
        document["hyperparameters"] = _hyperparameters(options.param)
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
    **registry_model_commands.JOBS,
    **registry_versions.JOBS,
    **registry_datasets.JOBS,
    **registry_promotion.jobs(_print),
}

# --- the command line ---------------------------------------------------------------------------------------


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
    _split_flags(create)
    _directive_flag(create, "prepare the data before splitting")
    _wait_flags(create, "the split is computed (COMPLETE or FAILED)", 600.0)


def _algorithm_flags(parser: argparse.ArgumentParser, algorithm_help: str) -> None:
    parser.add_argument("--algorithm", metavar="NAME", help=f"e.g. random_forest, linear_regression ({algorithm_help})")
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a hyper-parameter of the algorithm (a JSON number or true/false is that; else a string)",
    )


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
    _algorithm_flags(create, "the algorithm to train it with (checked now; train may name another)")
    train = _action(actions, "train", "train the model on its split")
    _model_arguments(train)
    _algorithm_flags(train, "default: the one the model was created with")
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
        ("versions", "a model's registered versions (one per training)", registry_versions.version_commands),
        ("datasets", "the datasets the registry's splits have read", registry_datasets.dataset_commands),
    ):
        group = groups.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
        add(actions)
        registry_model_commands.add_actions(name, actions)  # the seed's other calls on splits and models
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


async def _run_job(job: Job, http: RegistryHttp, options: argparse.Namespace) -> int:
    async with http:  # one HTTP session for all the command's calls
        return await job(http, options)


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
    try:
        return asyncio.run(
            _run_job(
                JOBS[(options.group, options.action)], RegistryHttp(base, options.timeout, context, token), options
            )
        )
    except UsageError as error:
        return fail(str(error), EXIT_USAGE)
    except RegistryCallError as error:
        return fail(error.message, error.exit_status)
