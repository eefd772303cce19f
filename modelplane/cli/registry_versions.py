"""A model's registered versions (seed 001: one per finished training, with its artifact manifest, metrics,
metadata and lineage):

    modelplane registry versions list EXPERIMENT MODEL_ID            GET .../models/{id}/versions (paged)
    modelplane registry versions get EXPERIMENT MODEL_ID VERSION     GET .../models/{id}/versions/{version}
"""

from __future__ import annotations

import argparse
from typing import Final

from modelplane.cli import registry_tables
from modelplane.cli.registry_command_kit import Actions, Job, action, model_arguments, page, print_answer
from modelplane.cli.registry_http import RegistryHttp, path_of
from modelplane.flag_types import bounded_int


def _versions_path(options: argparse.Namespace, *more: str) -> str:
    return path_of("experiments", options.experiment, "models", options.model, "versions", *more)


async def versions_list(http: RegistryHttp, options: argparse.Namespace) -> int:
    answer = await http.call("GET", _versions_path(options), query=page(options))
    print_answer(options, answer, registry_tables.VERSION_COLUMNS)
    return 0


async def versions_get(http: RegistryHttp, options: argparse.Namespace) -> int:
    print_answer(options, await http.call("GET", _versions_path(options, str(options.version))))
    return 0


JOBS: Final[dict[tuple[str, str], Job]] = {
    ("versions", "list"): versions_list,
    ("versions", "get"): versions_get,
}


def version_commands(actions: Actions) -> None:
    model_arguments(action(actions, "list", "list a model's registered versions, the oldest first", listing=True))
    got = action(actions, "get", "show a version: its manifest (download URL, sha256), metrics, metadata, lineage")
    model_arguments(got)
    got.add_argument(
        "version", type=bounded_int(1, 2**31 - 1), metavar="VERSION", help="its number (1 is the first training)"
    )
