"""Names of models and servers: DNS labels, so they work as Kubernetes names, URL segments and folder names."""

from __future__ import annotations

import re

from scheduler.errors import InvalidArgument

MAX_NAME_LENGTH = 63
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_name(name: str, what: str = "model") -> str:
    """Return ``name`` if valid; raise InvalidArgument saying what is wrong otherwise.

    Dots are refused on purpose: a loaded model is named ``<name>_<version>`` on the inference server
    and its artifacts live in a folder of that name, so the name must never look like a path or suffix.
    """
    if not name:
        raise InvalidArgument(f"{what} name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{what} name {name[:20]!r}... is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not _NAME.match(name):
        raise InvalidArgument(
            f"{what} name {name!r} is invalid: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'iris-classifier')"
        )
    return name
