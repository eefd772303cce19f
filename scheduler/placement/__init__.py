"""Model placement: which server and replicas a model version goes to, as pure functions of snapshots.

No grpc or protobuf here: the scheduler builds views from its state, calls `place`, and acts on the
decision (load, scale-up request, or ScheduleFailed with `failure` as the reason).
"""

from scheduler.placement.planner import NO_SERVERS, place, try_order
from scheduler.placement.replica_filters import (
    DEFAULT_REPLICA_FILTERS,
    EXPLAINER_CAPABILITY,
    EnoughMemory,
    ExplainerCapable,
    NoServerDeathHere,
    NotDraining,
    NotUnloadingHere,
    ReplicaFilter,
    ServerServing,
    format_bytes,
)
from scheduler.placement.replica_sorters import (
    DEFAULT_REPLICA_ORDER,
    ReplicaKey,
    holds_model_first,
    lowest_index_first,
    most_free_first,
    sort_replicas,
)
from scheduler.placement.server_filters import (
    DEFAULT_SERVER_FILTERS,
    HasCapabilities,
    HasReplicas,
    NotScalingToZero,
    PinnedOrShared,
    ServerFilter,
)
from scheduler.placement.views import PlacementDecision, PlacementRequest, ReplicaView, ServerView

__all__ = [
    "DEFAULT_REPLICA_FILTERS",
    "DEFAULT_REPLICA_ORDER",
    "DEFAULT_SERVER_FILTERS",
    "EXPLAINER_CAPABILITY",
    "NO_SERVERS",
    "EnoughMemory",
    "ExplainerCapable",
    "HasCapabilities",
    "HasReplicas",
    "NoServerDeathHere",
    "NotDraining",
    "NotScalingToZero",
    "NotUnloadingHere",
    "PinnedOrShared",
    "PlacementDecision",
    "PlacementRequest",
    "ReplicaFilter",
    "ReplicaKey",
    "ReplicaView",
    "ServerFilter",
    "ServerServing",
    "ServerView",
    "format_bytes",
    "holds_model_first",
    "lowest_index_first",
    "most_free_first",
    "place",
    "sort_replicas",
    "try_order",
]
