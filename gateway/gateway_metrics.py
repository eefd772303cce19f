"""The gateway's Prometheus metrics, on a registry of its own (modelplane/metrics_http.py serves it on /metrics).

The names and labels of the counters that were here before prometheus_client stay as they were:
``modelplane_gateway_requests_total{kind,name,route,code}``; the dashboard reads an experiment's traffic share from
``modelplane_gateway_experiment_routes_total{experiment,route}`` (what the experiment itself sent where). Label
values are model, pipeline, experiment and replica names only: never a secret, and never a name a caller made up
(the router counts unknown models under no label of theirs).

Label children are kept in small dicts keyed by their values, so a request costs a dict lookup and an increment,
not prometheus_client's label validation every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Seconds; inference through the gateway takes from ~1 ms (a small model on a local replica) to tens of seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Bounds the label children cached here (and so memory): past it, children are looked up without caching.
MAX_CACHED_CHILDREN = 10_000


class GatewayMetrics:
    """Everything the gateway counts and times. ``registry`` is this gateway's own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "modelplane_gateway_requests",
            "Inference requests answered, by kind (model or pipeline), name asked for, route taken and HTTP status.",
            ("kind", "name", "route", "code"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "modelplane_gateway_request_duration_seconds",
            "Time from routing an inference request to its answer, by kind, name asked for, route taken and status.",
            ("kind", "name", "route", "code"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._experiment_routes = Counter(
            "modelplane_gateway_experiment_routes",
            "Requests an experiment sent to each of its candidates (the draw, counted before the answer).",
            ("experiment", "route"),
            registry=self.registry,
        )
        self._mirrors = Counter(
            "modelplane_gateway_mirror_requests",
            "Mirrored copies sent, by experiment, mirror and outcome.",
            ("experiment", "mirror", "outcome"),
            registry=self.registry,
        )
        self._retries = Counter(
            "modelplane_gateway_replica_retries",
            "Requests retried on another replica, by model.",
            ("model",),
            registry=self.registry,
        )
        self._ejections = Counter(
            "modelplane_gateway_replica_ejections",
            "Times a replica was skipped for a while (no connection to it, or its proxy said its server is down).",
            ("replica",),
            registry=self.registry,
        )
        self._pipeline_steps = Histogram(
            "modelplane_gateway_pipeline_step_duration_seconds",
            "Time one pipeline step's model call took, by pipeline, step and outcome (ok or error).",
            ("pipeline", "step", "outcome"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[object, ...], tuple[Counter, Histogram]] = {}
        self._single: dict[tuple[object, ...], Counter | Histogram] = {}

    def request(self, kind: str, name: str, route: str, code: int, seconds: float) -> None:
        """One inference request answered with HTTP status ``code`` after ``seconds``."""
        key = (kind, name, route, code)
        pair = self._children.get(key)
        if pair is None:
            labels = (kind, name, route, str(code))
            pair = (self._requests.labels(*labels), self._latency.labels(*labels))
            if len(self._children) < MAX_CACHED_CHILDREN:
                self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def experiment_route(self, experiment: str, route: str) -> None:
        self._one(self._experiment_routes, experiment, route).inc()  # type: ignore[union-attr]

    def mirror(self, experiment: str, mirror: str, outcome: str) -> None:
        self._one(self._mirrors, experiment, mirror, outcome).inc()  # type: ignore[union-attr]

    def retry(self, model: str) -> None:
        self._one(self._retries, model).inc()  # type: ignore[union-attr]

    def ejection(self, replica: str) -> None:
        self._one(self._ejections, replica).inc()  # type: ignore[union-attr]

    def pipeline_step(self, pipeline: str, step: str, ok: bool, seconds: float) -> None:
        self._one(self._pipeline_steps, pipeline, step, "ok" if ok else "error").observe(seconds)  # type: ignore[union-attr]

    def _one(self, metric: Counter | Histogram, *values: str) -> Counter | Histogram:
        key = (id(metric), *values)
        child = self._single.get(key)
        if child is None:
            child = metric.labels(*values)
            if len(self._single) < MAX_CACHED_CHILDREN:
                self._single[key] = child
        return child

    def watch_kafka_lag(self, lag: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        """Report ``lag()`` (records fetched but not yet answered, per input topic and partition) at each scrape."""
        self.registry.register(_KafkaLag(lag))


class _KafkaLag(Collector):
    """Read at scrape time only: nothing on the path of a record."""

    def __init__(self, lag: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        self._lag = lag

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for (topic, partition), records in sorted(self._lag().items()):
            family.add_metric([topic, str(partition)], records)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "modelplane_gateway_kafka_consumer_lag",
            "Records on an input partition not yet answered: its high watermark minus the next offset to commit.",
            labels=("topic", "partition"),
        )
