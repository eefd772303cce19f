"""The scheduler's records of pipelines: desired state (specs, versions, uids, deletion) and observed state
(status of each version, whether its models are ready, what the pipeline gateways said).

Only ``PipelineRecord.to_bytes`` content is durable; observed state is recomputed after a restart.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.logs import with_fields
from scheduler.pipelines.pipeline_state import ENDING, PipelineStatus, check_transition

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PipelineVersion:
    version: int
    uid: str
    spec: pb.Pipeline
    status: PipelineStatus = PipelineStatus.CREATE
    reason: str = ""
    changed_at: float = field(default_factory=time.time)
    models_ready: bool = False
    gateway_status: PipelineStatus = PipelineStatus.UNKNOWN
    gateway_reason: str = ""

    def move(self, status: PipelineStatus, reason: str = "") -> None:
        """Change status through the state table (IllegalTransition otherwise)."""
        check_transition(self.status, status)
        if status != self.status:
            log.info(
                "pipeline %s version %d: %s -> %s",
                self.spec.name,
                self.version,
                self.status.name,
                status.name,
                extra=with_fields(pipeline=self.spec.name, reason=reason),
            )
        self.status, self.reason, self.changed_at = status, reason, time.time()

    @property
    def terminated(self) -> bool:
        return self.status == PipelineStatus.TERMINATED

    @property
    def ending(self) -> bool:
        return self.status in ENDING


@dataclass(slots=True)
class PipelineRecord:
    """One pipeline: its versions (oldest first; the last is the latest) and whether it is deleted."""

    name: str
    versions: list[PipelineVersion]
    deleted: bool = False

    @property
    def latest(self) -> PipelineVersion:
        return self.versions[-1]

    def version(self, number: int) -> PipelineVersion | None:
        for version in self.versions:
            if version.version == number:
                return version
        return None

    @property
    def terminated(self) -> bool:
        return all(v.terminated for v in self.versions)

    def to_bytes(self) -> bytes:
        """The durable part: spec, version number and uid of every version, and the deleted flag."""
        return json.dumps(
            {
                "deleted": self.deleted,
                "versions": [
                    {"version": v.version, "uid": v.uid, "spec": v.spec.SerializeToString().hex()}
                    for v in self.versions
                ],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> PipelineRecord:
        """Rebuild a record written by :meth:`to_bytes`; every version starts again at Create."""
        document = json.loads(data)
        versions = [
            PipelineVersion(
                version=int(entry["version"]),
                uid=str(entry["uid"]),
                spec=pb.Pipeline.FromString(bytes.fromhex(entry["spec"])),
            )
            for entry in document["versions"]
        ]
        if not versions:
            raise ValueError(f"stored pipeline {name!r} has no versions")
        return cls(name=name, versions=versions, deleted=bool(document["deleted"]))
