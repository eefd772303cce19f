"""Checking what ServerNotify says of servers, and server records read back from the state store.

Field lengths, characters and counts are modelplane/spec/limits.py's; what makes a notification coherent is here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import InvalidArgument, ResourceExhausted
from modelplane.spec.limits import (
    MAX_GENERATION,
    MAX_REPLICAS,
    MAX_SERVERS,
    MAX_SERVERS_PER_NOTIFY,
    check_count,
    check_fields,
    shown,
)
from modelplane.spec.names import check_kubernetes_meta, check_name, is_namespace
from scheduler.models.server_records import ServerRecord


def validate_notify(servers: Sequence[pb.ServerNotify], known: Collection[str]) -> None:
    """Raise InvalidArgument naming the first problem of a ServerNotify request, or ResourceExhausted when it
    would take the scheduler past MAX_SERVERS; ``known`` are the servers the scheduler knows already."""
    check_count(len(servers), "ServerNotify.servers", MAX_SERVERS_PER_NOTIFY)
    seen: set[str] = set()
    for index, notify in enumerate(servers):
        check_fields(notify, f"servers[{index}]")
        check_name(notify.name, "server")
        where = f"server {notify.name!r}"
        if notify.name in seen:
            raise InvalidArgument(f"{where} is listed more than once in one ServerNotify; list each server once")
        seen.add(notify.name)
        for field in ("expectedReplicas", "minReplicas", "maxReplicas"):
            value = getattr(notify, field)
            if value > MAX_REPLICAS:
                raise InvalidArgument(f"{where}: {field}={value} is above the limit of {MAX_REPLICAS}")
        if notify.maxReplicas and notify.minReplicas > notify.maxReplicas:
            raise InvalidArgument(
                f"{where}: minReplicas={notify.minReplicas} is more than maxReplicas={notify.maxReplicas}"
            )
        if notify.HasField("kubernetesMeta"):
            check_kubernetes_meta(notify.kubernetesMeta, where)
    new = len(seen - set(known))
    if new and len(known) + new > MAX_SERVERS:
        raise ResourceExhausted(
            f"the scheduler knows {len(known)} servers; {new} more would pass its limit of {MAX_SERVERS}"
        )


def stored_server_problem(server: ServerRecord) -> str | None:
    """Why a server record read back from the state store cannot be used, or None."""
    try:
        check_name(server.name, "server")
    except InvalidArgument as error:
        return str(error)
    if not is_namespace(server.kubernetes_namespace):
        return f"namespace {shown(server.kubernetes_namespace)} is not a Kubernetes namespace name"
    counts = {
        "expected_replicas": server.expected_replicas or 0,
        "min_replicas": server.min_replicas,
        "max_replicas": server.max_replicas,
        "seen_replicas": server.seen_replicas,
    }
    for field, value in counts.items():
        if not 0 <= value <= MAX_REPLICAS:
            return f"{field}={value} is outside 0..{MAX_REPLICAS}"
    if not 0 <= server.kubernetes_generation <= MAX_GENERATION:
        return f"generation {server.kubernetes_generation} is outside 0..{MAX_GENERATION}"
    return None
