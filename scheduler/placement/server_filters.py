"""Server filters: whether a server may host a model at all, before looking at its replicas.

Each filter answers with a short reason when it rejects, because those reasons become the ScheduleFailed
message an operator reads to find out why a model is not running.
"""

from __future__ import annotations

from typing import Protocol

from scheduler.placement.views import PlacementRequest, ServerView


class ServerFilter(Protocol):
    @property
    def name(self) -> str: ...

    def reject(self, request: PlacementRequest, server: ServerView) -> str | None:
        """None to accept the server; otherwise a short human reason."""
        ...


class HasReplicas:
    """A server with no connected replica has nowhere to load anything."""

    name = "has-replicas"

    def reject(self, request: PlacementRequest, server: ServerView) -> str | None:
        return None if server.replicas else "no replicas connected"


class PinnedOrShared:
    """A pinned model goes only to its server; an unpinned one only to servers that accept any model."""

    name = "pinned-or-shared"

    def reject(self, request: PlacementRequest, server: ServerView) -> str | None:
        if request.server_pin is not None:
            return None if request.server_pin == server.name else f"model is pinned to server {request.server_pin}"
        return None if server.shared else "server is not shared and the model names no server"


class NotScalingToZero:
    """Replicas of a server told to scale to zero are about to go, so loading onto them is wasted work."""

    name = "not-scaling-to-zero"

    def reject(self, request: PlacementRequest, server: ServerView) -> str | None:
        if server.expected_replicas == 0:
            return "server is scaling to 0 replicas (expectedReplicas=0)"
        return None


class HasCapabilities:
    """The server must offer every capability the model requires (e.g. its runtime, sklearn)."""

    name = "has-capabilities"

    def reject(self, request: PlacementRequest, server: ServerView) -> str | None:
        missing = sorted(request.requirements - server.capabilities)
        if not missing:
            return None
        noun = "capability" if len(missing) == 1 else "capabilities"
        return f"missing {noun} {', '.join(missing)}"


DEFAULT_SERVER_FILTERS: tuple[ServerFilter, ...] = (
    HasReplicas(),
    PinnedOrShared(),
    NotScalingToZero(),
    HasCapabilities(),
)
