"""The scheduler's status streams: one event hub per kind of status, and the fan-out of what a change touched.

Status messages are built only for subscribers: a new one starts from a fresh snapshot anyway (see EventHub), so
nothing is rendered while nobody watches. Each subscription renders lazily, as its subscriber reads: one that
reads nothing holds no copy of the statuses. A published status is built once and serialised once, for every
subscriber (the hubs' ``encode``; the streams send the bytes as they are, scheduler/scheduler_service.py).
"""

from __future__ import annotations

from google.protobuf.message import Message

from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.event_hub import EventHub, Subscription
from modelplane.spec import limits
from scheduler import route_messages, status_messages
from scheduler.experiments import ExperimentRegistry
from scheduler.models.cluster import Cluster
from scheduler.models.cluster_state import Touched
from scheduler.pipelines import PipelineRecord, PipelineRegistry
from scheduler.pipelines import status_response as pipeline_status_response
from scheduler.route_messages import RouteKey

ServerKey = tuple[str, int]  # (server name, response type): status updates and scaling requests coalesce apart


def most_status_keys(max_models: int) -> int:
    """The most keys a status stream's state can have within the limits: every model, every server's status and
    scaling request (a ServerKey each), every pipeline and running experiment, and the routing table's
    end-of-snapshot marker. Every hub's bound on published values pending per subscriber: a subscriber that
    has all of them changed before it reads one still fits (modelplane/event_hub.py says what the bound is for)."""
    return max_models + 2 * limits.MAX_SERVERS + limits.MAX_PIPELINES + limits.MAX_EXPERIMENTS + 1


def wire_bytes(message: Message) -> bytes:
    """A status as gRPC would send it: the generated services serialise every message with ``SerializeToString()``
    and its defaults, so a stream that sends these bytes sends exactly what it would have sent the message as."""
    return message.SerializeToString()


class Publisher:
    """The five status hubs (models, servers, pipelines, experiments, the gateways' routing table) over the state
    they render: the cluster, the pipelines and the experiments, which the façade changes and then tells this
    what it touched."""

    def __init__(
        self, cluster: Cluster, pipelines: PipelineRegistry, experiments: ExperimentRegistry, max_models: int
    ) -> None:
        self._cluster = cluster
        self._pipelines = pipelines
        self._experiments = experiments
        bound = most_status_keys(max_models)
        # Each published status is serialised once, by the first subscriber stream that sends it, for all of them.
        self.models_hub: EventHub[str, pb.ModelStatusResponse] = EventHub(bound, encode=wire_bytes)
        self.servers_hub: EventHub[ServerKey, pb.ServerStatusResponse] = EventHub(bound, encode=wire_bytes)
        self.pipelines_hub: EventHub[str, pb.PipelineStatusResponse] = EventHub(bound, encode=wire_bytes)
        self.experiments_hub: EventHub[str, pb.ExperimentStatusResponse] = EventHub(bound, encode=wire_bytes)
        # The routing table for gateways (WatchRoutes): one coalescing key per model, experiment, pipeline.
        self.routes_hub: EventHub[RouteKey, rpb.WatchRoutesResponse] = EventHub(bound, encode=wire_bytes)

    def close(self) -> None:
        """End every status stream."""
        self.models_hub.close()
        self.servers_hub.close()
        self.experiments_hub.close()
        self.pipelines_hub.close()
        self.routes_hub.close()

    # ----------------------------------------------------------------- subscriptions

    def subscribe_models(self, subscriber: str) -> Subscription[str, pb.ModelStatusResponse]:
        """Every model's status, then changes; but a model restored at start-up whose state no replica has reported
        yet (``Cluster.unreported``) is left out of the snapshot: it is published once its state is known (its
        replica's agent reports it: one status, Available) or at its first reconcile, once the synchroniser has
        stopped waiting (models/cluster_state.py's docstring). A stream opened at once after a restart would
        otherwise get each model twice, first saying only that it is not known yet (bench/README.md)."""
        models = self._cluster.models
        unreported = self._cluster.unreported

        def render(name: str) -> pb.ModelStatusResponse | None:
            record = models.get(name)
            if record is None or name in unreported:
                return None
            return status_messages.model_status(record)

        return self.models_hub.subscribe(subscriber, lambda: list(models), render)

    def subscribe_servers(self, subscriber: str) -> Subscription[ServerKey, pb.ServerStatusResponse]:
        servers = self._cluster.servers

        def render(key: ServerKey) -> pb.ServerStatusResponse | None:
            server = servers.get(key[0])
            return status_messages.server_status(server) if server is not None else None

        update = pb.ServerStatusResponse.StatusUpdate
        return self.servers_hub.subscribe(subscriber, lambda: [(n, update) for n in servers], render)

    def subscribe_pipelines(self, subscriber: str) -> Subscription[str, pb.PipelineStatusResponse]:
        records = self._pipelines.records

        def render(name: str) -> pb.PipelineStatusResponse | None:
            record = records.get(name)
            return pipeline_status_response(record) if record is not None else None

        return self.pipelines_hub.subscribe(subscriber, lambda: sorted(records), render)

    def subscribe_experiments(self, subscriber: str) -> Subscription[str, pb.ExperimentStatusResponse]:
        records = self._experiments.records

        def render(name: str) -> pb.ExperimentStatusResponse | None:
            record = records.get(name)
            return record.to_status() if record is not None else None

        return self.experiments_hub.subscribe(subscriber, lambda: sorted(records), render)

    def subscribe_routes(self, subscriber: str) -> Subscription[RouteKey, rpb.WatchRoutesResponse]:
        """Every model, experiment and pipeline route, then the snapshot-complete marker, then changes."""
        cluster, experiments, pipelines = self._cluster, self._experiments, self._pipelines

        def keys() -> list[RouteKey]:
            routes: list[RouteKey] = [("model", n) for n, r in cluster.models.items() if not r.deleted]
            routes += [("experiment", n) for n, r in experiments.records.items() if r.running]
            routes += [("pipeline", n) for n, r in pipelines.records.items() if not r.deleted]
            return [*routes, route_messages.SNAPSHOT_COMPLETE_KEY]

        def render(key: RouteKey) -> rpb.WatchRoutesResponse:
            kind, name = key
            if kind == "model":
                return route_messages.model_route(name, cluster.models.get(name), cluster.servers)
            if kind == "experiment":
                return route_messages.experiment_route(name, experiments.records.get(name))
            if kind == "pipeline":
                return route_messages.pipeline_route(name, pipelines.records.get(name))
            return route_messages.SNAPSHOT_COMPLETE

        return self.routes_hub.subscribe(subscriber, keys, render)

    # ----------------------------------------------------------------- fan-out

    def publish_touched(self, touched: Touched) -> None:
        """Publish the statuses, routes and scaling requests of what one Cluster change touched."""
        cluster = self._cluster
        for name in touched.models if self.models_hub.subscriber_count else ():
            record = cluster.models.get(name) or touched.removed.get(name)
            status = status_messages.model_status(record) if record else status_messages.removed_model_status(name)
            self.models_hub.publish(name, status)
        for name in touched.models if self.routes_hub.subscriber_count else ():
            route = route_messages.model_route(name, cluster.models.get(name), cluster.servers)
            self.routes_hub.publish(("model", name), route)
        for name in touched.servers if self.servers_hub.subscriber_count else ():
            server = cluster.servers.get(name)
            if server is not None:
                self.servers_hub.publish(
                    (name, pb.ServerStatusResponse.StatusUpdate), status_messages.server_status(server)
                )
        for name, replicas in touched.scaling.items():
            server = cluster.servers.get(name)
            if server is not None:
                request = status_messages.scaling_request(server, replicas)
                self.servers_hub.publish((name, pb.ServerStatusResponse.ScalingRequest), request)

    def publish_pipelines(self, changed: set[str], removed: dict[str, PipelineRecord]) -> None:
        """Publish the routes and statuses of the pipelines in ``changed``; ``removed`` are forgotten already."""
        if self.routes_hub.subscriber_count:
            for name in changed:
                self.routes_hub.publish(
                    ("pipeline", name), route_messages.pipeline_route(name, self._pipelines.records.get(name))
                )
        if self.pipelines_hub.subscriber_count:
            for name in changed:
                if name in removed:
                    self.pipelines_hub.publish(name, pipeline_status_response(removed[name]))
                elif name in self._pipelines.records:
                    for status in self._pipelines.status(name):
                        self.pipelines_hub.publish(name, status)

    def publish_experiments(self, names: set[str], *, routes: bool = True) -> None:
        """Publish the statuses (and, unless ``routes`` is False, the routes) of the experiments in ``names``."""
        if routes and self.routes_hub.subscriber_count:
            for name in names:
                self.routes_hub.publish(
                    ("experiment", name), route_messages.experiment_route(name, self._experiments.records.get(name))
                )
        if not self.experiments_hub.subscriber_count:
            return
        for name in names:
            for status in self._experiments.status(name):
                self.experiments_hub.publish(name, status)
