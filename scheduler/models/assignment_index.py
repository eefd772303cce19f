"""Which model versions each replica is assigned: the index that lets a change concerning one replica (its agent
registering again or leaving, its server going down or serving again, a drain) look at that replica's models only,
never at every model of the cluster.

Invariant (``SchedulerCore.check_invariants`` verifies it against a full scan): ``(name, version)`` is listed
under a replica key exactly when that version of that model is live (in the cluster's record of the model) and has
an assignment on that replica, in any state; a replica with no assignment has no entry. It is kept by the one place
that adds and removes assignments, ``ModelVersion`` (models/model_records.py): a live version holds this index
and reports every assignment it gains or forgets, and a version that leaves its record is retired, its assignments
reported gone.
"""

from __future__ import annotations

ReplicaKey = tuple[str, int]  # (server name, replica index)
VersionKey = tuple[str, int]  # (model name, version)


class AssignmentIndex:
    __slots__ = ("_on",)

    def __init__(self) -> None:
        # replica -> the model versions assigned there, in the order they were assigned (a dict as an ordered set)
        self._on: dict[ReplicaKey, dict[VersionKey, None]] = {}

    def added(self, replica: ReplicaKey, version: VersionKey) -> None:
        self._on.setdefault(replica, {})[version] = None

    def removed(self, replica: ReplicaKey, version: VersionKey) -> None:
        versions = self._on.get(replica)
        if versions is None:
            return
        versions.pop(version, None)
        if not versions:
            del self._on[replica]

    def on(self, replica: ReplicaKey) -> list[VersionKey]:
        """The model versions assigned on ``replica`` (a copy: the caller may change assignments as it goes)."""
        return list(self._on.get(replica, ()))

    def count_on(self, replica: ReplicaKey) -> int:
        return len(self._on.get(replica, ()))

    def as_sets(self) -> dict[ReplicaKey, set[VersionKey]]:
        """Everything, for the invariant check."""
        return {replica: set(versions) for replica, versions in self._on.items()}
