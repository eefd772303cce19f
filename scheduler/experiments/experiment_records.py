"""The scheduler's record of one experiment: what was asked for (durable) and what is observed (rebuilt).

Only the spec, whether it is stopped and since when are durable (``to_bytes``); activity and readiness are
observed again after a restart, from the gateways and the models' and pipelines' states. Its state changes only
along the table in experiment_state.py (``move_to``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.logs import with_fields
from scheduler.experiments.experiment_state import ExperimentState, check_transition

log = logging.getLogger(__name__)


def copy_experiment(experiment: pb.Experiment) -> pb.Experiment:
    copy = pb.Experiment()
    copy.CopyFrom(experiment)
    return copy


@dataclass(slots=True)
class ExperimentRecord:
    """One experiment. A stopped experiment is kept (terminated) so its status can still be asked for, until it has
    been stopped for the scheduler's --stopped-experiment-ttl (ExperimentRegistry.expired)."""

    spec: pb.Experiment
    state: ExperimentState = ExperimentState.PENDING
    # Observed: each connected gateway's last word on the experiment, (routes it, reason when it cannot). The
    # state is Active exactly while one of them routes it.
    gateway_acks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    # Observed: whether every candidate is ready, and whether the mirror is (True when there is no mirror).
    candidates_ready: bool = False
    mirror_ready: bool = False
    status_description: str = ""
    changed_at: float = field(default_factory=time.time)
    # Durable: when it was stopped (seconds since the epoch; None while it runs). A record stored without it (written
    # before it was kept) counts from its restore.
    stopped_at: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stopped(self) -> bool:
        return self.state is ExperimentState.STOPPED

    @property
    def deleted(self) -> bool:
        """Alias of ``stopped``, named like ``ModelRecord.deleted``."""
        return self.stopped

    @property
    def running(self) -> bool:
        return not self.stopped

    @property
    def active(self) -> bool:
        """True while at least one connected gateway routes the experiment: what the Active state follows."""
        return any(routed for routed, _ in self.gateway_acks.values())

    def move_to(self, new: ExperimentState) -> None:
        """Change the state along the table (experiment_state.py); raises IllegalTransition off it."""
        check_transition(self.state, new)
        if new is not self.state:
            log.info(
                "experiment %s: %s -> %s", self.name, self.state.name, new.name, extra=with_fields(experiment=self.name)
            )
        self.state = new

    @property
    def gateway_reason(self) -> str:
        """Why the gateways do not route it: the reasons they gave, by gateway name; "" if none gave one."""
        return "; ".join(f"{gateway}: {reason}" for gateway, (_, reason) in sorted(self.gateway_acks.items()) if reason)

    def to_status(self) -> pb.ExperimentStatusResponse:
        status = pb.ExperimentStatusResponse(
            experimentName=self.name,
            active=self.active,
            candidatesReady=self.candidates_ready,
            mirrorReady=self.mirror_ready,
            statusDescription=self.status_description,
        )
        if self.spec.HasField("kubernetesMeta"):
            status.kubernetesMeta.CopyFrom(self.spec.kubernetesMeta)
        return status

    def to_bytes(self) -> bytes:
        """The durable part: the spec (as hex protobuf), the stopped flag and when it was stopped."""
        document: dict[str, object] = {"stopped": self.stopped, "spec": self.spec.SerializeToString().hex()}
        if self.stopped and self.stopped_at is not None:
            document["stoppedAt"] = self.stopped_at
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> ExperimentRecord:
        """The record stored under ``name``; observed fields start afresh. Raises ValueError if inconsistent."""
        document = json.loads(data)
        spec = pb.Experiment.FromString(bytes.fromhex(document["spec"]))
        if spec.name != name:
            raise ValueError(f"stored experiment {name!r} holds the spec of {spec.name!r}")
        stopped = bool(document["stopped"])
        state = ExperimentState.STOPPED if stopped else ExperimentState.PENDING
        stopped_at = document.get("stoppedAt")
        if stopped_at is not None and (isinstance(stopped_at, bool) or not isinstance(stopped_at, int | float)):
            raise ValueError(f"stored experiment {name!r}: stoppedAt is not a number")
        return cls(
            spec=spec,
            state=state,
            status_description="stopped" if stopped else "",
            stopped_at=float(stopped_at) if stopped and stopped_at is not None else None,
        )
