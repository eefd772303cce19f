"""The pipelines the scheduler knows: loading, unloading, status derivation and status messages.

Loads and unloads follow the scheduler's prepare -> durable write -> apply pattern: ``prepare_*`` computes
the durable record to write without changing anything (and raises if the request is refused), the caller
writes it, then ``apply_*`` makes it live. ``refresh`` never changes durable content.

Status is driven by :meth:`PipelineRegistry.refresh`, which the caller runs after anything that may change
it (a load, an unload, a model's state). For now a version is Ready as soon as the models of its steps are
available: it does not wait for a pipeline gateway. A gateway's acknowledgement, once wired, is recorded by
:meth:`PipelineRegistry.record_gateway_ack` in ``gateway_status``/``gateway_reason`` only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.bounded_text import cut
from modelplane.spec import limits
from modelplane.spec.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from modelplane.spec.names import check_name
from modelplane.spec.pipelines import pipeline_models, validate_pipeline
from scheduler.invariants import require
from scheduler.pipelines.pipeline_records import PipelineRecord, PipelineVersion
from scheduler.pipelines.pipeline_state import ENDING, LIVE, PipelineStatus
from scheduler.status_guard import guarded, safe_name

P = PipelineStatus
log = logging.getLogger(__name__)


def new_uid() -> str:
    return uuid.uuid4().hex


def _comparable(pipeline: pb.Pipeline) -> pb.Pipeline:
    """``pipeline`` without the fields the scheduler assigns or a client may leave empty."""
    copy = pb.Pipeline()
    copy.CopyFrom(pipeline)
    copy.uid = ""
    copy.version = 0
    if copy.HasField("kubernetesMeta"):
        copy.kubernetesMeta.generation = 0
    return copy


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class PipelineRegistry:
    def __init__(self) -> None:
        self.records: dict[str, PipelineRecord] = {}
        self._removed: list[PipelineRecord] = []

    # ----------------------------------------------------------------- load / unload

    def prepare_load(self, pipeline: pb.Pipeline) -> PipelineRecord | None:
        """The durable record a LoadPipeline would write, or None when it is identical to the latest
        version. Raises FailedPrecondition for an invalid pipeline or one still being deleted."""
        validate_pipeline(pipeline)
        name = pipeline.name
        record = self.records.get(name)
        if record is not None and record.deleted:
            if not record.terminated:
                raise FailedPrecondition(
                    f"pipeline {name!r} is in process of deletion: load it again once it is terminated"
                )
            record = None  # Fully terminated: starts again at version 1.
        if record is not None and _comparable(record.latest.spec) == _comparable(pipeline):
            if record.latest.spec.kubernetesMeta == pipeline.kubernetesMeta:
                return None
            # Only the Kubernetes generation (or namespace) is new: the same version, its state kept, now saying
            # which generation of the resource it is (a controller reads its status by that generation).
            spec = pb.Pipeline()
            spec.CopyFrom(record.latest.spec)
            spec.kubernetesMeta.CopyFrom(pipeline.kubernetesMeta)
            patched = dataclasses.replace(record.latest, spec=spec)
            return PipelineRecord(name, [*record.versions[:-1], patched])
        number = 1 if record is None else record.latest.version + 1
        if number > limits.MAX_VERSION:
            raise FailedPrecondition(
                f"pipeline {name!r} is at version {number - 1}, the largest a version can be (a uint32): "
                "unload it and load it again to restart its versions"
            )
        spec = pb.Pipeline()
        spec.CopyFrom(pipeline)
        spec.uid, spec.version = new_uid(), number
        version = PipelineVersion(version=number, uid=spec.uid, spec=spec)
        return PipelineRecord(name, [version] if record is None else [*_versions_to_keep(record), version])

    def apply_load(self, prepared: PipelineRecord) -> None:
        """Make a prepared load live (after it has been written durably)."""
        record = self.records.get(prepared.name)
        if record is None or record.deleted:
            self.records[prepared.name] = PipelineRecord(prepared.name, list(prepared.versions))
        elif prepared.latest.version == record.latest.version:
            record.latest.spec = prepared.latest.spec  # a new generation of the same spec: state kept
        else:
            # Versions prepare_load left out (to stay within MAX_PIPELINE_VERSIONS; they serve nothing) go.
            kept = {id(version) for version in prepared.versions}
            record.versions[:] = [*(v for v in record.versions if id(v) in kept), prepared.latest]

    def restore(self, record: PipelineRecord) -> None:
        """Install a record read back from the state store (at startup). Versions a request could not have made
        (a number out of range or not rising, an invalid spec) are left out and logged; a record with none left
        is skipped. The store keeps what it has."""
        kept: list[PipelineVersion] = []
        for version in record.versions:
            problem = None
            if not 1 <= version.version <= limits.MAX_VERSION or (kept and version.version <= kept[-1].version):
                problem = f"version {version.version} is out of range or not above the one before"
            elif version.spec.name != record.name:
                problem = f"its spec is of pipeline {limits.shown(version.spec.name)}"
            else:
                try:
                    validate_pipeline(version.spec)
                except (FailedPrecondition, InvalidArgument) as error:
                    problem = str(error)
            if problem is None:
                kept.append(version)
            else:
                log.error("leaving out version %d of stored pipeline %r: %s", version.version, record.name, problem)
        kept = kept[-limits.MAX_PIPELINE_VERSIONS :]
        if not kept:
            log.error("stored pipeline %s has no usable version; skipping it", limits.shown(record.name))
            return
        self.records[record.name] = PipelineRecord(record.name, kept, deleted=record.deleted)

    def prepare_unload(self, name: str) -> PipelineRecord:
        """The durable record of ``name`` marked deleted. Raises FailedPrecondition for unknown pipelines
        (Seldon's clients read FAILED_PRECONDITION as "do not retry")."""
        check_name(name, "pipeline")
        record = self.records.get(name)
        if record is None:
            raise FailedPrecondition(f"pipeline {name!r} not found")
        return PipelineRecord(name, list(record.versions), deleted=True)

    def apply_unload(self, name: str) -> None:
        """Mark ``name`` deleted (after the prepared record was written); a no-op if it already is."""
        self.records[name].deleted = True

    # ----------------------------------------------------------------- observed state

    def refresh(self, model_available: Callable[[str], bool]) -> set[str]:
        """Recompute every version's ``models_ready`` and move statuses; returns the names whose status or
        reason changed (a removed pipeline included: see :meth:`pop_removed`).

        * live versions: Create -> Creating; Creating/Rebalancing -> Ready when models are ready;
          Ready -> Rebalancing when one is not;
        * when the latest version is Ready, older versions go Terminate -> Terminating -> Terminated;
        * a deleted pipeline's versions all go to Terminated, and the record is removed.
        """
        changed: set[str] = set()
        for name in sorted(self.records):
            record = self.records[name]
            if self._refresh_record(record, model_available):
                changed.add(name)
            if record.deleted and record.terminated:
                del self.records[name]
                self._removed.append(record)
                changed.add(name)
        return changed

    def _refresh_record(self, record: PipelineRecord, model_available: Callable[[str], bool]) -> bool:
        before = [(v.status, v.reason) for v in record.versions]
        for version in record.versions:
            missing = sorted(m for m in pipeline_models(version.spec) if not model_available(m))
            version.models_ready = not missing
            if version.status in LIVE:
                self._advance_live(version, missing)
        if record.deleted:
            for version in record.versions:
                self._terminate(version, "pipeline deleted")
        elif record.latest.status == P.READY:
            for version in record.versions[:-1]:
                self._terminate(version, f"replaced by version {record.latest.version}")
        return before != [(v.status, v.reason) for v in record.versions]

    @staticmethod
    def _advance_live(version: PipelineVersion, missing: list[str]) -> None:
        waiting = f"models not available: {limits.bounded_join(missing, separator=', ')}" if missing else ""
        if version.status == P.CREATE:
            version.move(P.CREATING, waiting)
        if version.status in (P.CREATING, P.REBALANCING):
            if not missing:
                version.move(P.READY)
            elif version.reason != waiting:
                version.reason = waiting
        elif version.status == P.READY and missing:
            version.move(P.REBALANCING, waiting)

    @staticmethod
    def _terminate(version: PipelineVersion, reason: str) -> None:
        if version.status in LIVE:
            version.move(P.TERMINATE, reason)
        if version.status == P.TERMINATE:
            version.move(P.TERMINATING, reason)
        if version.status == P.TERMINATING:
            version.move(P.TERMINATED, reason)

    def pop_removed(self) -> list[PipelineRecord]:
        """Deleted pipelines that :meth:`refresh` removed since the last call, in their final Terminated
        state: delete their durable records and publish their last status (see :func:`status_response`)."""
        removed, self._removed = self._removed, []
        return removed

    def mark_failed(self, name: str, version: int, reason: str) -> bool:
        """Move a live version to Failed (e.g. a gateway could not start it). False if stale."""
        found = self._version(name, version)
        if found is None or found.status not in (P.CREATING, P.READY, P.REBALANCING):
            return False
        found.move(P.FAILED, reason)
        return True

    def retry(self, name: str) -> bool:
        """Move the latest version of ``name`` from Failed back to Creating. False if it is not Failed."""
        record = self.records.get(name)
        if record is None or record.deleted or record.latest.status != P.FAILED:
            return False
        record.latest.move(P.CREATING, "retrying")
        return True

    def record_gateway_ack(self, name: str, version: int, success: bool, reason: str = "") -> bool:
        """Record what a pipeline gateway said about a version: Ready (or Terminated for an ending version)
        on success, Failed otherwise. Acks for versions no longer known are ignored (returns False)."""
        found = self._version(name, version)
        if found is None:
            return False
        if not success:
            status = P.FAILED
        elif found.status in ENDING:
            status = P.TERMINATED
        else:
            status = P.READY
        found.gateway_status, found.gateway_reason = status, limits.clean_reason(reason)
        return True

    def check_invariants(self) -> None:
        """Raise AssertionError (or the validation error) if a record breaks what requests guarantee: versions
        rising within 1..MAX_VERSION and at most MAX_PIPELINE_VERSIONS, specs valid, statuses that render and fit
        a client. For tests and debugging."""
        _check_records(self)

    def _version(self, name: str, number: int) -> PipelineVersion | None:
        record = self.records.get(name)
        return None if record is None else record.version(number)

    # ----------------------------------------------------------------- status messages

    def status(self, name: str | None = None, all_versions: bool = False) -> list[pb.PipelineStatusResponse]:
        """PipelineStatus answers: one pipeline (FailedPrecondition if unknown) or all, sorted by name."""
        if name is not None:
            check_name(name, "pipeline")  # an empty name is malformed: only None asks for every pipeline
            record = self.records.get(name)
            if record is None:
                raise FailedPrecondition(f"pipeline {name!r} not found")
            return [status_response(record, all_versions)]
        return [status_response(self.records[n], all_versions) for n in sorted(self.records)]


def _versions_to_keep(record: PipelineRecord) -> list[PipelineVersion]:
    """The versions to keep beside a new one: all, or, when the record would exceed MAX_PIPELINE_VERSIONS, without
    those that serve nothing (oldest first): terminated ones, then any not Ready (the new version supersedes them;
    a Ready one keeps serving until the new one is). Raises ResourceExhausted when too many are Ready."""
    versions = list(record.versions)
    serve_nothing: tuple[Callable[[PipelineVersion], bool], ...] = (
        lambda version: version.terminated,
        lambda version: version.status != PipelineStatus.READY,
    )
    for serves_nothing in serve_nothing:
        for version in list(versions):
            if len(versions) < limits.MAX_PIPELINE_VERSIONS:
                return versions
            if serves_nothing(version):
                versions.remove(version)
    if len(versions) >= limits.MAX_PIPELINE_VERSIONS:
        raise ResourceExhausted(
            f"pipeline {record.name!r} keeps {len(versions)} Ready versions; the limit is "
            f"{limits.MAX_PIPELINE_VERSIONS}: load a new version once older ones are terminated (they are once the "
            "latest is ready), or unload the pipeline"
        )
    return versions


def version_state(version: PipelineVersion) -> pb.PipelineVersionState:
    return pb.PipelineVersionState(
        pipelineVersion=version.version,
        status=pb.PipelineVersionState.PipelineStatus.ValueType(version.status.value),
        reason=cut(version.reason, limits.MAX_STATUS_REASON_CHARS),
        lastChangeTimestamp=_timestamp(version.changed_at),
        modelsReady=version.models_ready,
        pipelineGwStatus=pb.PipelineVersionState.PipelineStatus.ValueType(version.gateway_status.value),
        pipelineGwReason=cut(version.gateway_reason, limits.MAX_STATUS_REASON_CHARS),
    )


def status_response(record: PipelineRecord, all_versions: bool = False) -> pb.PipelineStatusResponse:
    """The status message of one pipeline: its latest version, or all of them oldest first. Never fails: a record
    that cannot be rendered becomes the pipeline's own error status (scheduler/status_guard.py)."""
    return guarded(
        "pipeline",
        record.name,
        lambda: render_status_response(record, all_versions),
        lambda reason: pb.PipelineStatusResponse(
            pipelineName=safe_name(record.name),
            versions=[
                pb.PipelineWithState(
                    state=pb.PipelineVersionState(status=pb.PipelineVersionState.PipelineFailed, reason=reason)
                )
            ],
            timestamp=time.time_ns(),
        ),
    )


def render_status_response(record: PipelineRecord, all_versions: bool = False) -> pb.PipelineStatusResponse:
    versions = record.versions if all_versions else [record.latest]
    operation = (
        pb.PipelineStatusResponse.PipelineOperation.PipelineDelete
        if record.deleted
        else pb.PipelineStatusResponse.PipelineOperation.PipelineCreate
    )
    return pb.PipelineStatusResponse(
        pipelineName=record.name,
        versions=[pb.PipelineWithState(pipeline=v.spec, state=version_state(v)) for v in versions],
        timestamp=time.time_ns(),
        operation=operation,
    )


def _check_records(registry: PipelineRegistry) -> None:
    for name, record in registry.records.items():
        require(record.name == name and bool(record.versions), f"pipeline {name!r}: record of {record.name!r} or empty")
        require(len(record.versions) <= limits.MAX_PIPELINE_VERSIONS, f"pipeline {name!r} keeps too many versions")
        numbers = [v.version for v in record.versions]
        require(numbers == sorted(set(numbers)), f"pipeline {name!r}: versions {numbers} do not rise")
        require(all(1 <= n <= limits.MAX_VERSION for n in numbers), f"pipeline {name!r}: versions {numbers}")
        for version in record.versions:
            validate_pipeline(version.spec)
            require(
                version.spec.version == version.version and version.spec.uid == version.uid,
                f"pipeline {name!r}: version {version.version}'s spec says version {version.spec.version}",
            )
        status = render_status_response(record, all_versions=True)
        require(status.ByteSize() <= limits.MAX_STATUS_BYTES, f"pipeline {name!r}: status too large")
