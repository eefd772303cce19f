"""``modelplane registry aliases list|get|set|delete`` and ``modelplane registry promote EXPERIMENT MODEL --canary N
| --finish | --abort``: the client commands over the registry's aliases and promotions (registry/promotion_rules.py
says what each alias means). Hooked into registry_client.py's parser, jobs and GROUPS; the calls share its flags,
output and exit statuses (0 done, 1 the work failed or a state that does not allow it, 2 bad input).

Clients call one name throughout a promotion: the experiment's stable name, printed as ``servingName``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

from modelplane.cli import registry_tables
from modelplane.cli.registry_http import RegistryHttp, path_of

GROUPS: Final = ("aliases", "promote")
# A deploy or a canary is answered once the scheduler serves it (the registry's --deploy-timeout, 300 s by default;
# a finish loads and waits once, then stops and unloads).
SERVING_TIMEOUT_SECONDS: Final = 330.0
PROMOTE: Final = "promote"  # the promote group's only action: it takes its flags directly

ALIAS_COLUMNS: Final[Sequence[registry_tables.Column]] = (
    ("ALIAS", lambda d: str(d.get("alias", ""))),
    ("MODEL", lambda d: str(d.get("model", ""))),
    ("VERSION", lambda d: str(d.get("version", ""))),
    ("SERVING NAME", lambda d: str(d.get("servingName") or "-")),
)

Job = Callable[[RegistryHttp, argparse.Namespace], Coroutine[Any, Any, int]]
Printer = Callable[..., None]
# registry_client.py's _action: (actions, name, help, listing=, timeout=) -> the action's parser, common flags added.
AddAction = Callable[..., argparse.ArgumentParser]


def _alias_path(options: argparse.Namespace) -> str:
    return path_of("experiments", options.experiment, "aliases", options.alias)


def jobs(show: Printer) -> dict[tuple[str, str], Job]:
    """The commands' calls, printing through registry_client.py's ``_print(options, answer, columns)``."""

    async def aliases_list(http: RegistryHttp, options: argparse.Namespace) -> int:
        show(options, await http.call("GET", path_of("experiments", options.experiment, "aliases")), ALIAS_COLUMNS)
        return 0

    async def aliases_get(http: RegistryHttp, options: argparse.Namespace) -> int:
        show(options, await http.call("GET", _alias_path(options)))
        return 0

    async def aliases_set(http: RegistryHttp, options: argparse.Namespace) -> int:
        document: dict[str, Any] = {"model": options.model}
        if options.version is not None:
            document["version"] = options.version
        show(options, await http.call("PUT", _alias_path(options), document))
        return 0

    async def aliases_delete(http: RegistryHttp, options: argparse.Namespace) -> int:
        await http.call("DELETE", _alias_path(options))
        print(f"deleted alias {options.alias} of experiment {options.experiment}")
        return 0

    async def promote(http: RegistryHttp, options: argparse.Namespace) -> int:
        base = path_of("experiments", options.experiment, "promotion")
        if options.status:
            show(options, await http.call("GET", base))
            return 0
        document: dict[str, Any] = {"model": options.model}
        if options.canary is not None:
            document["percent"] = options.canary
            if options.version is not None:
                document["version"] = options.version
            step = "canary"
        else:
            step = "finish" if options.finish else "abort"
        show(options, await http.call("POST", f"{base}/{step}", document))
        return 0

    return {
        ("aliases", "list"): aliases_list,
        ("aliases", "get"): aliases_get,
        ("aliases", "set"): aliases_set,
        ("aliases", "delete"): aliases_delete,
        (PROMOTE, PROMOTE): promote,
    }


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of percent") from None
    if not 1 <= value <= 99:
        raise argparse.ArgumentTypeError(f"{value}: the candidate's share is 1-99 percent (100 is --finish)")
    return value


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: versions are numbered from 1")
    return value


def add_groups(groups: argparse._SubParsersAction[argparse.ArgumentParser], add_action: AddAction) -> None:
    aliases = groups.add_parser(
        "aliases",
        help="an experiment's aliases: production (served under its stable name), candidate, labels",
        description="An experiment's aliases on registered versions: production is served under the "
        "experiment's stable name, candidate under its model's own name, any other alias is a label.",
    )
    actions = aliases.add_subparsers(dest="action", metavar="ACTION", required=True)
    listed = add_action(actions, "list", "list an experiment's aliases", listing=False)
    listed.add_argument("experiment", metavar="EXPERIMENT")
    got = add_action(actions, "get", "show the version an alias names")
    got.add_argument("experiment", metavar="EXPERIMENT")
    got.add_argument("alias", metavar="ALIAS")
    put = add_action(actions, "set", "move an alias to a version (production/candidate: deployed first)",
                     timeout=SERVING_TIMEOUT_SECONDS)  # fmt: skip
    put.add_argument("experiment", metavar="EXPERIMENT")
    put.add_argument("alias", metavar="ALIAS", help="production, candidate, or a label (a-z 0-9 -, up to 32)")
    put.add_argument("model", metavar="MODEL_ID")
    put.add_argument("--version", type=_version, metavar="N", help="the model's version (default: its newest)")
    deleted = add_action(actions, "delete", "remove an alias (production: its stable name stops serving)",
                         timeout=SERVING_TIMEOUT_SECONDS)  # fmt: skip
    deleted.add_argument("experiment", metavar="EXPERIMENT")
    deleted.add_argument("alias", metavar="ALIAS")

    promote = add_action(groups, PROMOTE, "promote a model's version to production through a canary",
                         timeout=SERVING_TIMEOUT_SECONDS)  # fmt: skip
    promote.description = (
        "Promote a version through a canary: --canary N sends N% of the traffic of the experiment's stable name "
        "to MODEL (its candidate; again: a new N), --finish makes it production (all traffic), --abort sends all "
        "traffic back to production. Clients keep calling the stable name (servingName)."
    )
    promote.add_argument("experiment", metavar="EXPERIMENT")
    promote.add_argument("model", metavar="MODEL_ID", nargs="?", help="the candidate (not with --status)")
    step = promote.add_mutually_exclusive_group(required=True)
    step.add_argument("--canary", type=_percent, metavar="N", help="N percent (1-99) to the candidate")
    step.add_argument("--finish", action="store_true", help="make the candidate production")
    step.add_argument("--abort", action="store_true", help="stop the canary; production alone again")
    step.add_argument("--status", action="store_true", help="show the experiment's latest promotion")
    promote.add_argument("--version", type=_version, metavar="N", help="with --canary: the version (default newest)")
    promote.set_defaults(action=PROMOTE)


def usage_problem(options: argparse.Namespace) -> str | None:
    if options.group != PROMOTE:
        return None
    if options.status:
        return "--status takes no MODEL_ID" if options.model is not None else None
    if options.model is None:
        return "MODEL_ID is needed (the candidate's model)"
    if options.version is not None and options.canary is None:
        return "--version goes with --canary (a finish or an abort is of the running canary's version)"
    return None
