"""Choose a server and replicas for one model version.

Servers are tried in a fixed order (the model's current server first, then by name) so the same state
always yields the same decision and a loaded model does not move just because another server also fits.
When nothing fits, the servers' rejections are collected into one reason, because an operator reading
ScheduleFailed needs to see why servers said no, not only the last one. The reason names the first few servers
(and replicas) and says how many more there were, so ten thousand servers make one short line, not 340 KB.

Replicas are judged in preference order until enough fit, not all of them: a server whose replicas come from a
``ReplicaCandidates`` source (the scheduler's keeps them ordered by free memory) costs O(k log n) for k replicas
wanted of n, plus, only when too few fit, the first few replicas by index for the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelplane.spec.limits import bounded_join
from scheduler.placement.listed_replicas import ListedReplicas
from scheduler.placement.replica_filters import (
    DEFAULT_REPLICA_FILTERS,
    EnoughMemory,
    NotDraining,
    ReplicaFilter,
    ServerServing,
)
from scheduler.placement.replica_sorters import DEFAULT_REPLICA_ORDER, ReplicaKey
from scheduler.placement.server_filters import DEFAULT_SERVER_FILTERS, ServerFilter
from scheduler.placement.views import PlacementDecision, PlacementRequest, ReplicaCandidates, ReplicaView, ServerView

# A ReplicaCandidates source may leave out what these reject (views.py), so it is asked only when they judge too.
_PRUNED_BY_SOURCES = frozenset({ServerServing, NotDraining, EnoughMemory})
# Replica rejections named in a server's reason; the rest are counted.
_SHOWN_REPLICAS = 3

NO_SERVERS = "no servers are connected"


def place(
    request: PlacementRequest,
    servers: Sequence[ServerView],
    server_filters: Sequence[ServerFilter] = DEFAULT_SERVER_FILTERS,
    replica_filters: Sequence[ReplicaFilter] = DEFAULT_REPLICA_FILTERS,
    replica_order: Sequence[ReplicaKey] = DEFAULT_REPLICA_ORDER,
) -> PlacementDecision:
    """Place `request` on the first server that takes all desired replicas, else on the first partial fit."""
    if request.replicas == 0:
        return PlacementDecision(server=request.current_server, replicas=(), scale_up_to=None, failure=None)
    if not servers:
        return PlacementDecision.failed(NO_SERVERS)
    reasons: list[str] = []
    partial: PlacementDecision | None = None
    for server in try_order(request, servers):
        outcome = _try_server(request, server, server_filters, replica_filters, replica_order)
        if isinstance(outcome, str):
            reasons.append(f"server {server.name}: {outcome}")
        elif not outcome.is_partial:
            return outcome  # a full placement beats any partial one found earlier
        elif partial is None:
            partial = outcome
    return partial if partial is not None else PlacementDecision.failed(bounded_join(reasons, noun="more servers"))


def try_order(request: PlacementRequest, servers: Sequence[ServerView]) -> list[ServerView]:
    """The model's current server first, then the rest by name."""
    return sorted(servers, key=lambda server: (server.name != request.current_server, server.name))


def _try_server(
    request: PlacementRequest,
    server: ServerView,
    server_filters: Sequence[ServerFilter],
    replica_filters: Sequence[ReplicaFilter],
    replica_order: Sequence[ReplicaKey],
) -> PlacementDecision | str:
    """A decision (full or partial) for this server, or why it cannot take the model."""
    for server_filter in server_filters:
        reason = server_filter.reject(request, server)
        if reason is not None:
            return reason
    source = _candidates(server, replica_filters, replica_order)
    # With min_replicas unset, placement is all or nothing; a minimum above the desired count cannot lower it.
    minimum = min(request.min_replicas, request.replicas)
    needed = minimum or request.replicas
    if len(source) < needed:
        noun = "replica" if len(source) == 1 else "replicas"
        return f"has {len(source)} {noun}, model needs {'at least ' if minimum else ''}{needed}"

    def fits(replica: ReplicaView) -> bool:
        return _first_rejection(request, replica, replica_filters) is None

    chosen = tuple(replica.index for replica in source.preferred(request, request.replicas, fits))
    if len(chosen) >= request.replicas:
        return PlacementDecision(
            server=server.name, replicas=chosen[: request.replicas], scale_up_to=None, failure=None
        )
    if minimum and len(chosen) >= minimum:
        scale_up_to = min(request.replicas, server.max_replicas) if server.max_replicas > 0 else request.replicas
        return PlacementDecision(server=server.name, replicas=chosen, scale_up_to=scale_up_to, failure=None)
    # Fewer than wanted fit, so ``chosen`` is every replica that fits: the others are the rejected ones.
    shown: list[str] = []
    for replica in source:
        if len(shown) == _SHOWN_REPLICAS:
            break
        reason = None if replica.index in chosen else _first_rejection(request, replica, replica_filters)
        if reason is not None:
            shown.append(reason)
    rejected = len(source) - len(chosen)
    listed = bounded_join(shown, shown_items=_SHOWN_REPLICAS, noun="more replicas", more=max(0, rejected - len(shown)))
    return f"{len(chosen)} of {needed} needed replicas fit ({listed})"


def _candidates(
    server: ServerView, replica_filters: Sequence[ReplicaFilter], replica_order: Sequence[ReplicaKey]
) -> ReplicaCandidates:
    """The server's replicas as a source to ask: its own, when it has one and may be asked with these filters and
    this order; else every replica listed and sorted whole."""
    replicas = server.replicas
    if isinstance(replicas, tuple):
        return ListedReplicas(replicas, replica_order)
    judged_by = {type(replica_filter) for replica_filter in replica_filters}
    if replica_order == DEFAULT_REPLICA_ORDER and judged_by >= _PRUNED_BY_SOURCES:
        return replicas
    return ListedReplicas(tuple(replicas), replica_order)


def _first_rejection(
    request: PlacementRequest, replica: ReplicaView, replica_filters: Sequence[ReplicaFilter]
) -> str | None:
    for replica_filter in replica_filters:
        reason = replica_filter.reject(request, replica)
        if reason is not None:
            return reason
    return None
