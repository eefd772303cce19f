"""What the dashboard shows: the latest view of every object, per kind, and the changes to send.

Plain data only (no grpc, no protobuf): views are JSON-ready dicts made by status_views.py. A view that equals the
one held is no change, so a status stream's snapshot sent again after a reconnect sends nothing to browsers.
Each kind holds at most ``max_per_kind`` objects: a new one past that is not kept, and ``truncated`` says so
(shown on the page), rather than memory growing with whatever a source sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

JsonView = dict[str, Any]

DEFAULT_MAX_PER_KIND = 5000


class Kind(StrEnum):
    SERVER = "servers"
    MODEL = "models"
    PIPELINE = "pipelines"
    EXPERIMENT = "experiments"
    EXPERIMENT_SPEC = "experimentSpecs"  # weights, default and mirror (from the routing table)
    TRAFFIC = "traffic"  # requests per experiment route (from the gateway's metrics)
    RUN = "runs"  # training runs (from the trainer)
    SOURCE = "sources"  # whether each source is reachable, and why not


@dataclass(frozen=True, slots=True)
class Change:
    """One object's new view, or ``view`` None when it is gone."""

    kind: Kind
    name: str
    view: JsonView | None

    def to_json(self) -> JsonView:
        return {"kind": self.kind.value, "name": self.name, "view": self.view}


class BoardState:
    def __init__(self, max_per_kind: int = DEFAULT_MAX_PER_KIND) -> None:
        if max_per_kind < 1:
            raise ValueError("max_per_kind must be at least 1")
        self._max_per_kind = max_per_kind
        self._objects: dict[Kind, dict[str, JsonView]] = {kind: {} for kind in Kind}
        self._truncated: set[Kind] = set()

    def put(self, kind: Kind, name: str, view: JsonView) -> Change | None:
        """Hold ``view`` as ``name``'s latest; the change to send, or None when nothing changed or the kind is full."""
        objects = self._objects[kind]
        if objects.get(name) == view:
            return None
        if name not in objects and len(objects) >= self._max_per_kind:
            self._truncated.add(kind)
            return None
        objects[name] = view
        return Change(kind, name, view)

    def remove(self, kind: Kind, name: str) -> Change | None:
        if self._objects[kind].pop(name, None) is None:
            return None
        return Change(kind, name, None)

    def replace_all(self, kind: Kind, views: Mapping[str, JsonView]) -> list[Change]:
        """Make ``views`` the whole of ``kind`` (a full listing): the changes, removals first."""
        changes = [self.remove(kind, name) for name in sorted(set(self._objects[kind]) - set(views))]
        if len(views) <= self._max_per_kind:
            self._truncated.discard(kind)
        changes += [self.put(kind, name, view) for name, view in sorted(views.items())]
        return [change for change in changes if change is not None]

    def names(self, kind: Kind) -> Iterable[str]:
        return tuple(self._objects[kind])

    def view(self, kind: Kind, name: str) -> JsonView | None:
        return self._objects[kind].get(name)

    def snapshot(self) -> JsonView:
        """Everything held, for a browser that just connected: {kind: {name: view}}, and the kinds cut short."""
        return {
            "objects": {kind.value: dict(objects) for kind, objects in self._objects.items()},
            "truncated": sorted(kind.value for kind in self._truncated),
        }
