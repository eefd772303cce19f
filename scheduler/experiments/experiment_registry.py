"""The experiments the scheduler knows: starting (replacing), stopping, readiness and gateway activity.

Changes follow the scheduler's prepare -> durable write -> apply pattern: ``prepare_*`` validates and
returns the durable record to write without changing anything; ``apply_*`` makes it live afterwards.

Readiness conventions (chosen here, and reported as is in ExperimentStatusResponse):

* ``candidates_ready`` is True when every candidate is ready (vacuously True for a mirror-only experiment);
* ``mirror_ready`` is True when the mirror is ready **or there is no mirror**, so that
  ``candidates_ready and mirror_ready`` means "nothing to wait for". Seldon reports mirrorReady True only
  for an existing, ready mirror; a caller wanting that meaning checks ``spec.HasField("mirror")`` as well.
* ``status_description`` names each part that is not ready and why (``candidate iris-a not ready (not
  loaded: unloaded, or never loaded)``), and whether the experiment still takes requests: gateways send
  them only to the candidates that can answer, so with some candidates missing it is ``degraded``, with
  none it takes none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.bounded_text import cut, one_line
from modelplane.spec import limits
from modelplane.spec.errors import FailedPrecondition, InvalidArgument
from modelplane.spec.names import check_name
from scheduler.experiments.experiment_records import ExperimentRecord, copy_experiment
from scheduler.experiments.experiment_state import ExperimentState
from scheduler.experiments.validation import check_routing_name, resource_kind, validate_experiment
from scheduler.invariants import require
from scheduler.status_guard import guarded, safe_name

log = logging.getLogger(__name__)

# routed_as(name): pb.MODEL or pb.PIPELINE when a model or pipeline (not being deleted) has that name, else None.
RoutedAs = Callable[[str], int | None]
# why_not_ready(name, resource_type): None when the model (ModelAvailable) or pipeline (Ready) of that name
# is ready; else why not, in a few words ("ModelFailed: ...", "not loaded: unloaded, or never loaded").
ReadinessCheck = Callable[[str, int], str | None]

STOPPED = "stopped"
MAX_WHY_CHARS = 200  # per part: a model's failure reason can be long, and every part goes in one status

# A part of an experiment that is not ready: ("candidate x" | "mirror y", why; "" before it was checked).
NotReady = tuple[str, str]


def _pending(spec: pb.Experiment) -> tuple[NotReady, ...]:
    """Every part of ``spec``, for an experiment not yet checked."""
    parts = [(f"candidate {c.name}", "") for c in spec.candidates]
    if spec.HasField("mirror"):
        parts.append((f"mirror {spec.mirror.name}", ""))
    return tuple(parts)


def _describe(record: ExperimentRecord, not_ready: tuple[NotReady, ...]) -> str:
    if record.stopped:
        return STOPPED
    parts = [f"{part} not ready ({why})" if why else f"{part} not ready" for part, why in not_ready]
    missing = sum(1 for part, _ in not_ready if part.startswith("candidate "))
    if missing and missing == len(record.spec.candidates):
        parts.append("no candidate can take requests")
    elif missing:
        parts.insert(0, "degraded: requests go to the candidates that are ready")
    if not record.active:
        parts.append(f"not active in gateways: {record.gateway_reason}" if record.gateway_reason else "not active yet")
    # Every gateway may give a reason: bounded, so the status message is.
    return cut("; ".join(parts), limits.MAX_REASON_CHARS) if parts else "active"


def _follow_gateways(record: ExperimentRecord) -> None:
    """Pending <-> Active after what the gateways say changed (a running record only)."""
    routed = ExperimentState.ACTIVE if record.active else ExperimentState.PENDING
    if record.state is not routed:
        record.move_to(routed)


def _status(record: ExperimentRecord) -> pb.ExperimentStatusResponse:
    """The experiment's status, or, if it cannot be rendered, its own error status (never an exception)."""
    return guarded(
        "experiment",
        record.name,
        record.to_status,
        lambda reason: pb.ExperimentStatusResponse(experimentName=safe_name(record.name), statusDescription=reason),
    )


class ExperimentRegistry:
    """Every experiment by name, running or stopped. Pure and synchronous: callers persist and notify."""

    def __init__(self) -> None:
        self.records: dict[str, ExperimentRecord] = {}
        # What refresh last found missing, per experiment (observed, rebuilt by refresh).
        self._not_ready: dict[str, tuple[NotReady, ...]] = {}

    # ----------------------------------------------------------------- queries

    def running(self) -> dict[str, pb.Experiment]:
        """The specs of the experiments not stopped, by name."""
        return {name: record.spec for name, record in self.records.items() if not record.stopped}

    def status(self, name: str | None = None) -> list[pb.ExperimentStatusResponse]:
        """The status of ``name``, or of every experiment (sorted by name) when None.

        Raises FailedPrecondition for an unknown name (Seldon's clients do not retry that code), InvalidArgument
        for a malformed one (an empty name included: only None asks for every experiment)."""
        if name is None:
            return [_status(self.records[n]) for n in sorted(self.records)]
        check_name(name, "experiment")
        record = self.records.get(name)
        if record is None:
            raise FailedPrecondition(f"experiment {name!r} not found")
        return [_status(record)]

    def default_routes(self, resource_type: int = pb.MODEL) -> dict[str, str]:
        """Default (baseline) name -> experiment name, for running experiments of ``resource_type`` with a default.

        Requests for that model (or pipeline) name go through the experiment. Models and pipelines have
        separate name spaces, hence one map per resource type.
        """
        return {
            record.spec.default: name
            for name, record in sorted(self.records.items())
            if not record.stopped and record.spec.resourceType == resource_type and record.spec.HasField("default")
        }

    # ----------------------------------------------------------------- start / stop

    def prepare_start(self, experiment: pb.Experiment, routed_as: RoutedAs = lambda _: None) -> ExperimentRecord | None:
        """The durable record a StartExperiment would write, or None when ``experiment`` is already running
        exactly as given. Changes nothing. Raises InvalidArgument or FailedPrecondition.

        Starting an existing name replaces its spec whole (candidates, mirror, config); starting a stopped
        name starts it again. ``routed_as`` says whether a model or pipeline has the experiment's name (see
        ``check_routing_name``).
        """
        name = check_name(experiment.name, what="experiment")
        others = {n: spec for n, spec in self.running().items() if n != name}
        validate_experiment(experiment, others)
        check_routing_name(experiment, routed_as(name))
        current = self.records.get(name)
        if current is not None and not current.stopped and current.spec == experiment:
            return None
        return ExperimentRecord(spec=copy_experiment(experiment))

    def apply_start(self, prepared: ExperimentRecord) -> None:
        """Make a prepared start live (after it has been written durably).

        The record replaces any previous one whole, observed state included: the gateways must acknowledge
        the new spec (``record_gateway_ack``) and ``refresh`` must check its candidates again.
        """
        record = ExperimentRecord(spec=copy_experiment(prepared.spec))
        self._install(record, _pending(record.spec))

    def restore(self, record: ExperimentRecord) -> None:
        """Install a record read back from durable storage (at startup); observed state starts afresh. A record
        that a request could not have made (an invalid spec) is left out and logged; the store keeps it."""
        try:
            validate_experiment(record.spec, {})
        except (InvalidArgument, FailedPrecondition) as error:
            log.error("cannot use stored experiment %s (%s); skipping it", limits.shown(record.name), error)
            return
        state = ExperimentState.STOPPED if record.stopped else ExperimentState.PENDING
        stopped_at = (record.stopped_at or time.time()) if record.stopped else None
        fresh = ExperimentRecord(spec=copy_experiment(record.spec), state=state, stopped_at=stopped_at)
        self._install(fresh, () if fresh.stopped else _pending(fresh.spec))

    def check_name_free(self, name: str, resource_type: int) -> None:
        """Refuse a model (or pipeline) named like a running experiment: a request to that name would go to the
        experiment, not to it (gateway/routing_table.py resolves an experiment's own name first). The exception is
        Seldon's case, an experiment in front of its default of that name and resource type: there every request
        to the name reaches the experiment by either rule, as meant. FailedPrecondition: stop the experiment
        first (Seldon's clients do not retry this code; the request is right once the state is fixed)."""
        record = self.records.get(name)
        if record is None or record.stopped:
            return
        spec = record.spec
        if spec.resourceType == resource_type and spec.HasField("default") and spec.default == name:
            return
        kind = "model" if resource_type == pb.MODEL else "pipeline"
        raise FailedPrecondition(
            f"{kind} {name!r}: running experiment {name!r} has that name, so requests to {name!r} would go to the "
            f"experiment; stop experiment {name!r} first or choose another name"
        )

    def prepare_stop(self, name: str) -> ExperimentRecord:
        """The durable record of ``name`` marked stopped. Raises FailedPrecondition for an unknown name,
        InvalidArgument for a malformed one (an empty name included).

        Stopping a stopped experiment is allowed and changes nothing (retries of a deletion succeed)."""
        check_name(name, "experiment")
        record = self.records.get(name)
        if record is None:
            # Seldon's clients read FAILED_PRECONDITION as "do not retry"; an unknown experiment is final.
            raise FailedPrecondition(f"experiment {name!r} not found")
        return ExperimentRecord(
            spec=copy_experiment(record.spec),
            state=ExperimentState.STOPPED,
            status_description=STOPPED,
            stopped_at=record.stopped_at if record.stopped else time.time(),  # a retried stop keeps the first time
        )

    def apply_stop(self, name: str, stopped_at: float | None = None) -> None:
        """Terminate ``name`` but keep its record, so its status still answers (stopped, inactive), until
        :meth:`expired` names it. ``stopped_at``: the prepared record's (default now)."""
        record = self.records[name]
        if record.stopped:
            return
        record.move_to(ExperimentState.STOPPED)
        record.stopped_at = time.time() if stopped_at is None else stopped_at
        record.gateway_acks.clear()
        record.candidates_ready = False
        record.mirror_ready = False
        record.status_description = STOPPED
        record.changed_at = time.time()
        self._not_ready[name] = ()

    def expired(self, now: float, ttl_seconds: float, keep_at_most: int = limits.MAX_EXPERIMENTS) -> list[str]:
        """The stopped experiments to forget: those stopped ``ttl_seconds`` or more before ``now``, and the oldest
        beyond ``keep_at_most`` stopped ones (so a stream of short-lived experiments cannot grow the records without
        bound within one TTL). Running experiments are never named."""
        stopped = sorted(
            (record.stopped_at if record.stopped_at is not None else now, name)
            for name, record in self.records.items()
            if record.stopped
        )
        beyond = len(stopped) - keep_at_most
        return [name for index, (at, name) in enumerate(stopped) if index < beyond or at <= now - ttl_seconds]

    def forget(self, name: str) -> None:
        """Drop a stopped experiment's record (after its durable record was deleted): its status no longer answers."""
        record = self.records.get(name)
        if record is not None and record.stopped:
            del self.records[name]
            self._not_ready.pop(name, None)

    # ----------------------------------------------------------------- observed state

    def refresh(self, why_not_ready: ReadinessCheck) -> set[str]:
        """Recompute readiness of every running experiment; return the names whose status changed."""
        changed: set[str] = set()
        for name, record in self.records.items():
            if record.stopped:
                continue
            spec = record.spec
            parts = [(f"candidate {c.name}", c.name) for c in spec.candidates]
            if spec.HasField("mirror"):
                parts.append((f"mirror {spec.mirror.name}", spec.mirror.name))
            missing: list[NotReady] = []
            for part, resource in parts:
                why = why_not_ready(resource, spec.resourceType)
                if why is not None:
                    missing.append((part, cut(one_line(why), MAX_WHY_CHARS) or "not ready"))
            candidates_ready = not any(part.startswith("candidate ") for part, _ in missing)
            mirror_ready = not any(part.startswith("mirror ") for part, _ in missing)
            self._not_ready[name] = tuple(missing)
            description = _describe(record, tuple(missing))
            before = (record.candidates_ready, record.mirror_ready, record.status_description)
            if before != (candidates_ready, mirror_ready, description):
                record.candidates_ready, record.mirror_ready = candidates_ready, mirror_ready
                record.status_description = description
                record.changed_at = time.time()
                changed.add(name)
        return changed

    def record_gateway_ack(self, name: str, gateway: str, active: bool, reason: str = "") -> bool:
        """Record whether ``gateway`` routes ``name`` now; return whether the experiment's status changed.

        ``active`` is true while any connected gateway routes it (see :meth:`forget_gateway`).
        Acknowledgements for unknown or stopped experiments are stale and ignored."""
        record = self.records.get(name)
        if record is None or record.stopped:
            return False
        before = (record.active, record.status_description)
        record.gateway_acks[gateway] = (active, "" if active else limits.clean_reason(reason))
        _follow_gateways(record)
        return self._redescribe(record, before)

    def forget_gateway(self, gateway: str) -> set[str]:
        """``gateway`` no longer watches the routes (its stream ended): what it said no longer counts, and an
        experiment that no connected gateway routes is not active. The names whose status changed."""
        changed: set[str] = set()
        for name, record in self.records.items():
            if gateway in record.gateway_acks:
                before = (record.active, record.status_description)
                del record.gateway_acks[gateway]
                _follow_gateways(record)
                if self._redescribe(record, before):
                    changed.add(name)
        return changed

    def _redescribe(self, record: ExperimentRecord, before: tuple[bool, str]) -> bool:
        record.status_description = _describe(record, self._not_ready.get(record.name, ()))
        if before == (record.active, record.status_description):
            return False
        record.changed_at = time.time()
        return True

    def _install(self, record: ExperimentRecord, not_ready: tuple[NotReady, ...]) -> None:
        if not record.stopped:
            record.candidates_ready = not any(part.startswith("candidate ") for part, _ in not_ready)
            record.mirror_ready = not any(part.startswith("mirror ") for part, _ in not_ready)
        record.status_description = _describe(record, not_ready)
        self.records[record.name] = record
        self._not_ready[record.name] = not_ready

    # ----------------------------------------------------------------- invariants

    def check_invariants(self, routed_as: RoutedAs) -> None:
        """Raise AssertionError if a record breaks what requests guarantee. For tests and debugging."""
        for name, record in self.records.items():
            require(record.name == name, f"experiment {name!r} holds the record of {record.name!r}")
            validate_experiment(record.spec, {})
            if record.stopped:
                require(not record.active and not record.gateway_acks, f"stopped experiment {name!r} is routed")
                continue
            routed = record.state is ExperimentState.ACTIVE
            require(routed == record.active, f"experiment {name!r} is {record.state.name}, its gateways say otherwise")
            resource_kind(record.spec.resourceType)
            check_routing_name(record.spec, routed_as(name))
            status = record.to_status()
            require(status.ByteSize() <= limits.MAX_STATUS_BYTES, f"experiment {name!r}: status too large")
            require(
                len(record.status_description) <= limits.MAX_REASON_CHARS,
                f"experiment {name!r}: its description is longer than {limits.MAX_REASON_CHARS} characters",
            )
