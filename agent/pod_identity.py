"""Which server and replica an agent is, from the name of the pod it runs in.

A Server's pods are a StatefulSet's: pod ``<statefulset>-<ordinal>``, and the controller names the StatefulSet
after the Server. So one pod template serves every replica: the agent is given ``--pod-name=$(POD_NAME)`` (the
downward API's ``metadata.name``) and takes its replica index from the ordinal and, unless ``--server-name``
says otherwise, its server name from the rest. A name that is not ``NAME-N`` stops the agent at start with a
message that says what was expected: a replica that guessed its index could take another's place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelplane.spec.errors import InvalidArgument
from modelplane.spec.names import check_name

MAX_REPLICA_INDEX = 9999
_ORDINAL = re.compile(r"(?P<prefix>.+)-(?P<ordinal>0|[1-9][0-9]*)")
_MAX_POD_NAME = 253


class PodNameError(ValueError):
    """A pod name an agent cannot take its identity from; the message says why and what was expected."""


@dataclass(frozen=True, slots=True)
class PodIdentity:
    server_name: str
    replica_idx: int


def identity_from_pod_name(pod_name: str) -> PodIdentity:
    """``mlserver-3`` -> server ``mlserver``, replica 3."""
    if "$(" in pod_name:
        raise PodNameError(
            f"--pod-name is {pod_name[:40]!r}: a variable left unexpanded; give the container the environment "
            "variable it names (POD_NAME from the downward API's metadata.name) before the argument uses it"
        )
    if not pod_name or len(pod_name) > _MAX_POD_NAME:
        raise PodNameError(f"--pod-name must be 1 to {_MAX_POD_NAME} characters, not {len(pod_name)}")
    match = _ORDINAL.fullmatch(pod_name)
    if match is None:
        raise PodNameError(
            f"--pod-name {pod_name[:60]!r} does not end in a StatefulSet ordinal: expected NAME-N, e.g. mlserver-0"
        )
    ordinal = int(match["ordinal"]) if len(match["ordinal"]) <= 5 else MAX_REPLICA_INDEX + 1
    if ordinal > MAX_REPLICA_INDEX:
        raise PodNameError(f"--pod-name {pod_name[:60]!r}: its ordinal is above {MAX_REPLICA_INDEX}, the largest index")
    try:
        server_name = check_name(match["prefix"], "server")
    except InvalidArgument as error:
        raise PodNameError(f"--pod-name {pod_name[:60]!r}: {error}") from None
    return PodIdentity(server_name, ordinal)
