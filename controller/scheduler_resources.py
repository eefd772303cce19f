"""The reconciler of a resource the scheduler holds (Model, Pipeline, Experiment): one class, a small per-kind part
(``SchedulerKind``: translate, load, unload, the status stream and what a status message says).

For an object of the kind (``reconcile``):
- gone from the API server: nothing is left to do (the finalizer made sure it was unloaded first);
- being deleted (deletionTimestamp) with our finalizer: unload it from the scheduler, and remove the finalizer once
  the scheduler says it has (``unloaded``) or does not know it; a resource whose name another namespace holds is
  never unloaded (the scheduler's model is the other one's);
- otherwise: add the finalizer; translate (a bad spec is a final failure for this generation, written to status);
  send it to the scheduler unless this generation of this object was sent already (LoadModel/LoadPipeline/
  StartExperiment are idempotent, so sending again is harmless, but it is not repeated for every event);
  FAILED_PRECONDITION (Seldon's "do not retry") and INVALID_ARGUMENT are final for the generation: the status says
  why and nothing is retried until the spec changes or the scheduler asks for everything again; any other error
  is raised, so the loop retries it with backoff;
- write the status the scheduler's status stream last said of this generation (``status_documents``); a status of
  another generation is never written as this one's. A write that meets a newer object (409) reads it again.

Names: the scheduler's names are global, Kubernetes' are per namespace. When several namespaces hold a resource of
one name, the oldest (creationTimestamp, then namespace) owns it; the others say so in their status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc
from grpc import aio

from controller.reconciling import ControllerContext, ControlPlaneEvent
from controller.resource_client import ApiException, ResourceClient, is_conflict, is_not_found
from controller.resource_kinds import JsonObject, ObjectKey, ResourceKind
from controller.status_documents import Observed, same_status, status_document
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.backoff import Backoff
from modelplane.spec.seldon_resources import ResourceSpecError, Translation

log = logging.getLogger(__name__)

FINALIZER = "mlops.modelplane.io/scheduler-unload"
# Codes after which sending the same generation again cannot help (Seldon's clients read FAILED_PRECONDITION so).
FINAL_CODES = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
MAX_STATUS_WRITES = 3  # attempts per reconcile when the object keeps changing under the write (409)

M = TypeVar("M")
S = TypeVar("S")
M_contra = TypeVar("M_contra", contravariant=True)


class SchedulerKind(Protocol[M_contra, S]):
    """The per-kind part. ``M``: the message sent (pb.Model ...); ``S``: a status-stream message."""

    kind: ResourceKind
    condition: str  # ModelReady, PipelineReady, ExperimentReady
    resend_on: frozenset[ControlPlaneEvent]

    def translate(self, resource: JsonObject) -> Translation[Any]: ...

    async def load(self, stub: pb_grpc.SchedulerAsyncStub, message: M_contra) -> None: ...

    async def unload(self, stub: pb_grpc.SchedulerAsyncStub, name: str, namespace: str) -> bool:
        """Ask the scheduler to unload ``name``; True if it does not know it (nothing to wait for)."""
        ...

    def unloaded(self, status: S | None) -> bool:
        """Whether the scheduler's last status of the name says nothing of it is left."""
        ...

    def subscribe(self, stub: pb_grpc.SchedulerAsyncStub, subscriber: str) -> AsyncIterator[S]: ...

    def name_of(self, status: S) -> str: ...

    def observe(self, status: S, namespace: str) -> Observed | None:
        """What ``status`` says of the resource in ``namespace`` (None if it is not about that namespace's)."""
        ...


@dataclass(frozen=True, slots=True)
class _Final:
    """A refusal that holds for one generation of one object."""

    uid: str
    generation: int
    reason: str
    message: str


def _uid(resource: JsonObject) -> str:
    return str(resource["metadata"].get("uid") or "")


def _generation(resource: JsonObject) -> int:
    generation = resource["metadata"].get("generation")
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else 0


def rpc_code(error: BaseException) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, aio.AioRpcError) else None


class SchedulerResourceReconciler(Generic[M, S]):
    def __init__(self, context: ControllerContext, kind: SchedulerKind[M, S]) -> None:
        self._context = context
        self._kind = kind
        self._client = ResourceClient(context.api_client, kind.kind)
        self._sent: dict[ObjectKey, tuple[str, int]] = {}  # (uid, generation) the scheduler acknowledged
        self._final: dict[ObjectKey, _Final] = {}
        self._statuses: dict[str, S] = {}  # the status stream's last message per scheduler name
        self._noted_unknown: set[tuple[str, int]] = set()  # (uid, generation) whose unknown fields were logged
        self.status_streams_opened = 0

    # -- the Reconciler protocol -------------------------------------------------------------------------------

    @property
    def kind(self) -> ResourceKind:
        return self._kind.kind

    @property
    def resend_on(self) -> frozenset[ControlPlaneEvent]:
        return self._kind.resend_on

    def forget_sent(self) -> None:
        self._sent.clear()
        self._final.clear()  # a restarted scheduler may accept what it refused (a name freed meanwhile)

    async def run(self) -> None:
        """Follow the kind's status stream for ever, reconnecting with backoff."""
        backoff = Backoff(initial=0.2, maximum=5.0)
        subscriber = f"{self._context.settings.name}-{self.kind.plural}"
        while True:
            first = True
            try:
                async for status in self._kind.subscribe(self._context.scheduler.stub, subscriber):
                    if first:
                        first = False
                        self.status_streams_opened += 1
                        backoff.reset()
                    name = self._kind.name_of(status)
                    self._statuses[name] = status
                    self._requeue_name(name)
            except aio.AioRpcError as error:
                log.info("%s status stream: %s %s", self.kind.kind, error.code().name, error.details())
            await asyncio.sleep(backoff.next_jittered())

    async def reconcile(self, key: ObjectKey, resource: JsonObject | None) -> None:
        if resource is None:
            self._sent.pop(key, None)
            self._final.pop(key, None)
            return
        if resource["metadata"].get("deletionTimestamp"):
            await self._delete(key, resource)
            return
        if FINALIZER not in (resource["metadata"].get("finalizers") or []):
            finalizers = [*(resource["metadata"].get("finalizers") or []), FINALIZER]
            resource = await self._client.set_finalizers(resource, finalizers)
        await self._apply(key, resource)
        await self._write_status(key, resource)

    # -- apply and delete ------------------------------------------------------------------------------------

    def _owner(self, key: ObjectKey) -> ObjectKey:
        """Which namespace's resource holds the scheduler name ``key.name``: the oldest."""
        cache = self._context.cache(self.kind)
        holders = [
            (str(obj["metadata"].get("creationTimestamp") or ""), other.namespace, other)
            for other in cache.sorted_keys()
            if other.name == key.name and (obj := cache.get(other)) is not None
        ]
        return min(holders)[2] if holders else key

    async def _apply(self, key: ObjectKey, resource: JsonObject) -> None:
        uid, generation = _uid(resource), _generation(resource)
        final = self._final.get(key)
        if final is not None and (final.uid, final.generation) == (uid, generation):
            return
        if self._sent.get(key) == (uid, generation):
            return
        owner = self._owner(key)
        if owner != key:
            message = f"the name {key.name!r} is held by the {self.kind.kind} in namespace {owner.namespace!r}"
            self._final[key] = _Final(uid, generation, "NameInUse", message)
            return
        try:
            translation = self._kind.translate(resource)
        except ResourceSpecError as error:
            self._final[key] = _Final(uid, generation, "InvalidSpec", str(error))
            log.warning("%s %s generation %d: %s", self.kind.kind, key, generation, error)
            return
        self._note_ignored(key, uid, generation, translation)
        try:
            await self._kind.load(self._context.scheduler.stub, translation.message)
        except aio.AioRpcError as error:
            if error.code() in FINAL_CODES:
                reason = "LoadRejected" if error.code() == grpc.StatusCode.FAILED_PRECONDITION else "InvalidSpec"
                self._final[key] = _Final(uid, generation, reason, error.details() or error.code().name)
                log.warning("%s %s generation %d refused: %s", self.kind.kind, key, generation, error.details())
                return
            raise
        self._sent[key] = (uid, generation)
        self._final.pop(key, None)

    def _note_ignored(self, key: ObjectKey, uid: str, generation: int, translation: Translation[Any]) -> None:
        """Log, once per generation, the fields the resource keeps but the scheduler is not sent."""
        if (uid, generation) in self._noted_unknown or not (translation.unknown or translation.unmapped):
            return
        self._noted_unknown.add((uid, generation))
        if translation.unknown:
            log.info(
                "%s %s generation %d: unknown fields kept in the resource, not sent: %s",
                self.kind.kind,
                key,
                generation,
                ", ".join(translation.unknown[:20]),
            )
        if translation.unmapped:
            log.info(
                "%s %s generation %d: fields the Scheduler API has no place for: %s",
                self.kind.kind,
                key,
                generation,
                ", ".join(translation.unmapped),
            )

    async def _delete(self, key: ObjectKey, resource: JsonObject) -> None:
        finalizers = list(resource["metadata"].get("finalizers") or [])
        if FINALIZER not in finalizers:
            return
        if self._owner_when_deleting(key) == key:
            stub = self._context.scheduler.stub
            unknown = await self._kind.unload(stub, key.name, key.namespace)
            self._sent.pop(key, None)
            if not unknown and not self._kind.unloaded(self._statuses.get(key.name)):
                log.info("%s %s: waiting for the scheduler to unload it", self.kind.kind, key)
                return  # the status stream's next message requeues it
        finalizers.remove(FINALIZER)
        try:
            await self._client.set_finalizers(resource, finalizers)
        except ApiException as error:
            if not is_not_found(error):
                raise  # a 409 is retried with the newer object
        self._final.pop(key, None)

    def _owner_when_deleting(self, key: ObjectKey) -> ObjectKey:
        """As ``_owner``, but a resource the scheduler was told about owns its name whatever its age."""
        if key in self._sent:
            return key
        return self._owner(key)

    # -- status ----------------------------------------------------------------------------------------------

    def _observed(self, key: ObjectKey, resource: JsonObject) -> Observed | None:
        """What to write for the generation ``resource`` is at, or None when nothing true can be said yet."""
        uid, generation = _uid(resource), _generation(resource)
        final = self._final.get(key)
        if final is not None and (final.uid, final.generation) == (uid, generation):
            return Observed(generation, False, final.reason, final.message)
        status = self._statuses.get(key.name)
        if status is None or self._sent.get(key) != (uid, generation):
            return None
        observed = self._kind.observe(status, key.namespace)
        if observed is None or observed.generation != generation:
            return None  # the scheduler's status is still of another generation: wait for this one's
        return observed

    async def _write_status(self, key: ObjectKey, resource: JsonObject) -> None:
        for _ in range(MAX_STATUS_WRITES):
            observed = self._observed(key, resource)
            if observed is None:
                return
            current = resource.get("status") if isinstance(resource.get("status"), dict) else None
            wanted = status_document(self._kind.condition, observed, current)
            if same_status(current, wanted):
                return
            try:
                await self._client.write_status(resource, wanted)
                return
            except ApiException as error:
                if is_not_found(error):
                    return
                if not is_conflict(error):
                    raise
            resource = await self._client.get(key)  # changed under us: decide again on what it is now
            if resource["metadata"].get("deletionTimestamp"):
                return
        raise RuntimeError(f"{self.kind.kind} {key} kept changing while its status was written")

    def _requeue_name(self, name: str) -> None:
        cache = self._context.cache(self.kind)
        for key in cache.sorted_keys():
            if key.name == name:
                self._context.requeue(self.kind, key)
