"""The relay's Prometheus metrics, read from its caches, feeds and servicer at scrape time only (nothing on the path
of a status). On a registry of its own (modelplane/metrics_http.py serves it at --metrics-listen).

Per kind of status (model, server, pipeline, experiment): whether the relay serves it now (``current``: it holds a
complete snapshot and follows the scheduler), the statuses it holds, the statuses received from the scheduler and
the subscriptions to it attempted since start (1 + reconnects), the streams served now and the statuses
forgotten because the scheduler no longer lists them; for the whole relay,
the subscribers refused because --max-subscribers were served and the streams dropped for not reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelplane.stream_watchdog import StreamWatchdog
from status_relay.relay_service import RelayService
from status_relay.status_cache import CacheState
from status_relay.upstream import UpstreamFeed


class RelayMetrics(Collector):
    def __init__(self, feeds: Sequence[UpstreamFeed], service: RelayService, streams: StreamWatchdog) -> None:
        self._feeds = feeds
        self._service = service
        self._streams = streams
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        current, held, received, attempts, subscribers, refused, dropped, forgotten = families
        for feed in self._feeds:
            cache = feed.cache
            kind = [cache.kind.name]
            current.add_metric(kind, 1 if cache.state is CacheState.CURRENT else 0)
            held.add_metric(kind, len(cache))
            received.add_metric(kind, cache.changes)
            attempts.add_metric(kind, feed.attempts)
            subscribers.add_metric(kind, cache.hub.subscriber_count)
            forgotten.add_metric(kind, cache.forgotten)
        refused.add_metric([], self._service.refused_full)
        for rpc, count in sorted(self._streams.dropped.items()):
            dropped.add_metric([rpc], count)
        return list(families)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            GaugeMetricFamily(
                "modelplane_status_relay_current",
                "1 while the relay holds a complete snapshot of the kind and follows the scheduler; 0 while it "
                "connects (it refuses subscribers then)",
                labels=("kind",),
            ),
            GaugeMetricFamily("modelplane_status_relay_statuses", "Statuses the relay holds", labels=("kind",)),
            CounterMetricFamily(
                "modelplane_status_relay_received", "Statuses received from the scheduler", labels=("kind",)
            ),
            CounterMetricFamily(
                "modelplane_status_relay_upstream_attempts",
                "Subscriptions to the scheduler attempted (the first and every reconnect)",
                labels=("kind",),
            ),
            GaugeMetricFamily("modelplane_status_relay_subscribers", "Streams served now", labels=("kind",)),
            CounterMetricFamily(
                "modelplane_status_relay_refused_full", "Subscribers refused because --max-subscribers were served"
            ),
            CounterMetricFamily(
                "modelplane_status_relay_dropped",
                "Streams dropped because their client took no message for --subscriber-lag",
                labels=("rpc",),
            ),
            CounterMetricFamily(
                "modelplane_status_relay_forgotten",
                "Statuses dropped because the scheduler no longer lists their key (a server or experiment it forgot)",
                labels=("kind",),
            ),
        )
