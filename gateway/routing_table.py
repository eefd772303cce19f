"""The gateway's routing table: what the scheduler's WatchRoutes stream says is routable now.

A table is filled from one stream's snapshot and then kept current by its updates; on reconnect the
watcher fills a fresh table and swaps it in whole once the snapshot is complete, so a request never sees
a half-built table and a restarted gateway needs nothing but the stream. Domain code: no network here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.scheduler import scheduler_pb2 as pb

ROUTE_HEADER = "x-modelplane-route"  # sticky sessions: the candidate a request went to (see experiments)


@dataclass(frozen=True, slots=True)
class Endpoint:
    server_name: str
    replica_idx: int
    http_url: str
    grpc_target: str

    @property
    def key(self) -> str:
        return f"{self.server_name}/{self.replica_idx}"


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    # version -> endpoints serving it; iteration order is oldest first.
    versions: dict[int, tuple[Endpoint, ...]]

    def endpoints(self, version: int | None) -> tuple[Endpoint, ...]:
        """Where to send a request for ``version`` (None: the newest version that has replicas)."""
        if version is not None:
            return self.versions.get(version, ())
        if not self.versions:
            return ()
        return self.versions[max(self.versions)]


@dataclass(frozen=True, slots=True)
class PipelineRoute:
    name: str
    version: int
    uid: str
    spec: pb.Pipeline


@dataclass(slots=True)
class RoutingTable:
    models: dict[str, ModelRoute] = field(default_factory=dict)
    experiments: dict[str, pb.Experiment] = field(default_factory=dict)
    pipelines: dict[str, PipelineRoute] = field(default_factory=dict)
    # Default (baseline) model or pipeline name -> the experiment that takes its traffic.
    experiment_by_default: dict[tuple[int, str], str] = field(default_factory=dict)

    def apply(self, update: rpb.WatchRoutesResponse) -> str | None:
        """Apply one update; returns the kind applied ("model", "experiment", "pipeline") or None."""
        kind = update.WhichOneof("route")
        if kind == "model":
            self._apply_model(update.model)
        elif kind == "experiment":
            self._apply_experiment(update.experiment)
        elif kind == "pipeline":
            self._apply_pipeline(update.pipeline)
        return kind

    def _apply_model(self, route: rpb.ModelRoute) -> None:
        if route.removed:
            self.models.pop(route.name, None)
            return
        self.models[route.name] = ModelRoute(
            route.name,
            {
                v.version: tuple(Endpoint(e.server_name, e.replica_idx, e.http_url, e.grpc_target) for e in v.endpoints)
                for v in sorted(route.versions, key=lambda v: v.version)
            },
        )

    def _apply_experiment(self, route: rpb.ExperimentRoute) -> None:
        old = self.experiments.pop(route.name, None)
        if old is not None and old.HasField("default"):
            self.experiment_by_default.pop((old.resourceType, old.default), None)
        if route.removed:
            return
        self.experiments[route.name] = route.experiment
        if route.experiment.HasField("default"):
            self.experiment_by_default[(route.experiment.resourceType, route.experiment.default)] = route.name

    def _apply_pipeline(self, route: rpb.PipelineRoute) -> None:
        if route.removed:
            self.pipelines.pop(route.name, None)
        else:
            self.pipelines[route.name] = PipelineRoute(route.name, route.version, route.uid, route.pipeline)

    def experiment_for(self, name: str, resource_type: int, *, via_default: bool = True) -> pb.Experiment | None:
        """The experiment a request to ``name`` goes through: the experiment called ``name`` (of that
        resource type), else the one whose default (baseline) is ``name``."""
        experiment = self.experiments.get(name)
        if experiment is not None and experiment.resourceType == resource_type:
            return experiment
        if via_default:
            owner = self.experiment_by_default.get((resource_type, name))
            if owner is not None:
                return self.experiments.get(owner)
        return None

    def serves(self, name: str, resource_type: int) -> bool:
        """Whether a request for ``name`` can be answered now: a model with replicas for its newest version,
        or a pipeline whose every step's model has them."""
        if resource_type == pb.PIPELINE:
            return self.pipeline_models_ready(name)
        route = self.models.get(name)
        return route is not None and bool(route.endpoints(None))

    def pipeline_models_ready(self, name: str) -> bool:
        route = self.pipelines.get(name)
        if route is None:
            return False
        # A step is named after the model it calls (Seldon's rule; PipelineStep has no separate model field).
        return all(step.name in self.models and self.models[step.name].endpoints(None) for step in route.spec.steps)


Listener = Callable[[RoutingTable], None]
