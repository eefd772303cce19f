"""The scheduler's domain façade: what the servicers call. No grpc here.

It owns the Cluster (in-memory state), the durable StateStore, the status event hubs, the reconcile
loop and the synchroniser, and keeps these promises:

- Durable before acknowledged: a LoadModel/UnloadModel/ServerNotify returns only after its change is
  in the state store; the in-memory state changes only after the write succeeded.
- Idempotent, full-state mutations: the same LoadModel twice changes nothing the second time.
- Single-flight per model: mutations of one model are serialised by a per-model lock; reconciles are
  synchronous Cluster calls, and triggers coalesce in one dirty set drained by one loop.
- Nothing is placed until the synchroniser is ready: after a restart, the agents that held models get
  a grace period to reconnect and report them, so nothing is loaded twice or moved needlessly.
- Status streams get the current state first, then changes (see EventHub).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.keyed_locks import KeyedLocks
from scheduler import limits, route_messages, status_messages
from scheduler.agent_sessions import AgentSession
from scheduler.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from scheduler.event_hub import EventHub, Subscription
from scheduler.experiments import ExperimentRecord, ExperimentRegistry
from scheduler.model_names import check_name
from scheduler.models import model_specs, server_specs
from scheduler.models.cluster import Cluster, ReplicaConfig
from scheduler.models.model_records import ModelRecord
from scheduler.models.model_state import ModelState
from scheduler.models.server_records import ServerRecord
from scheduler.persistence import Change, Delete, Put, StateStore, StateStoreError
from scheduler.pipelines import PipelineRecord, PipelineRegistry, PipelineStatus
from scheduler.pipelines import status_response as pipeline_status_response
from scheduler.route_messages import RouteKey

log = logging.getLogger(__name__)

MODELS_TABLE = "models"
SERVERS_TABLE = "servers"
EXPERIMENTS_TABLE = "experiments"
PIPELINES_TABLE = "pipelines"
ServerKey = tuple[str, int]  # (server name, response type): status updates and scaling requests coalesce apart


@dataclass(frozen=True, slots=True)
class CoreSettings:
    # How long, after a start with known servers, to wait for their agents before placing anything.
    sync_grace_seconds: float = 10.0
    max_models: int = limits.MAX_MODELS
    # Reconcile this many models, then let RPCs in before going on.
    reconcile_batch: int = 200
    # Ask to remove server replicas that have held no model for this long.
    scale_down_idle_seconds: float = 300.0


def most_status_keys(max_models: int) -> int:
    """The most keys a status stream's state can have within the limits: every model, every server's status and
    scaling request (a ServerKey each), every pipeline and running experiment, and the routing table's
    end-of-snapshot marker. Every hub's bound on published values pending per subscriber: a subscriber that
    has all of them changed before it reads one still fits (scheduler/event_hub.py says what the bound is for)."""
    return max_models + 2 * limits.MAX_SERVERS + limits.MAX_PIPELINES + limits.MAX_EXPERIMENTS + 1


class SchedulerCore:
    def __init__(self, store: StateStore, settings: CoreSettings | None = None) -> None:
        self.settings = settings or CoreSettings()
        self.store = store
        self.cluster = Cluster()
        bound = most_status_keys(self.settings.max_models)
        self.models_hub: EventHub[str, pb.ModelStatusResponse] = EventHub(bound)
        self.servers_hub: EventHub[ServerKey, pb.ServerStatusResponse] = EventHub(bound)
        self.pipelines = PipelineRegistry()
        self.pipelines_hub: EventHub[str, pb.PipelineStatusResponse] = EventHub(bound)
        self.experiments = ExperimentRegistry()
        self.experiments_hub: EventHub[str, pb.ExperimentStatusResponse] = EventHub(bound)
        # The routing table for gateways (WatchRoutes): one coalescing key per model, experiment, pipeline.
        self.routes_hub: EventHub[RouteKey, rpb.WatchRoutesResponse] = EventHub(bound)
        self.ready = asyncio.Event()
        self.closing = asyncio.Event()
        self._locks = KeyedLocks()
        self._route_watchers: Counter[str] = Counter()  # gateway name -> its open WatchRoutes streams
        self._dirty: dict[str, bool] = {}
        self._reconcile_wake = asyncio.Event()
        self._durable_models: set[str] = set()
        self._durable_servers: set[str] = set()
        self._durable_pipelines_removed: set[str] = set()
        self._durable_wake = asyncio.Event()
        self._expected_replicas: set[tuple[str, int]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_deadline = 0.0

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Restore durable state, then start the reconcile and write-behind loops and the synchroniser."""
        servers = [
            _decode(ServerRecord.from_bytes, SERVERS_TABLE, k, v) for k, v in self.store.load(SERVERS_TABLE).items()
        ]
        models = [_decode(ModelRecord.from_bytes, MODELS_TABLE, k, v) for k, v in self.store.load(MODELS_TABLE).items()]
        self.cluster.restore([m for m in models if m is not None], [s for s in servers if s is not None])
        # Records written before inline credentials were redacted hold them in clear: written again, redacted.
        self._durable_models |= {m.name for m in models if m is not None and m.stores_credentials_in_clear()}
        if self._durable_models:
            self._durable_wake.set()
        for key, value in self.store.load(PIPELINES_TABLE).items():
            pipeline = _decode(PipelineRecord.from_bytes, PIPELINES_TABLE, key, value)
            if pipeline is not None:
                self.pipelines.restore(pipeline)
        self.pipelines.refresh(self._model_available)
        for key, value in self.store.load(EXPERIMENTS_TABLE).items():
            experiment = _decode(ExperimentRecord.from_bytes, EXPERIMENTS_TABLE, key, value)
            if experiment is not None:
                self.experiments.restore(experiment)
        # Restored experiments say why their parts are not ready at once, not only after the next change.
        self.experiments.refresh(self._why_not_ready)
        for server in self.cluster.servers.values():
            expected = server.expected_replicas if server.expected_replicas is not None else server.seen_replicas
            self._expected_replicas.update((server.name, index) for index in range(expected))
        log.info(
            "restored state",
            extra={"fields": {"models": len(self.cluster.models), "expected_replicas": len(self._expected_replicas)}},
        )
        self._sync_deadline = time.monotonic() + self.settings.sync_grace_seconds
        self._after_change()
        self._tasks = [
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._write_behind_loop(), name="write-behind"),
            asyncio.create_task(self._synchroniser(), name="synchroniser"),
            asyncio.create_task(self._scale_down_loop(), name="scale-down"),
        ]

    async def close(self) -> None:
        """End every status stream, stop the loops, flush pending writes."""
        self.closing.set()
        self.models_hub.close()
        self.servers_hub.close()
        self.experiments_hub.close()
        self.pipelines_hub.close()
        self.routes_hub.close()
        for server in self.cluster.servers.values():
            for replica in server.replicas.values():
                # Agents see the stream end and reconnect (to this scheduler's successor) with backoff.
                replica.session.close("the scheduler is shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush_durable()

    async def _synchroniser(self) -> None:
        """Ready once every expected replica has reconnected, or the grace period is over."""
        while not self.ready.is_set():
            connected = {(s.name, i) for s in self.cluster.servers.values() for i in s.replicas}
            missing = self._expected_replicas - connected
            if not missing or time.monotonic() >= self._sync_deadline:
                if missing:
                    log.warning(
                        "starting to schedule without %d expected replica(s): %s", len(missing), sorted(missing)[:10]
                    )
                self.ready.set()
                self._reconcile_wake.set()
                log.info("scheduler ready")
                return
            await asyncio.sleep(0.05)

    # ----------------------------------------------------------------- models

    async def load_model(self, model: pb.Model) -> None:
        model_specs.validate_model(model)
        name = model.meta.name
        async with self._locks.hold(name):
            if name not in self.cluster.models and len(self.cluster.models) >= self.settings.max_models:
                raise ResourceExhausted(f"the scheduler holds {len(self.cluster.models)} models, its limit")
            # A model named like a running experiment would make routing ambiguous (see ExperimentRegistry).
            self.experiments.check_name_free(name, pb.MODEL)
            change, prepared = self.cluster.prepare_load(model)
            if prepared is None:
                self.cluster.retry_placement(name)
                self._after_change()
                return
            await self._write([Put(MODELS_TABLE, name, prepared.to_bytes())])
            self.cluster.apply_load(change, prepared)
            self._after_change()

    async def unload_model(self, name: str) -> None:
        check_name(name)
        async with self._locks.hold(name):
            record = self.cluster.models.get(name)
            if record is not None and record.deleted:
                return  # already being deleted: nothing more to do
            prepared = self.cluster.prepare_unload(name)
            await self._write([Put(MODELS_TABLE, name, prepared.to_bytes())])
            self.cluster.apply_unload(name)
            self._after_change()

    def model_status(self, name: str | None, *, all_versions: bool) -> Iterator[pb.ModelStatusResponse]:
        """One model's status, or every model's when ``name`` is None (the request names none). An empty name is
        not a missing one: like any malformed name it is INVALID_ARGUMENT, for every status RPC alike.

        Every model's status is rendered one at a time, as the caller takes it: a reader that is slow (or stops
        reading) holds the list of names, not 100,000 rendered statuses. Each status is its model's state when it
        is rendered; a model removed meanwhile is left out."""
        if name is not None:
            check_name(name)
            record = self.cluster.models.get(name)
            if record is None:
                raise FailedPrecondition(f"model {name!r} not found")
            return iter([status_messages.model_status(record, all_versions=all_versions)])
        return self._each_model_status(list(self.cluster.models), all_versions)

    def _each_model_status(self, names: list[str], all_versions: bool) -> Iterator[pb.ModelStatusResponse]:
        for name in names:
            record = self.cluster.models.get(name)
            if record is not None:
                yield status_messages.model_status(record, all_versions=all_versions)

    def record_gateway_status(self, update: pb.ModelUpdateMessage, success: bool, reason: str) -> None:
        """A gateway's acknowledgement of a model's routing (ModelStatusEvent)."""
        record = self.cluster.models.get(update.model)
        version = record.version(update.version) if record else None
        if record is None or version is None:
            return  # the model is gone already; nothing to record
        if update.op == pb.ModelUpdateMessage.Delete:
            version.gateway_state = ModelState.TERMINATED if success else ModelState.TERMINATE_FAILED
        else:
            version.gateway_state = ModelState.AVAILABLE if success else ModelState.FAILED
        version.gateway_reason = limits.clean_reason(reason)
        self.cluster.touched.models.add(record.name)
        self._after_change()

    def subscribe_models(self, subscriber: str) -> Subscription[str, pb.ModelStatusResponse]:
        def render(name: str) -> pb.ModelStatusResponse | None:
            record = self.cluster.models.get(name)
            return status_messages.model_status(record) if record is not None else None

        # Statuses are rendered as the subscriber reads them: one that reads nothing holds no copy of them.
        return self.models_hub.subscribe(subscriber, lambda: list(self.cluster.models), render)

    def model_endpoints(self, name: str) -> tuple[int, list[rpb.ModelEndpoint]]:
        """(version, its serving endpoints): where ``name`` is served now.

        Raises NotFound for an unknown model, Unavailable while nothing serves it.
        """
        check_name(name)
        record = self.cluster.models.get(name)
        if record is None or record.deleted:
            raise NotFound(f"model {name!r} not found")
        for version in reversed(record.versions):
            endpoints = route_messages.serving_endpoints(version, self.cluster.servers)
            if endpoints:
                return version.version, endpoints
        state = record.latest.derived
        detail = f": {state.reason}" if state.reason else ""
        raise Unavailable(f"model {name!r} is not served yet (state {state.state.name}{detail})")

    # ----------------------------------------------------------------- routing table (gateways)

    def subscribe_routes(self, subscriber: str) -> Subscription[RouteKey, rpb.WatchRoutesResponse]:
        """Every model, experiment and pipeline route, then the snapshot-complete marker, then changes."""

        def keys() -> list[RouteKey]:
            routes: list[RouteKey] = [("model", n) for n, r in self.cluster.models.items() if not r.deleted]
            routes += [("experiment", n) for n, r in self.experiments.records.items() if r.running]
            routes += [("pipeline", n) for n, r in self.pipelines.records.items() if not r.deleted]
            return [*routes, route_messages.SNAPSHOT_COMPLETE_KEY]

        def render(key: RouteKey) -> rpb.WatchRoutesResponse:
            kind, name = key
            if kind == "model":
                return route_messages.model_route(name, self.cluster.models.get(name), self.cluster.servers)
            if kind == "experiment":
                return route_messages.experiment_route(name, self.experiments.records.get(name))
            if kind == "pipeline":
                return route_messages.pipeline_route(name, self.pipelines.records.get(name))
            return route_messages.SNAPSHOT_COMPLETE

        return self.routes_hub.subscribe(subscriber, keys, render)

    @contextlib.asynccontextmanager
    async def watch_routes(self, gateway: str) -> AsyncIterator[Subscription[RouteKey, rpb.WatchRoutesResponse]]:
        """``subscribe_routes`` for a gateway's WatchRoutes stream. While any stream of ``gateway`` is open it
        counts as connected; when its last one ends, what it said of experiments is forgotten, so an experiment
        that no connected gateway routes is not ``active``."""
        self._route_watchers[gateway] += 1
        try:
            async with self.subscribe_routes(gateway) as subscription:
                yield subscription
        finally:
            self._route_watchers[gateway] -= 1
            if self._route_watchers[gateway] <= 0:
                del self._route_watchers[gateway]
                changed = self.experiments.forget_gateway(gateway)
                if changed:
                    self._publish_experiments(changed, routes=False)

    def record_experiment_routed(self, name: str, gateway: str, active: bool, reason: str) -> None:
        """A gateway's acknowledgement of an experiment (RoutingService.ExperimentRouted). Ignored from a
        gateway with no open WatchRoutes stream: it arrived after the stream ended, and would never be forgotten."""
        if gateway not in self._route_watchers:
            log.info("ignoring %s's acknowledgement of experiment %s: it watches no routes", gateway, name)
            return
        if self.experiments.record_gateway_ack(name, gateway, active, reason):
            self._publish_experiments({name}, routes=False)

    # ----------------------------------------------------------------- pipelines

    async def load_pipeline(self, pipeline: pb.Pipeline) -> None:
        """Load or change a pipeline; durable before it returns (a change makes a new version)."""
        # The name's own lock too: a model, pipeline or experiment of one name is checked and written atomically.
        async with self._locks.hold(f"pipeline/{pipeline.name}"), self._locks.hold(pipeline.name):
            self.experiments.check_name_free(pipeline.name, pb.PIPELINE)
            prepared = self.pipelines.prepare_load(pipeline)
            if prepared is None:
                return
            known = len(self.pipelines.records)
            if pipeline.name not in self.pipelines.records and known >= limits.MAX_PIPELINES:
                raise ResourceExhausted(
                    f"the scheduler holds {known} pipelines, its limit: unload one before loading {pipeline.name!r}"
                )
            await self._write([Put(PIPELINES_TABLE, pipeline.name, prepared.to_bytes())])
            self.pipelines.apply_load(prepared)
            self._refresh_pipelines({pipeline.name})

    async def unload_pipeline(self, name: str) -> None:
        async with self._locks.hold(f"pipeline/{name}"):
            prepared = self.pipelines.prepare_unload(name)
            await self._write([Put(PIPELINES_TABLE, name, prepared.to_bytes())])
            self.pipelines.apply_unload(name)
            self._refresh_pipelines({name})

    def pipeline_status(self, name: str | None, *, all_versions: bool) -> list[pb.PipelineStatusResponse]:
        return self.pipelines.status(name, all_versions)

    def subscribe_pipelines(self, subscriber: str) -> Subscription[str, pb.PipelineStatusResponse]:
        def render(name: str) -> pb.PipelineStatusResponse | None:
            record = self.pipelines.records.get(name)
            return pipeline_status_response(record) if record is not None else None

        return self.pipelines_hub.subscribe(subscriber, lambda: sorted(self.pipelines.records), render)

    def record_pipeline_ack(self, name: str, version: int, success: bool, reason: str) -> None:
        """A gateway's acknowledgement of a pipeline version (PipelineStatusEvent)."""
        if self.pipelines.record_gateway_ack(name, version, success, reason):
            self._refresh_pipelines({name})

    def _model_available(self, name: str) -> bool:
        record = self.cluster.models.get(name)
        return record is not None and not record.deleted and record.latest.derived.state == ModelState.AVAILABLE

    def _refresh_pipelines(self, names: set[str]) -> None:
        """Follow the models' states; publish what changed; forget fully terminated deleted pipelines."""
        changed = names | self.pipelines.refresh(self._model_available)
        removed = {record.name: record for record in self.pipelines.pop_removed()}
        if removed:
            self._durable_pipelines_removed |= set(removed)
            self._durable_wake.set()
        if self.routes_hub.subscriber_count:
            for name in changed:
                self.routes_hub.publish(
                    ("pipeline", name), route_messages.pipeline_route(name, self.pipelines.records.get(name))
                )
        if self.pipelines_hub.subscriber_count:
            for name in changed:
                if name in removed:
                    self.pipelines_hub.publish(name, pipeline_status_response(removed[name]))
                elif name in self.pipelines.records:
                    for status in self.pipelines.status(name):
                        self.pipelines_hub.publish(name, status)
        if self.experiments.records:
            self._publish_experiments(self.experiments.refresh(self._why_not_ready))

    # ----------------------------------------------------------------- experiments

    async def start_experiment(self, experiment: pb.Experiment) -> None:
        """Start (or replace whole) an experiment; durable before it returns."""
        async with self._locks.hold(f"experiment/{experiment.name}"), self._locks.hold(experiment.name):
            prepared = self.experiments.prepare_start(experiment, self._routed_as)
            if prepared is None:
                return
            running = self.experiments.running()
            if experiment.name not in running and len(running) >= limits.MAX_EXPERIMENTS:
                raise ResourceExhausted(
                    f"the scheduler runs {len(running)} experiments, its limit: stop one before starting "
                    f"{experiment.name!r}"
                )
            await self._write([Put(EXPERIMENTS_TABLE, experiment.name, prepared.to_bytes())])
            self.experiments.apply_start(prepared)
            self._publish_experiments({experiment.name} | self.experiments.refresh(self._why_not_ready))

    async def stop_experiment(self, name: str) -> None:
        async with self._locks.hold(f"experiment/{name}"):
            prepared = self.experiments.prepare_stop(name)
            await self._write([Put(EXPERIMENTS_TABLE, name, prepared.to_bytes())])
            self.experiments.apply_stop(name)
            self._publish_experiments({name})

    def experiment_status(self, name: str | None) -> list[pb.ExperimentStatusResponse]:
        return self.experiments.status(name)

    def _routed_as(self, name: str) -> int | None:
        """pb.MODEL or pb.PIPELINE when a model or pipeline (not being deleted) has this name, else None."""
        model = self.cluster.models.get(name)
        if model is not None and not model.deleted:
            return pb.MODEL
        pipeline = self.pipelines.records.get(name)
        return pb.PIPELINE if pipeline is not None and not pipeline.deleted else None

    def subscribe_experiments(self, subscriber: str) -> Subscription[str, pb.ExperimentStatusResponse]:
        def render(name: str) -> pb.ExperimentStatusResponse | None:
            record = self.experiments.records.get(name)
            return record.to_status() if record is not None else None

        return self.experiments_hub.subscribe(subscriber, lambda: sorted(self.experiments.records), render)

    def _why_not_ready(self, name: str, resource_type: int) -> str | None:
        """None when a model (ModelAvailable) or pipeline (Ready) an experiment routes to is ready; else why
        not, for the experiment's status."""
        record: ModelRecord | PipelineRecord | None
        if resource_type == pb.MODEL:
            record = self.cluster.models.get(name)
            if record is None or record.deleted:
                return "being unloaded" if record is not None else "not loaded: unloaded, or never loaded"
            derived = record.latest.derived
            if derived.state == ModelState.AVAILABLE:
                return None
            state = pb.ModelStatus.ModelState.Name(pb.ModelStatus.ModelState.ValueType(derived.state))
            return f"{state}: {derived.reason}" if derived.reason else state
        record = self.pipelines.records.get(name)
        if record is None or record.deleted:
            return "being unloaded" if record is not None else "not loaded: unloaded, or never loaded"
        latest = record.latest
        if latest.status == PipelineStatus.READY:
            return None
        status = pb.PipelineVersionState.PipelineStatus.Name(
            pb.PipelineVersionState.PipelineStatus.ValueType(latest.status)
        )
        return f"{status}: {latest.reason}" if latest.reason else status

    def _publish_experiments(self, names: set[str], *, routes: bool = True) -> None:
        if routes and self.routes_hub.subscriber_count:
            for name in names:
                self.routes_hub.publish(
                    ("experiment", name), route_messages.experiment_route(name, self.experiments.records.get(name))
                )
        if not self.experiments_hub.subscriber_count:
            return
        for name in names:
            for status in self.experiments.status(name):
                self.experiments_hub.publish(name, status)

    # ----------------------------------------------------------------- servers

    async def notify_servers(self, servers: Sequence[pb.ServerNotify], first_sync: bool) -> None:
        server_specs.validate_notify(servers, self.cluster.servers.keys())
        changes: list[Change] = []
        for notify in servers:
            current = self.cluster.servers.get(notify.name) or ServerRecord(notify.name)
            future = replace(
                current,
                shared=notify.shared,
                expected_replicas=notify.expectedReplicas,
                min_replicas=notify.minReplicas,
                max_replicas=notify.maxReplicas,
                replicas={},
            )
            changes.append(Put(SERVERS_TABLE, notify.name, future.to_bytes()))
        await self._write(changes)
        for notify in servers:
            self.cluster.notify_server(notify)
            if first_sync:
                self._expected_replicas.update((notify.name, i) for i in range(notify.expectedReplicas))
        self._after_change()

    def server_status(self, name: str | None) -> list[pb.ServerStatusResponse]:
        if name is not None:
            check_name(name, "server")
            server = self.cluster.servers.get(name)
            if server is None:
                raise FailedPrecondition(f"server {name!r} not found")
            return [status_messages.server_status(server)]
        return [status_messages.server_status(s) for s in self.cluster.servers.values()]

    def subscribe_servers(self, subscriber: str) -> Subscription[ServerKey, pb.ServerStatusResponse]:
        def render(key: ServerKey) -> pb.ServerStatusResponse | None:
            server = self.cluster.servers.get(key[0])
            return status_messages.server_status(server) if server is not None else None

        update = pb.ServerStatusResponse.StatusUpdate
        return self.servers_hub.subscribe(subscriber, lambda: [(n, update) for n in self.cluster.servers], render)

    async def control_plane_events(self) -> AsyncIterator[pb.ControlPlaneResponse]:
        """SEND_SERVERS at once; once ready, the rest in the order a controller must re-send them."""
        yield pb.ControlPlaneResponse(event=pb.ControlPlaneResponse.SEND_SERVERS)
        ready = asyncio.create_task(self.ready.wait())
        closing = asyncio.create_task(self.closing.wait())
        try:
            await asyncio.wait([ready, closing], return_when=asyncio.FIRST_COMPLETED)
            if self.closing.is_set():
                return
            for event in (
                pb.ControlPlaneResponse.SEND_EXPERIMENTS,
                pb.ControlPlaneResponse.SEND_MODELS,
                pb.ControlPlaneResponse.SEND_PIPELINES,
            ):
                yield pb.ControlPlaneResponse(event=event)
            await self.closing.wait()
        finally:
            ready.cancel()
            closing.cancel()

    # ----------------------------------------------------------------- agents

    def check_registration(self, config: ReplicaConfig) -> None:
        """Raise ResourceExhausted when ``config`` names a server the scheduler may not take on: an agent's
        registration makes a server known as ServerNotify does, so it counts against the same limit."""
        if config.server not in self.cluster.servers and len(self.cluster.servers) >= limits.MAX_SERVERS:
            raise ResourceExhausted(
                f"the scheduler knows {len(self.cluster.servers)} servers, its limit ({limits.MAX_SERVERS}): "
                f"server {config.server!r} cannot be added"
            )

    def agent_registered(
        self,
        config: ReplicaConfig,
        loaded: Sequence[agent_pb2.LoadedModel],
        session: AgentSession,
        *,
        server_down: str | None = None,
    ) -> None:
        self.cluster.register_replica(config, loaded, session, server_down=server_down)
        self._after_change()

    def agent_server_health(self, config: ReplicaConfig, session: AgentSession, health: agent_pb2.ServerHealth) -> None:
        """The replica's inference server stopped serving, or serves again (agent.proto's ServerHealth)."""
        fields = {"server": config.server, "replica": config.index}
        if health.serving:
            log.info("inference server serves again", extra={"fields": {**fields, "models": len(health.loaded_models)}})
        else:
            log.warning("inference server is down", extra={"fields": {**fields, "reason": health.reason}})
        self.cluster.server_health(
            config.server,
            config.index,
            session,
            serving=health.serving,
            reason=health.reason,
            loaded=health.loaded_models,
        )
        self._after_change()

    def agent_event(self, config: ReplicaConfig, session: AgentSession, event: agent_pb2.ModelEvent) -> str | None:
        rejected = self.cluster.model_event(config.server, config.index, session, event)
        self._after_change()
        return rejected

    def agent_drain(self, config: ReplicaConfig, session: AgentSession) -> None:
        self.cluster.drain_replica(config.server, config.index, session)
        self._after_change()

    def agent_gone(self, config: ReplicaConfig, session: AgentSession) -> None:
        self.cluster.replica_gone(config.server, config.index, session)
        self._after_change()

    def check_invariants(self) -> None:
        """Raise if the state breaks an invariant (tests call this after each step): the cluster's (records render,
        versions in range, ledgers match, derived states consistent), the pipelines' and the experiments' (specs
        valid, statuses fit a client, no running experiment named like a model or pipeline it is not in front of)."""
        self.cluster.check_invariants()
        self.pipelines.check_invariants()
        self.experiments.check_invariants(self._routed_as)

    # ----------------------------------------------------------------- internals

    async def _write(self, changes: Sequence[Change]) -> None:
        try:
            await self.store.apply(changes)
        except StateStoreError as error:
            raise Unavailable(f"the state store could not save the change, so it was not made: {error}") from None

    def _after_change(self) -> None:
        """Publish, persist and reconcile what the last Cluster change touched."""
        touched = self.cluster.take_touched()
        # Status messages are built only for subscribers: a new one starts from a fresh snapshot anyway.
        for name in touched.models if self.models_hub.subscriber_count else ():
            record = self.cluster.models.get(name) or touched.removed.get(name)
            status = status_messages.model_status(record) if record else status_messages.removed_model_status(name)
            self.models_hub.publish(name, status)
        for name in touched.models if self.routes_hub.subscriber_count else ():
            route = route_messages.model_route(name, self.cluster.models.get(name), self.cluster.servers)
            self.routes_hub.publish(("model", name), route)
        for name in touched.servers if self.servers_hub.subscriber_count else ():
            server = self.cluster.servers.get(name)
            if server is not None:
                self.servers_hub.publish(
                    (name, pb.ServerStatusResponse.StatusUpdate), status_messages.server_status(server)
                )
        for name, replicas in touched.scaling.items():
            server = self.cluster.servers.get(name)
            if server is not None:
                request = status_messages.scaling_request(server, replicas)
                self.servers_hub.publish((name, pb.ServerStatusResponse.ScalingRequest), request)
        if touched.durable_models or touched.durable_servers:
            self._durable_models |= touched.durable_models
            self._durable_servers |= touched.durable_servers
            self._durable_wake.set()
        if touched.models and (self.pipelines.records or self.experiments.records):
            self._refresh_pipelines(set())
        if touched.reconcile:
            for name, retry in touched.reconcile.items():
                self._dirty[name] = self._dirty.get(name, False) or retry
            self._reconcile_wake.set()

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wake.wait()
            self._reconcile_wake.clear()
            if not self.ready.is_set():
                continue  # the synchroniser wakes us once ready
            batch, self._dirty = self._dirty, {}
            for count, (name, retry) in enumerate(batch.items(), 1):
                try:
                    self.cluster.reconcile(name, retry_failed=retry)
                except Exception:
                    log.exception("reconcile of model %r failed; it will be retried on the next change", name)
                if count % self.settings.reconcile_batch == 0:
                    self._after_change()
                    await asyncio.sleep(0)
            self._after_change()

    async def _scale_down_loop(self) -> None:
        interval = max(0.05, min(30.0, self.settings.scale_down_idle_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            if self.ready.is_set():
                self.cluster.request_scale_downs(time.time(), self.settings.scale_down_idle_seconds)
                self._after_change()

    async def _write_behind_loop(self) -> None:
        """Durable changes that follow from agents' events (a version dropped, a deleted model gone).

        They are not acknowledgements, so they need not block anything; lost on a crash, they are
        recomputed after the restart.
        """
        while True:
            await self._durable_wake.wait()
            self._durable_wake.clear()
            try:
                await self._flush_durable()
            except StateStoreError:
                log.exception("could not save state changes; retrying in 1s")
                self._durable_wake.set()
                await asyncio.sleep(1)

    async def _flush_durable(self) -> None:
        models, self._durable_models = self._durable_models, set()
        servers, self._durable_servers = self._durable_servers, set()
        pipelines, self._durable_pipelines_removed = self._durable_pipelines_removed, set()
        changes: list[Change] = [Delete(PIPELINES_TABLE, name) for name in sorted(pipelines)]
        for name in sorted(models):
            record = self.cluster.models.get(name)
            changes.append(Put(MODELS_TABLE, name, record.to_bytes()) if record else Delete(MODELS_TABLE, name))
        for name in sorted(servers):
            server = self.cluster.servers.get(name)
            if server is not None:
                changes.append(Put(SERVERS_TABLE, name, server.to_bytes()))
        if changes:
            try:
                await self.store.apply(changes)
            except StateStoreError:
                self._durable_models |= models
                self._durable_servers |= servers
                self._durable_pipelines_removed |= pipelines
                raise


T = TypeVar("T")


def _decode(decode: Callable[[str, bytes], T], table: str, key: str, data: bytes) -> T | None:
    try:
        return decode(key, data)
    except (ValueError, KeyError, TypeError) as error:
        # Kept in the store untouched, so a fixed version can still read it; skipped for now.
        log.error("cannot read stored %s record %r (%s); skipping it", table, key, error)
        return None
