"""Seldon Core 2's routing conventions, so that clients written for Seldon's gateway work unchanged.

Seldon's clients name what they call in the ``Seldon-Model`` header: ``iris`` (a model), ``p1.pipeline`` (a
pipeline), ``e1.experiment`` (an experiment, over models or pipelines). The same suffixes are accepted in the
name of the path (``/v2/models/p1.pipeline/infer``). The header, when given, names the target (Seldon's own
gateway routes by it alone); else the path does. Our names never hold a dot (modelplane.spec.names), so a
suffix cannot be part of a name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, NamedTuple

SELDON_MODEL_HEADER: Final = "seldon-model"  # lower case: the gateway's headers are
PIPELINE_SUFFIX: Final = ".pipeline"
EXPERIMENT_SUFFIX: Final = ".experiment"


class TargetKind(enum.Enum):
    MODEL = "model"  # a model, or whatever the plain name routes to (an experiment by its default's name)
    PIPELINE = "pipeline"
    EXPERIMENT = "experiment"


class Target(NamedTuple):  # a tuple, not a frozen dataclass: made once per request, and cheaper to make
    kind: TargetKind
    name: str


def target_of(path_name: str, headers: Mapping[str, str]) -> Target:
    """What a request names: the Seldon-Model header's value if given, else the path's name, read with the
    suffixes above."""
    if SELDON_MODEL_HEADER not in headers and "." not in path_name:
        return Target(TargetKind.MODEL, path_name)  # the common case, in one look at each
    named = headers.get(SELDON_MODEL_HEADER, "").strip() or path_name
    if named.endswith(PIPELINE_SUFFIX) and len(named) > len(PIPELINE_SUFFIX):
        return Target(TargetKind.PIPELINE, named[: -len(PIPELINE_SUFFIX)])
    if named.endswith(EXPERIMENT_SUFFIX) and len(named) > len(EXPERIMENT_SUFFIX):
        return Target(TargetKind.EXPERIMENT, named[: -len(EXPERIMENT_SUFFIX)])
    return Target(TargetKind.MODEL, named)
