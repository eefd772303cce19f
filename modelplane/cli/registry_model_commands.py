"""The seed's calls on one split or one model beyond creating, reading and training it:

    modelplane registry splits status EXPERIMENT SPLIT_ID           GET    .../splits/{id}/status
    modelplane registry splits delete EXPERIMENT SPLIT_ID           DELETE .../splits/{id}
    modelplane registry models delete EXPERIMENT MODEL_ID           DELETE .../models/{id}
    modelplane registry models split EXPERIMENT MODEL_ID --percent P [--type] [--seed] [--directive ...] [--wait]
                                                                    POST   .../models/{id}/split
    modelplane registry models unsplit EXPERIMENT MODEL_ID          DELETE .../models/{id}/split
    modelplane registry models directives EXPERIMENT MODEL_ID (--directive LINE ... | --clear)
                                                                    PUT    .../models/{id}/directives

Which states allow them is the registry's (its lifecycle table): a refusal is its 409 with its reason, exit 1.
"""

from __future__ import annotations

import argparse
from typing import Final

from modelplane.cli.registry_command_kit import (
    Actions,
    Job,
    action,
    directive_flag,
    model_arguments,
    print_answer,
    split_arguments,
    split_document,
    split_flags,
    split_outcome,
    wait_flags,
)
from modelplane.cli.registry_http import RegistryHttp, path_of


def _split_path(options: argparse.Namespace, *more: str) -> str:
    return path_of("experiments", options.experiment, "splits", options.split, *more)


def _model_path(options: argparse.Namespace, *more: str) -> str:
    return path_of("experiments", options.experiment, "models", options.model, *more)


async def splits_status(http: RegistryHttp, options: argparse.Namespace) -> int:
    print_answer(options, await http.call("GET", _split_path(options, "status")))
    return 0


async def splits_delete(http: RegistryHttp, options: argparse.Namespace) -> int:
    await http.call("DELETE", _split_path(options))
    print(f"deleted split {options.split}")
    return 0


async def models_delete(http: RegistryHttp, options: argparse.Namespace) -> int:
    await http.call("DELETE", _model_path(options))
    print(f"deleted model {options.model}")
    return 0


async def models_split(http: RegistryHttp, options: argparse.Namespace) -> int:
    return await split_outcome(
        http, options, await http.call("POST", _model_path(options, "split"), split_document(options))
    )


async def models_unsplit(http: RegistryHttp, options: argparse.Namespace) -> int:
    print_answer(options, await http.call("DELETE", _model_path(options, "split")))
    return 0


async def models_directives(http: RegistryHttp, options: argparse.Namespace) -> int:
    document = {"directives": [] if options.clear else options.directive}
    print_answer(options, await http.call("PUT", _model_path(options, "directives"), document))
    return 0


JOBS: Final[dict[tuple[str, str], Job]] = {
    ("splits", "status"): splits_status,
    ("splits", "delete"): splits_delete,
    ("models", "delete"): models_delete,
    ("models", "split"): models_split,
    ("models", "unsplit"): models_unsplit,
    ("models", "directives"): models_directives,
}


def _split_actions(actions: Actions) -> None:
    split_arguments(action(actions, "status", "show a split's status (and why it failed)"))
    split_arguments(action(actions, "delete", "delete a split (its models go back to PREPARING)"))


def _model_actions(actions: Actions) -> None:
    model_arguments(action(actions, "delete", "delete a model"))
    split = action(actions, "split", "make a split for the model, with its directives unless --directive is given")
    model_arguments(split)
    split_flags(split)
    directive_flag(split, "the directives to split with (they become the model's)")
    wait_flags(split, "the split is computed (COMPLETE or FAILED)", 600.0)
    model_arguments(action(actions, "unsplit", "unassign the model's split (deleted if no other model uses it)"))
    directives = action(actions, "directives", "replace the model's directives (its split is unassigned)")
    model_arguments(directives)
    given = directives.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--directive", action="append", metavar="LINE", help="a directive, one per flag, in order (README: Directives)"
    )
    given.add_argument("--clear", action="store_true", help="no directives at all")


def add_actions(group: str, actions: Actions) -> None:
    """Add this module's actions to ``group``'s (registry_client.build_parser calls it for every group)."""
    if group == "splits":
        _split_actions(actions)
    elif group == "models":
        _model_actions(actions)
