"""How many replicas a Server's StatefulSet should have now, and whether a scale-down may be made yet.

Three voices say how many replicas a Server should have: the user (``spec.replicas``), the scheduler (a
ScalingRequest: a model needs more replicas, or replicas have been idle) and the bounds (``minReplicas``,
``maxReplicas``). The StatefulSet's ``spec.replicas`` is where the answer lives; the Server's spec is the user's and
is never written. The StatefulSet carries the ``spec.replicas`` it last followed (an annotation), so:

- a Server whose ``spec.replicas`` changed since is followed (a pending scaling request is dropped: the user spoke
  last);
- otherwise a pending scaling request is followed;
- otherwise the StatefulSet keeps what it has (the last scaling), brought within the bounds.

Every answer is within the bounds. A scale-down is made only once the replicas it removes are drained: the
StatefulSet removes the highest ordinals, so the scheduler is first told the lower count (ServerNotify's
``expectedReplicas``; it then moves every model off the replicas at or above it, each model serving elsewhere
before it leaves, see scheduler/models/version_placement.py), and the StatefulSet follows when the scheduler's
status shows those replicas hold no model (or are gone), or when the drain has taken longer than its bound.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.servers.server_objects import ReplicaBounds
from generated.mlops.scheduler import scheduler_pb2 as pb

SPEC_REPLICAS_ANNOTATION = "modelplane/server-spec-replicas"


def target_replicas(
    *,
    spec_replicas: int,
    bounds: ReplicaBounds,
    live_replicas: int | None,
    followed_spec_replicas: str | None,
    requested: int | None,
) -> tuple[int, bool]:
    """The replica count to reach, and whether the user's ``spec.replicas`` decided it (then a pending scaling
    request no longer counts)."""
    if live_replicas is None or followed_spec_replicas != str(spec_replicas):
        return spec_replicas, True
    if requested is not None:
        return bounds.clamp(requested), False
    return bounds.clamp(live_replicas), False


def holding_replicas(status: pb.ServerStatusResponse | None, at_or_above: int) -> list[int]:
    """The replicas at index ``at_or_above`` or higher that the scheduler says still hold models."""
    if status is None:
        return []
    return sorted(r.replicaIdx for r in status.resources if r.replicaIdx >= at_or_above and r.numLoadedModels > 0)


def first_status(responses: Iterable[pb.ServerStatusResponse], name: str) -> pb.ServerStatusResponse | None:
    return next((r for r in responses if r.serverName == name), None)
