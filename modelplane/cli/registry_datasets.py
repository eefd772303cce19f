"""The datasets the registry's splits have read (seed 001: format, sample count, sha256; a srcpath whose bytes
changed is another version of it, listed apart):

    modelplane registry datasets list [--srcpath SRCPATH]           GET /datasets (paged)
    modelplane registry datasets get DATASET_ID                     GET /datasets/{id}
"""

from __future__ import annotations

import argparse
from typing import Final

from modelplane.cli import registry_tables
from modelplane.cli.registry_command_kit import Actions, Job, action, page, print_answer
from modelplane.cli.registry_http import RegistryHttp, path_of


async def datasets_list(http: RegistryHttp, options: argparse.Namespace) -> int:
    query = page(options) | ({"srcpath": options.srcpath} if options.srcpath is not None else {})
    print_answer(options, await http.call("GET", "/datasets", query=query), registry_tables.DATASET_COLUMNS)
    return 0


async def datasets_get(http: RegistryHttp, options: argparse.Namespace) -> int:
    print_answer(options, await http.call("GET", path_of("datasets", options.dataset)))
    return 0


JOBS: Final[dict[tuple[str, str], Job]] = {
    ("datasets", "list"): datasets_list,
    ("datasets", "get"): datasets_get,
}


def dataset_commands(actions: Actions) -> None:
    listed = action(actions, "list", "list the datasets splits have read (each version once)", listing=True)
    listed.add_argument("--srcpath", metavar="SRCPATH", help="only the versions of this srcpath")
    got = action(actions, "get", "show a dataset: format, sample count, sha256, columns or label counts")
    got.add_argument("dataset", metavar="DATASET_ID")
