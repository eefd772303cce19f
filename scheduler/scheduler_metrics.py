"""The scheduler's Prometheus metrics, on a registry of its own, served on --metrics-listen (modelplane/metrics_http).

Two kinds:
- timings observed as things happen: LoadModel (the RPC, store write included), each model's placement (one
  reconcile), each commit to the state store (a LoadModel's own write and the write-behind's batches). These sit on
  the LoadModel path (bench/load_model_rate.py), so each is an unlabelled histogram made once: an observe per call,
  no label lookup, no string built.
- state read when Prometheus scrapes, never on a request's path: models by state (and ModelMesh's
  ``modelmesh_models_loaded_total`` / ``modelmesh_models_managed_total``, which mean the same here), connected agent
  sessions and the operations queued for them, status subscribers with their queue depth and lag.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelplane.event_hub import EventHub
from modelplane.stream_watchdog import StreamWatchdog
from scheduler.core import SchedulerCore
from scheduler.models.model_state import ModelState
from scheduler.persistence.state_store import Change, StateStore

# Seconds: a LoadModel answers in well under a millisecond without a store write (bench/README.md) and a few
# milliseconds with one; placement of one model takes microseconds to milliseconds.
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class SchedulerMetrics:
    """The scheduler's metrics (``registry`` is this scheduler's own); :meth:`watch` adds its core's state."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.load_model_seconds = Histogram(
            "modelplane_scheduler_load_model_duration_seconds",
            "Time a LoadModel call took in the scheduler, its state store write included, answered well or not.",
            buckets=FAST_BUCKETS,
            registry=self.registry,
        )
        self.placement_seconds = Histogram(
            "modelplane_scheduler_placement_duration_seconds",
            "Time one model's reconcile took: choosing its replicas and queueing the load and unload operations.",
            buckets=FAST_BUCKETS,
            registry=self.registry,
        )
        self.store_commit_seconds = Histogram(
            "modelplane_scheduler_store_commit_duration_seconds",
            "Time one atomic write to the state store took until durable (a call's own write or a batch).",
            buckets=FAST_BUCKETS,
            registry=self.registry,
        )

    def watch(self, core: SchedulerCore, streams: StreamWatchdog) -> None:
        """Report ``core``'s state and its streams' at each scrape, and time its placements."""
        self.registry.register(_SchedulerState(core, streams))
        core.reconciler.observe_placement = self.placement_seconds.observe


class TimedStore:
    """A StateStore that times each ``apply`` (the commit) into ``observe``; everything else passes through."""

    def __init__(self, store: StateStore, observe: Callable[[float], None]) -> None:
        self._store = store
        self._observe = observe

    def load(self, table: str) -> dict[str, bytes]:
        return self._store.load(table)

    async def apply(self, changes: Sequence[Change]) -> None:
        started = time.perf_counter()
        try:
            await self._store.apply(changes)
        finally:
            self._observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self._store.close()


class _SchedulerState(Collector):
    def __init__(self, core: SchedulerCore, streams: StreamWatchdog) -> None:
        self._core = core
        self._streams = streams

    def describe(self) -> Iterable[Metric]:
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        found = _Families()
        cluster = self._core.cluster
        states = Tally(record.latest.derived.state for record in list(cluster.models.values()))
        for state in ModelState:
            found.by_state.add_metric([state.name], states.get(state, 0))
        found.loaded.add_metric([], states.get(ModelState.AVAILABLE, 0))
        found.managed.add_metric([], len(cluster.models))
        for server in list(cluster.servers.values()):
            replicas = list(server.replicas.values())
            found.sessions.add_metric([server.name], len(replicas))
            found.outbox.add_metric([server.name], sum(getattr(r.session, "pending", 0) for r in replicas))
        publisher = self._core.publisher
        hubs: dict[str, EventHub[Any, Any]] = {
            "models": publisher.models_hub,
            "servers": publisher.servers_hub,
            "pipelines": publisher.pipelines_hub,
            "experiments": publisher.experiments_hub,
            "routes": publisher.routes_hub,
        }
        for name, hub in hubs.items():
            counts = hub.pending_counts()
            found.subscribers.add_metric([name], len(counts))
            found.queue_max.add_metric([name], max(counts, default=0))
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # scraped off the event loop's thread (not how modelplane serves it)
            now = time.monotonic()
        for rpc, (_count, longest) in sorted(self._streams.lag_by_rpc(now).items()):
            found.lag.add_metric([rpc], longest)
        for rpc, count in sorted(self._streams.dropped.items()):
            found.dropped.add_metric([rpc], count)
        return found.all()


class _Families:
    """One scrape's families, empty until filled."""

    def __init__(self) -> None:
        self.by_state = GaugeMetricFamily(
            "modelplane_scheduler_models",
            "Models by the state of their latest version (the Scheduler API's ModelState).",
            labels=("state",),
        )
        self.loaded = GaugeMetricFamily(
            "modelmesh_models_loaded_total",
            "Models whose latest version is Available (at least one replica serves it), as ModelMesh names it.",
        )
        self.managed = GaugeMetricFamily(
            "modelmesh_models_managed_total", "Models the scheduler holds (loaded or not), as ModelMesh names it."
        )
        self.sessions = GaugeMetricFamily(
            "modelplane_scheduler_agent_sessions", "Agents connected now, by server.", labels=("server",)
        )
        self.outbox = GaugeMetricFamily(
            "modelplane_scheduler_agent_outbox_messages",
            "Messages queued for agents and not yet written to their streams, by server.",
            labels=("server",),
        )
        self.subscribers = GaugeMetricFamily(
            "modelplane_scheduler_status_subscribers",
            "Subscribers of each status hub (models, servers, pipelines, experiments, routes: the gateways).",
            labels=("hub",),
        )
        self.queue_max = GaugeMetricFamily(
            "modelplane_scheduler_status_subscriber_queue_max",
            "The most statuses one subscriber of the hub has waiting (coalesced per resource, bounded).",
            labels=("hub",),
        )
        self.lag = GaugeMetricFamily(
            "modelplane_scheduler_stream_lag_seconds",
            "The longest time a stream of this RPC has waited for its client to take a message (0: none waits).",
            labels=("rpc",),
        )
        self.dropped = CounterMetricFamily(
            "modelplane_scheduler_streams_dropped",
            "Streams dropped because their client took no message for --subscriber-lag seconds, by RPC.",
            labels=("rpc",),
        )

    def all(self) -> list[Metric]:
        return [
            self.by_state,
            self.loaded,
            self.managed,
            self.sessions,
            self.outbox,
            self.subscribers,
            self.queue_max,
            self.lag,
            self.dropped,
        ]
