"""The scheduler's domain façade: what the servicers call. No grpc here.

It owns the Cluster (in-memory state, scheduler/models/), the pipelines and experiments, the durable StateStore
(write_behind.py), the status streams (publishing.py) and the loops over the cluster (reconciler.py), and keeps
these promises:

- Durable before acknowledged: a LoadModel/UnloadModel/ServerNotify returns only after its change is
  in the state store; the in-memory state changes only after the write succeeded.
- Idempotent, full-state mutations: the same LoadModel twice changes nothing the second time.
- Single-flight per model: mutations of one model are serialised by a per-model lock; reconciles are
  synchronous Cluster calls, and triggers coalesce in one dirty set drained by one loop.
- Nothing is placed until the synchroniser is ready: after a restart, the agents that held models get
  a grace period to reconnect and report them, so nothing is loaded twice or moved needlessly.
- Status streams get the current state first, then changes (see EventHub); after a restart, a model no replica
  has reported yet is shown once it has been, or once the synchroniser stops waiting (Publisher.subscribe_models).

Over 400 lines, on purpose: it is one class whose methods are each a few lines of the same pattern (lock the
name, validate, write durably, apply, publish), one per RPC. Split by resource, the rule that a model, pipeline
or experiment of one name is checked and written under that name's one lock (``_locks``) would be spread over
modules that each must remember it; the work itself lives in models/, pipelines/, experiments/, publishing.py,
reconciler.py and write_behind.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane import logs
from modelplane.event_hub import Subscription
from modelplane.keyed_locks import KeyedLocks
from modelplane.logs import with_fields
from modelplane.spec import limits
from modelplane.spec.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from modelplane.spec.names import check_name
from scheduler import route_messages, status_messages
from scheduler.agent_sessions import AgentSession
from scheduler.experiments import ExperimentRecord, ExperimentRegistry
from scheduler.models import model_specs, server_specs
from scheduler.models.cluster import Cluster
from scheduler.models.cluster_state import ReplicaConfig
from scheduler.models.model_records import ModelRecord
from scheduler.models.model_state import ModelState
from scheduler.models.server_records import ServerRecord
from scheduler.persistence import Change, Delete, Put, StateStore
from scheduler.pipelines import PipelineRecord, PipelineRegistry, PipelineStatus
from scheduler.publishing import Publisher, ServerKey
from scheduler.reconciler import Reconciler
from scheduler.route_messages import RouteKey
from scheduler.write_behind import (
    EXPERIMENTS_TABLE,
    MODELS_TABLE,
    PIPELINES_TABLE,
    SERVERS_TABLE,
    WriteBehind,
    decode,
    write,
)

log = logging.getLogger(__name__)
_FAILED_LOADS = frozenset({agent_pb2.ModelEvent.KIND_LOAD_FAILED, agent_pb2.ModelEvent.KIND_LOAD_FAIL_MEMORY})

# The longest a new leader keeps models the controller has not re-sent, in sync grace periods after it was ready.
RESEND_WAIT_LIMIT = 6


@dataclass(frozen=True, slots=True)
class CoreSettings:
    # How long, after a start with known servers, to wait for their agents before placing anything.
    sync_grace_seconds: float = 10.0
    max_models: int = limits.MAX_MODELS
    # Reconcile this many models, then let RPCs in before going on.
    reconcile_batch: int = 200
    # Ask to remove server replicas that have held no model for this long.
    scale_down_idle_seconds: float = 300.0
    # A new leader whose term starts from an empty store (scheduler/leadership/term_state.py): keep what agents hold
    # of models not known yet until the controller's re-send claims them (_end_of_resend), instead of unloading it.
    hold_unknown_models: bool = False
    # A stopped experiment's record (its status still answers "stopped") is dropped after this long; Seldon's
    # scheduler does the same with --deleted-resource-ttl (a day by default).
    stopped_experiment_ttl_seconds: float = 86_400.0


class SchedulerCore:
    def __init__(self, store: StateStore, settings: CoreSettings | None = None) -> None:
        self.settings = settings or CoreSettings()
        self.store = store
        self.cluster = Cluster()
        self.pipelines = PipelineRegistry()
        self.experiments = ExperimentRegistry()
        self.publisher = Publisher(self.cluster, self.pipelines, self.experiments, self.settings.max_models)
        self.reconciler = Reconciler(
            self.cluster,
            self._after_change,
            reconcile_batch=self.settings.reconcile_batch,
            scale_down_idle_seconds=self.settings.scale_down_idle_seconds,
        )
        self.ready = self.reconciler.ready
        self.closing = asyncio.Event()
        self._write_behind = WriteBehind(store, self.cluster)
        self._locks = KeyedLocks()
        self._route_watchers: Counter[str] = Counter()  # gateway name -> its open WatchRoutes streams
        self._tasks: list[asyncio.Task[None]] = []
        self._last_load_at = 0.0  # monotonic: when the last LoadModel arrived (a re-send in progress)
        self._resend_asked_at: float | None = None  # monotonic: when a controller was last asked for every model

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Restore durable state, then start the reconcile and write-behind loops and the synchroniser."""
        servers = [
            decode(ServerRecord.from_bytes, SERVERS_TABLE, k, v) for k, v in self.store.load(SERVERS_TABLE).items()
        ]
        models = [decode(ModelRecord.read_stored, MODELS_TABLE, k, v) for k, v in self.store.load(MODELS_TABLE).items()]
        self.cluster.restore([m for m in models if m is not None], [s for s in servers if s is not None])
        # Records written before inline credentials were redacted hold them in clear: written again, redacted.
        self._write_behind.save(
            models={
                m.record.name
                for m in models
                if m is not None and not m.checked and m.record.stores_credentials_in_clear()  # marked: redacted
            }
        )
        for key, value in self.store.load(PIPELINES_TABLE).items():
            pipeline = decode(PipelineRecord.from_bytes, PIPELINES_TABLE, key, value)
            if pipeline is not None:
                self.pipelines.restore(pipeline)
        self.pipelines.refresh(self._model_available)
        for key, value in self.store.load(EXPERIMENTS_TABLE).items():
            experiment = decode(ExperimentRecord.from_bytes, EXPERIMENTS_TABLE, key, value)
            if experiment is not None:
                self.experiments.restore(experiment)
        # Restored experiments say why their parts are not ready at once, not only after the next change.
        self.experiments.refresh(self._why_not_ready)
        for server in self.cluster.servers.values():
            expected = server.expected_replicas if server.expected_replicas is not None else server.seen_replicas
            self.reconciler.expect((server.name, index) for index in range(expected))
        expected_replicas = self.reconciler.expected_replica_count
        log.info(
            "restored state",
            extra={"fields": {"models": len(self.cluster.models), "expected_replicas": expected_replicas}},
        )
        self.reconciler.start_grace(self.settings.sync_grace_seconds)
        self.cluster.holding_unknown = self.settings.hold_unknown_models
        self._after_change()
        self._tasks = [
            asyncio.create_task(self.reconciler.reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._write_behind.loop(), name="write-behind"),
            asyncio.create_task(self.reconciler.synchroniser(), name="synchroniser"),
            asyncio.create_task(self.reconciler.scale_down_loop(), name="scale-down"),
            asyncio.create_task(self._stopped_experiments_loop(), name="stopped-experiments"),
        ]
        if self.settings.hold_unknown_models:
            self._tasks.append(asyncio.create_task(self._end_of_resend(), name="end-of-resend"))

    async def close(self) -> None:
        """End every status stream, stop the loops, flush pending writes."""
        self.closing.set()
        self.publisher.close()
        for server in self.cluster.servers.values():
            for replica in server.replicas.values():
                # Agents see the stream end and reconnect (to this scheduler's successor) with backoff.
                replica.session.close("the scheduler is shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._write_behind.flush()

    # ----------------------------------------------------------------- models

    async def _end_of_resend(self) -> None:
        """Release what no re-sent LoadModel claimed once the controller's re-send is over. The scheduler asks for
        it (SubscribeControlPlane's SEND_MODELS) when ready and a controller subscribes; the re-send is taken as
        over when no LoadModel came for ``sync_grace_seconds`` after the ask, and at the latest
        ``RESEND_WAIT_LIMIT`` grace periods after the scheduler was ready (no controller came, or a stream of
        LoadModels would keep unwanted models loaded for ever)."""
        await self.ready.wait()
        quiet = self.settings.sync_grace_seconds
        latest = time.monotonic() + RESEND_WAIT_LIMIT * quiet
        while True:
            # A deadline that moves with every LoadModel: slept towards, then looked at again.
            asked = self._resend_asked_at
            end = latest if asked is None else min(latest, max(asked, self._last_load_at) + quiet)
            if time.monotonic() >= end:
                break
            await asyncio.sleep(min(end - time.monotonic(), quiet))
        self.cluster.release_unclaimed()
        self._after_change()

    async def load_model(self, model: pb.Model) -> None:
        self._last_load_at = time.monotonic()
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
            log.debug("model %s stored; placing it", name)  # lazy: nothing is formatted unless debug is on
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
        return self.publisher.subscribe_models(subscriber)

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
        return self.publisher.subscribe_routes(subscriber)

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
                    self.publisher.publish_experiments(changed, routes=False)

    def record_experiment_routed(self, name: str, gateway: str, active: bool, reason: str) -> None:
        """A gateway's acknowledgement of an experiment (RoutingService.ExperimentRouted). Ignored from a
        gateway with no open WatchRoutes stream: it arrived after the stream ended, and would never be forgotten."""
        if gateway not in self._route_watchers:
            log.info("ignoring %s's acknowledgement of experiment %s: it watches no routes", gateway, name)
            return
        if self.experiments.record_gateway_ack(name, gateway, active, reason):
            self.publisher.publish_experiments({name}, routes=False)

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
            log.info("pipeline loaded", extra=with_fields(version=prepared.latest.version))
            self._refresh_pipelines({pipeline.name})

    async def unload_pipeline(self, name: str) -> None:
        async with self._locks.hold(f"pipeline/{name}"):
            prepared = self.pipelines.prepare_unload(name)
            await self._write([Put(PIPELINES_TABLE, name, prepared.to_bytes())])
            self.pipelines.apply_unload(name)
            log.info("pipeline unloading")
            self._refresh_pipelines({name})

    def pipeline_status(self, name: str | None, *, all_versions: bool) -> list[pb.PipelineStatusResponse]:
        return self.pipelines.status(name, all_versions)

    def subscribe_pipelines(self, subscriber: str) -> Subscription[str, pb.PipelineStatusResponse]:
        return self.publisher.subscribe_pipelines(subscriber)

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
        self._write_behind.save(pipelines_removed=set(removed))
        self.publisher.publish_pipelines(changed, removed)
        if self.experiments.records:
            self.publisher.publish_experiments(self.experiments.refresh(self._why_not_ready))

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
            log.info("experiment started", extra=with_fields(candidates=[c.name for c in experiment.candidates]))
            self.publisher.publish_experiments({experiment.name} | self.experiments.refresh(self._why_not_ready))

    async def stop_experiment(self, name: str) -> None:
        async with self._locks.hold(f"experiment/{name}"):
            prepared = self.experiments.prepare_stop(name)
            await self._write([Put(EXPERIMENTS_TABLE, name, prepared.to_bytes())])
            self.experiments.apply_stop(name, prepared.stopped_at)
            log.info("experiment stopped")
            self.publisher.publish_experiments({name})

    async def forget_stopped_experiments(self, now: float) -> list[str]:
        """Delete the stopped experiments ExperimentRegistry.expired names, durably first; the names forgotten."""
        ttl = self.settings.stopped_experiment_ttl_seconds
        forgotten: list[str] = []
        for name in self.experiments.expired(now, ttl):
            async with self._locks.hold(f"experiment/{name}"):
                if name not in self.experiments.expired(now, ttl):  # started again while this waited for the lock
                    continue
                await self._write([Delete(EXPERIMENTS_TABLE, name)])
                self.experiments.forget(name)
                forgotten.append(name)
        if forgotten:
            log.info(
                "forgot %d experiments stopped over %.0f s ago: %s", len(forgotten), ttl, ", ".join(forgotten[:20])
            )
        return forgotten

    async def _stopped_experiments_loop(self) -> None:
        interval = max(0.2, min(60.0, self.settings.stopped_experiment_ttl_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            await self.forget_stopped_experiments(time.time())

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
        return self.publisher.subscribe_experiments(subscriber)

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
                self.reconciler.expect((notify.name, i) for i in range(notify.expectedReplicas))
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
        return self.publisher.subscribe_servers(subscriber)

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
                if event == pb.ControlPlaneResponse.SEND_MODELS:
                    self._resend_asked_at = time.monotonic()
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
        with logs.bound(model=event.model_name, version=event.model_version):
            if event.kind in _FAILED_LOADS:
                # The model's state says so too; the log keeps each failure, with the replica it happened on.
                log.warning(
                    "load of %s:%d failed on %s/%d",
                    event.model_name,
                    event.model_version,
                    config.server,
                    config.index,
                    extra=with_fields(reason=event.reason),
                )
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
        await write(self.store, changes)

    def _after_change(self) -> None:
        """Publish, persist and reconcile what the last Cluster change touched."""
        touched = self.cluster.take_touched()
        self.publisher.publish_touched(touched)
        self._write_behind.save(models=touched.durable_models, servers=touched.durable_servers)
        if touched.models and (self.pipelines.records or self.experiments.records):
            self._refresh_pipelines(set())
        if touched.reconcile or touched.capacity:
            self.reconciler.mark(touched.reconcile, capacity_changed=touched.capacity)
