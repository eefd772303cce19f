"""The agent's Prometheus metrics, on a registry of its own, served as /metrics on its inference proxy's HTTP port.

Named as ModelMesh names them where they mean the same (ModelMesh is a per-pod model cache too): load and unload
times, the wait before a load starts, evictions and the age of what was evicted, load and unload failures, and the
instance's models, capacity, use and least recently used model. ModelMesh times in milliseconds, so these do. What
ModelMesh has no name for is ``modelplane_agent_*``: the artifact cache's bytes, the server's restarts and whether
it serves.

prometheus_client appends ``_total`` to counters: ModelMesh's ``modelmesh_loadmodel_failure`` reads
``modelmesh_loadmodel_failure_total`` here. Gauges are read from the model manager when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.held_models import HeldModel

# Milliseconds, as ModelMesh's: a small model loads in ~60 ms on MLServer, a first load (imports) in seconds, a large
# one in minutes.
LOAD_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 180000, 600000)
AGE_BUCKETS_MS = (1000, 10_000, 60_000, 300_000, 1_800_000, 3_600_000, 21_600_000, 86_400_000, 604_800_000)


class AgentMetrics:
    """What the agent times and counts as it happens; :meth:`watch` adds what it reads at each scrape."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.load_ms = Histogram(
            "modelmesh_loadmodel_milliseconds",
            "Time taken to load a model: fetching its artifact, evicting to make room and the server's load call.",
            buckets=LOAD_BUCKETS_MS,
            registry=self.registry,
        )
        self.unload_ms = Histogram(
            "modelmesh_unloadmodel_milliseconds",
            "Time taken to unload a model from the server and release its files.",
            buckets=LOAD_BUCKETS_MS,
            registry=self.registry,
        )
        self.queue_delay_ms = Histogram(
            "modelmesh_loading_queue_delay_milliseconds",
            "Time a load or unload waited behind another operation on the same model before it started.",
            buckets=LOAD_BUCKETS_MS,
            registry=self.registry,
        )
        self.cache_miss_ms = Histogram(
            "modelmesh_cache_miss_milliseconds",
            "Time an inference request waited for its model, evicted earlier, to be loaded again (a cache miss).",
            buckets=LOAD_BUCKETS_MS,
            registry=self.registry,
        )
        self.load_failures = Counter(
            "modelmesh_loadmodel_failure",
            "Model loads that failed (any reason, memory included).",
            registry=self.registry,
        )
        self.unload_failures = Counter(
            "modelmesh_unloadmodel_failure", "Model unloads that failed.", registry=self.registry
        )
        self.evictions = Counter(
            "modelmesh_model_evicted",
            "Models taken off the server (least recently used) to make room for another.",
            registry=self.registry,
        )
        self.age_at_eviction_ms = Histogram(
            "modelmesh_age_at_eviction_milliseconds",
            "Time since an evicted model was last used, when it was evicted.",
            buckets=AGE_BUCKETS_MS,
            registry=self.registry,
        )

    def watch(self, held: HeldState) -> None:
        """Report ``held``'s models, memory, cache and server at each scrape."""
        self.registry.register(_AgentState(held))


@dataclass(frozen=True, slots=True)
class HeldState:
    """What a scrape reads (agent/process.py wires the model manager, the artifact store and the server watch)."""

    held_models: Callable[[], Iterable[HeldModel]]
    capacity_bytes: Callable[[], int]
    cache_bytes: Callable[[], int]
    server_restarts: Callable[[], int]
    serving: Callable[[], bool]


class _AgentState(Collector):
    def __init__(self, held: HeldState) -> None:
        self._held = held

    def describe(self) -> Iterable[Metric]:
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        found = _Families()
        models = list(self._held.held_models())
        on_server = [m for m in models if m.on_server]
        found.instance_models.add_metric([], len(on_server))
        found.managed.add_metric([], len(models))
        found.capacity.add_metric([], self._held.capacity_bytes())
        found.used.add_metric([], sum(m.memory for m in on_server))
        if on_server:
            now_monotonic, now_wall = time.monotonic(), time.time()
            oldest = min(m.last_used for m in on_server)
            found.lru_age.add_metric([], max(0.0, now_monotonic - oldest))
            found.lru_time.add_metric([], now_wall - max(0.0, now_monotonic - oldest))
        found.cache.add_metric([], self._held.cache_bytes())
        found.restarts.add_metric([], self._held.server_restarts())
        found.serving.add_metric([], 1 if self._held.serving() else 0)
        return found.all()


class _Families:
    def __init__(self) -> None:
        self.instance_models = GaugeMetricFamily(
            "modelmesh_instance_models_total", "Model copies loaded on this replica's server now."
        )
        self.managed = GaugeMetricFamily(
            "modelplane_agent_models_registered",
            "Model versions this agent holds for the scheduler, evicted ones (loaded again on use) included.",
        )
        self.capacity = GaugeMetricFamily(
            "modelmesh_instance_capacity_bytes", "Memory the replica's server may give to models (--memory)."
        )
        self.used = GaugeMetricFamily(
            "modelmesh_instance_used_bytes", "Memory of the models loaded on the server now (the scheduler's formula)."
        )
        self.lru_time = GaugeMetricFamily(
            "modelmesh_instance_lru_seconds",
            "When the least recently used model on the server was last used (seconds since the epoch); absent when "
            "none is loaded.",
        )
        self.lru_age = GaugeMetricFamily(
            "modelmesh_instance_lru_age_seconds",
            "How long ago the least recently used model on the server was last used; absent when none is loaded.",
        )
        self.cache = GaugeMetricFamily(
            "modelplane_agent_artifact_cache_bytes",
            "Bytes the artifact cache holds on disk, fetches in progress included (limit: --max-cache-disk).",
        )
        self.restarts = CounterMetricFamily(
            "modelplane_agent_server_restarts", "Times this agent started its (launched) inference server again."
        )
        self.serving = GaugeMetricFamily(
            "modelplane_agent_server_serving", "1 while the inference server serves, 0 while it is down or restarting."
        )

    def all(self) -> list[Metric]:
        return [
            self.instance_models,
            self.managed,
            self.capacity,
            self.used,
            self.lru_time,
            self.lru_age,
            self.cache,
            self.restarts,
            self.serving,
        ]
