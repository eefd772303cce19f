"""Names of models and servers: DNS labels, so they work as Kubernetes names, URL segments and folder names."""

from __future__ import annotations

import hashlib
import re

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import InvalidArgument, SchedulerError
from modelplane.spec.limits import MAX_GENERATION, MAX_NAME_CHARS, shown

MAX_NAME_LENGTH = MAX_NAME_CHARS
# Used with fullmatch: a pattern ending in "$" would also match before a final newline.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


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
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{what} name {shown(name)} is invalid: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'iris-classifier')"
        )
    return name


def is_namespace(namespace: str) -> bool:
    """Empty, or a Kubernetes namespace name (a DNS label)."""
    return not namespace or (len(namespace) <= MAX_NAME_LENGTH and _NAME.fullmatch(namespace) is not None)


def check_kubernetes_meta(meta: pb.KubernetesMeta, where: str, error: type[SchedulerError] = InvalidArgument) -> None:
    """A Kubernetes namespace is a DNS label (or empty); a generation is never negative."""
    if not is_namespace(meta.namespace):
        raise error(f"{where}.kubernetesMeta.namespace {shown(meta.namespace)} is not a Kubernetes namespace name")
    if not 0 <= meta.generation <= MAX_GENERATION:
        raise error(f"{where}.kubernetesMeta.generation {meta.generation} is negative")


_INVALID_NAME_CHARACTERS = re.compile(r"[^a-z0-9-]+")


def model_name_for(text: str) -> str:
    """A valid scheduler model name made from free text (a design token, an experiment and a model id): invalid
    characters become ``-``; when anything had to change, a short hash of ``text`` keeps distinct texts apart
    (``Iris_LR`` and ``iris-lr`` are different names)."""
    name = _INVALID_NAME_CHARACTERS.sub("-", text.lower()).strip("-")
    if name == text and len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    stem = name[: MAX_NAME_LENGTH - len(digest) - 1].strip("-") or "model"
    return f"{stem}-{digest}"
