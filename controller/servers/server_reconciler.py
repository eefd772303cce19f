"""Server resources -> StatefulSet, headless Service, the scheduler's expected replicas, and the Server's status.

Three reconcilers plug into the controller (controller/reconciling.py); only the first does work:

- ``ServerReconciler`` (Servers): builds the StatefulSet and Service (server_objects.py) and creates or replaces
  them (workloads.py: idempotent, owner references to the Server); tells the scheduler the expected replicas
  (ServerNotify, with minReplicas, maxReplicas and kubernetesMeta; again for every Server when the scheduler
  asks with SEND_SERVERS); follows the scheduler's SubscribeServerStatus stream for ScalingRequests (a count to
  reach, within the bounds) and status updates (the Server's ``loadedModels``; a draining scale-down's
  progress); and writes the Server's status from its StatefulSet's (server_status.py). Scale-downs drain first
  (scaling.py). A Server that cannot be built, or whose ServerConfig is missing, gets a Ready=False condition that
  says why, and waits for a change; a deleted Server is told to the scheduler as expecting 0 replicas (its
  StatefulSet and Service go with it, by their owner references).
- ``ServerConfigReconciler`` (ServerConfigs): a changed ServerConfig queues the Servers that name it.
- ``StatefulSetReconciler`` (StatefulSets): a StatefulSet's change (its status, as the kubelets report) queues
  the Server that owns it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from grpc import aio

from controller.reconciling import ControllerContext, ControlPlaneEvent, ReconcilerFactory
from controller.resource_client import ApiException, ResourceClient, is_conflict
from controller.resource_kinds import SERVER_CONFIGS, SERVERS, JsonObject, ObjectKey, ResourceKind
from controller.servers.agent_container import AgentDefaults
from controller.servers.errors import ServerSpecError
from controller.servers.scaling import SPEC_REPLICAS_ANNOTATION, first_status, holding_replicas, target_replicas
from controller.servers.server_objects import ServerObjects, build_server_objects, replica_bounds, selector_labels
from controller.servers.server_status import same_status, server_status
from controller.servers.workloads import STATEFUL_SETS, Workloads
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.backoff import Backoff

log = logging.getLogger(__name__)

SEND_SERVERS = pb.ControlPlaneResponse.SEND_SERVERS
# While a drain is under way the Server is looked at again this often, should a status update be missed.
DRAIN_RECHECK_SECONDS = 2.0
CALL_TIMEOUT_SECONDS = 10.0
# Scheduler answers that retrying the same request cannot change (Seldon's clients treat them as final).
_FINAL_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


class ServerReconciler:
    def __init__(
        self,
        context: ControllerContext,
        *,
        defaults: AgentDefaults | None = None,
        drain_timeout_seconds: float | None = None,
    ) -> None:
        """``defaults`` and ``drain_timeout_seconds`` default to the controller's settings (--agent-*,
        --scale-down-drain-timeout)."""
        self._context = context
        self._defaults = defaults or context.settings.agent
        # How long a scale-down waits for its replicas to hand their models on before it is made anyway (each
        # agent then still drains on SIGTERM, within its pod's termination grace period).
        settings = context.settings
        self._drain_timeout = (
            settings.scale_down_drain_timeout_seconds if drain_timeout_seconds is None else drain_timeout_seconds
        )
        self._servers = ResourceClient(context.api_client, SERVERS)
        self._workloads = Workloads(context.api_client)
        self._configs = context.cache(SERVER_CONFIGS)
        self._sent: dict[ObjectKey, pb.ServerNotify] = {}  # what the scheduler was last told, per Server
        self._requested: dict[ObjectKey, int] = {}  # scaling requests not yet reached
        self._drain_started: dict[ObjectKey, float] = {}  # scale-downs waiting for their drain
        self._latest: dict[str, pb.ServerStatusResponse] = {}  # the scheduler's last status update per server
        self.scaling_requests = 0  # received, for tests and logs

    @property
    def kind(self) -> ResourceKind:
        return SERVERS

    @property
    def resend_on(self) -> frozenset[ControlPlaneEvent]:
        return frozenset({SEND_SERVERS})

    def forget_sent(self) -> None:
        self._sent.clear()

    # -- one Server ---------------------------------------------------------------------------------------------

    async def reconcile(self, key: ObjectKey, resource: JsonObject | None) -> None:
        if resource is None or (resource.get("metadata") or {}).get("deletionTimestamp"):
            await self._gone(key)
            return
        config_name = str((resource.get("spec") or {}).get("serverConfig") or "")
        config = self._configs.get(ObjectKey(key.namespace, config_name))
        if config is None:
            problem = ("ServerConfigNotFound", f"no ServerConfig {config_name!r} in namespace {key.namespace!r}")
            await self._write_status(
                resource,
                server_status(
                    resource, stateful_set=None, wanted=0, loaded_models=None, selector=None, problem=problem
                ),
            )
            return
        try:
            objects = build_server_objects(resource, config, self._defaults)
            bounds = replica_bounds(resource)
        except ServerSpecError as error:
            problem = ("InvalidSpec", str(error))
            await self._write_status(
                resource,
                server_status(
                    resource, stateful_set=None, wanted=0, loaded_models=None, selector=None, problem=problem
                ),
            )
            return
        existing = await self._workloads.stateful_set(key.namespace, key.name)
        if existing is not None and not _controlled_by(existing, resource):
            problem = ("NameTaken", f"a StatefulSet {key.name!r} exists in {key.namespace!r} and is not this Server's")
            await self._write_status(
                resource,
                server_status(
                    resource, stateful_set=None, wanted=0, loaded_models=None, selector=None, problem=problem
                ),
            )
            return
        await self._workloads.apply_service(objects.service)
        live = None if existing is None else int((existing.get("spec") or {}).get("replicas") or 0)
        followed = None if existing is None else _annotations(existing).get(SPEC_REPLICAS_ANNOTATION)
        target, by_user = target_replicas(
            spec_replicas=objects.replicas,
            bounds=bounds,
            live_replicas=live,
            followed_spec_replicas=followed,
            requested=self._requested.get(key),
        )
        if by_user:
            self._requested.pop(key, None)
        replicas, draining = await self._replicas_now(key, resource, objects, live, target)
        stateful_set = dict(objects.stateful_set)
        stateful_set["spec"] = {**stateful_set["spec"], "replicas": replicas}
        # The spec.replicas followed is recorded only once reached: a scale-down still draining is still owed.
        annotation = str(objects.replicas) if replicas == target else (followed or str(objects.replicas))
        stored = await self._workloads.apply_stateful_set(
            existing, stateful_set, {SPEC_REPLICAS_ANNOTATION: annotation}
        )
        if replicas == target:
            self._requested.pop(key, None)
        refused = await self._notify(key, resource, target if draining else replicas)
        latest = self._latest.get(key.name)
        status = server_status(
            resource,
            stateful_set=stored,
            wanted=replicas,
            loaded_models=None if latest is None else latest.numLoadedModelReplicas,
            selector=selector_labels(key.name),
            problem=refused,
            draining=draining,
        )
        await self._write_status(resource, status)
        loop = self._context.loops.get(SERVERS)
        if draining and loop is not None:
            loop.queue.add_after(key, DRAIN_RECHECK_SECONDS)

    async def _replicas_now(
        self, key: ObjectKey, server: JsonObject, objects: ServerObjects, live: int | None, target: int
    ) -> tuple[int, list[int]]:
        """The replicas to write now, and the replicas a scale-down still waits for (drain first)."""
        if live is None or target >= live:
            self._drain_started.pop(key, None)
            return target, []
        # Tell the scheduler first: it moves every model off the replicas at or above ``target``.
        problem = await self._notify(key, server, target)
        if problem is not None:
            return live, []  # the scheduler refuses: keep what runs; the status says why
        holding = holding_replicas(await self._server_status(key.name), target)
        started = self._drain_started.setdefault(key, time.monotonic())
        if holding and time.monotonic() - started < self._drain_timeout:
            log.info("server %s: scaling %d -> %d waits for replicas %s to drain", key, live, target, holding)
            return live, holding
        if holding:
            log.warning(
                "server %s: replicas %s still hold models after %.0fs; scaling down anyway (their agents drain on "
                "SIGTERM)",
                key,
                holding,
                self._drain_timeout,
            )
        self._drain_started.pop(key, None)
        return target, []

    async def _gone(self, key: ObjectKey) -> None:
        self._requested.pop(key, None)
        self._drain_started.pop(key, None)
        sent = self._sent.pop(key, None)
        if sent is not None and sent.expectedReplicas == 0:
            return
        notify = pb.ServerNotify(name=key.name, expectedReplicas=0, shared=True)
        notify.kubernetesMeta.namespace = key.namespace
        await self._call_notify(notify)

    # -- the scheduler ------------------------------------------------------------------------------------------

    async def _notify(self, key: ObjectKey, server: JsonObject, expected: int) -> tuple[str, str] | None:
        """Tell the scheduler ``expected`` replicas (unless it was told just that); a final refusal is returned."""
        bounds = replica_bounds(server)
        metadata = server.get("metadata") or {}
        notify = pb.ServerNotify(
            name=key.name,
            expectedReplicas=expected,
            minReplicas=bounds.minimum,
            maxReplicas=(server.get("spec") or {}).get("maxReplicas") or 0,
            shared=True,
        )
        notify.kubernetesMeta.namespace = key.namespace
        notify.kubernetesMeta.generation = int(metadata.get("generation") or 0)
        if self._sent.get(key) == notify:
            return None
        try:
            await self._call_notify(notify)
        except aio.AioRpcError as error:
            if error.code() in _FINAL_CODES:
                return ("SchedulerRefused", f"the scheduler refused the server: {error.details()}")
            raise  # tried again with backoff
        self._sent[key] = notify
        return None

    async def _call_notify(self, notify: pb.ServerNotify) -> None:
        request = pb.ServerNotifyRequest(servers=[notify])
        await self._context.scheduler.stub.ServerNotify(request, timeout=CALL_TIMEOUT_SECONDS)
        log.info("told the scheduler: server %s expects %d replicas", notify.name, notify.expectedReplicas)

    async def _server_status(self, name: str) -> pb.ServerStatusResponse | None:
        """The scheduler's view of ``name`` now (None: it knows no replica of it)."""
        request = pb.ServerStatusRequest(subscriberName="controller", name=name)
        try:
            responses = [
                r async for r in self._context.scheduler.stub.ServerStatus(request, timeout=CALL_TIMEOUT_SECONDS)
            ]
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:  # not known: nothing on it
                return None
            raise
        return first_status(responses, name)

    async def _write_status(self, server: JsonObject, status: JsonObject) -> None:
        """Write ``status`` unless it is there already. The controller is the status's only writer, so a conflict
        means only that the cached Server is older than the stored one (often our own last status write, not yet
        seen by the watch): the write is made again on the stored version."""
        if same_status(server.get("status"), status):
            return
        try:
            await self._servers.write_status(server, status)
        except ApiException as error:
            if not is_conflict(error):
                raise
            stored = await self._servers.get(ObjectKey.of(server))
            if (stored.get("metadata") or {}).get("generation") != (server.get("metadata") or {}).get("generation"):
                raise  # the spec changed: the watch brings it, and that reconcile writes the status
            if not same_status(stored.get("status"), status):
                await self._servers.write_status(stored, status)

    # -- the scheduler's server status stream -----------------------------------------------------------------

    async def run(self) -> None:
        """Follow SubscribeServerStatus until cancelled: scaling requests and status updates queue their Server."""
        backoff = Backoff(initial=0.2, maximum=5.0)
        name = f"{self._context.settings.name}-servers"
        while True:
            call = self._context.scheduler.stub.SubscribeServerStatus(pb.ServerSubscriptionRequest(subscriberName=name))
            try:
                async for message in call:
                    backoff.reset()
                    self._received(message)
            except aio.AioRpcError as error:
                log.info("server status stream: %s %s", error.code().name, error.details())
            finally:
                call.cancel()
            await asyncio.sleep(backoff.next_jittered())

    def _received(self, message: pb.ServerStatusResponse) -> None:
        key = self._key_of(message)
        if message.type == pb.ServerStatusResponse.ScalingRequest:
            self.scaling_requests += 1
            if key is None:
                log.warning("scaling request for server %r, which no watched Server is", message.serverName)
                return
            server = self._context.cache(SERVERS).get(key)
            try:
                wanted = replica_bounds(server).clamp(message.expectedReplicas) if server else None
            except ServerSpecError:
                wanted = None
            if wanted is None:
                return
            log.info(
                "the scheduler asks server %s for %d replicas (%d within bounds)", key, message.expectedReplicas, wanted
            )
            self._requested[key] = wanted
        else:
            self._latest[message.serverName] = message
        if key is not None:
            self._context.requeue(SERVERS, key)

    def _key_of(self, message: pb.ServerStatusResponse) -> ObjectKey | None:
        if message.HasField("kubernetesMeta") and message.kubernetesMeta.namespace:
            return ObjectKey(message.kubernetesMeta.namespace, message.serverName)
        known = self._context.cache(SERVERS).sorted_keys()
        matches = [key for key in known if key.name == message.serverName]
        return matches[0] if len(matches) == 1 else None


def _controlled_by(obj: JsonObject, server: JsonObject) -> bool:
    uid = (server.get("metadata") or {}).get("uid")
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(o, dict) and o.get("controller") and o.get("uid") == uid for o in owners)


def _annotations(obj: JsonObject) -> dict[str, Any]:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations if isinstance(annotations, dict) else {}


class _Follower:
    """A reconciler whose objects only say which Servers to look at again."""

    def __init__(self, context: ControllerContext) -> None:
        self._context = context

    @property
    def resend_on(self) -> frozenset[ControlPlaneEvent]:
        return frozenset()

    def forget_sent(self) -> None:
        return None

    async def run(self) -> None:
        await asyncio.Event().wait()


class ServerConfigReconciler(_Follower):
    @property
    def kind(self) -> ResourceKind:
        return SERVER_CONFIGS

    async def reconcile(self, key: ObjectKey, resource: JsonObject | None) -> None:
        servers = self._context.cache(SERVERS)
        for server_key in servers.sorted_keys():
            spec = (servers.get(server_key) or {}).get("spec") or {}
            if server_key.namespace == key.namespace and spec.get("serverConfig") == key.name:
                self._context.requeue(SERVERS, server_key)


class StatefulSetReconciler(_Follower):
    @property
    def kind(self) -> ResourceKind:
        return STATEFUL_SETS

    async def reconcile(self, key: ObjectKey, resource: JsonObject | None) -> None:
        if resource is None:  # deleted: its Server (of the same name) makes it again, if it still exists
            if self._context.cache(SERVERS).get(key) is not None:
                self._context.requeue(SERVERS, key)
            return
        for owner in (resource.get("metadata") or {}).get("ownerReferences") or []:
            if isinstance(owner, dict) and owner.get("kind") == "Server" and owner.get("controller"):
                self._context.requeue(SERVERS, ObjectKey(key.namespace, str(owner.get("name"))))


SERVER_RECONCILERS: list[ReconcilerFactory] = [ServerReconciler, ServerConfigReconciler, StatefulSetReconciler]
