"""The routing table gateways serve from, as WatchRoutes messages (proto/mlops/routing/v1/routing.proto).

Each message is the whole current route of one resource, so the hub can coalesce them like statuses. A route
that cannot be rendered is logged and sent as "not routable" (no versions, or removed), never as an exception
that would end the stream or the change that published it (scheduler/status_guard.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from generated.mlops.routing.v1 import routing_pb2 as rpb
from modelplane.spec.limits import MAX_ROUTE_BYTES
from scheduler.experiments import ExperimentRecord
from scheduler.models.model_records import ModelRecord, ModelVersion
from scheduler.models.replica_state import SERVING
from scheduler.models.server_records import ServerRecord
from scheduler.pipelines import PipelineRecord, PipelineStatus
from scheduler.status_guard import guarded, safe_name

RouteKey = tuple[str, str]  # ("model" | "experiment" | "pipeline", name)
SNAPSHOT_COMPLETE_KEY: RouteKey = ("snapshot", "")
SNAPSHOT_COMPLETE = rpb.WatchRoutesResponse(snapshot_complete=True)


def serving_endpoints(version: ModelVersion, servers: Mapping[str, ServerRecord]) -> list[rpb.ModelEndpoint]:
    """The replicas that serve ``version`` now, in a stable order."""
    endpoints = []
    for (server_name, index), assignment in sorted(version.replicas.items()):
        server = servers.get(server_name)
        replica = server.replicas.get(index) if server is not None else None
        if assignment.state in SERVING and replica is not None:
            endpoints.append(
                rpb.ModelEndpoint(
                    server_name=server_name,
                    replica_idx=index,
                    http_url=replica.http_url,
                    grpc_target=replica.grpc_target,
                )
            )
    return endpoints


def model_route(name: str, record: ModelRecord | None, servers: Mapping[str, ServerRecord]) -> rpb.WatchRoutesResponse:
    return guarded(
        "model route",
        name,
        lambda: _model_route(name, record, servers),
        lambda _reason: rpb.WatchRoutesResponse(model=rpb.ModelRoute(name=safe_name(name))),
        MAX_ROUTE_BYTES,
    )


def _model_route(name: str, record: ModelRecord | None, servers: Mapping[str, ServerRecord]) -> rpb.WatchRoutesResponse:
    if record is None or record.deleted:
        return rpb.WatchRoutesResponse(model=rpb.ModelRoute(name=name, removed=True))
    versions = []
    for version in record.versions:
        endpoints = serving_endpoints(version, servers)
        if endpoints:
            versions.append(rpb.ModelVersionRoute(version=version.version, endpoints=endpoints))
    return rpb.WatchRoutesResponse(model=rpb.ModelRoute(name=name, versions=versions))


def experiment_route(name: str, record: ExperimentRecord | None) -> rpb.WatchRoutesResponse:
    return guarded(
        "experiment route",
        name,
        lambda: _experiment_route(name, record),
        lambda _reason: rpb.WatchRoutesResponse(experiment=rpb.ExperimentRoute(name=safe_name(name), removed=True)),
        MAX_ROUTE_BYTES,
    )


def _experiment_route(name: str, record: ExperimentRecord | None) -> rpb.WatchRoutesResponse:
    if record is None or record.stopped:
        return rpb.WatchRoutesResponse(experiment=rpb.ExperimentRoute(name=name, removed=True))
    return rpb.WatchRoutesResponse(experiment=rpb.ExperimentRoute(name=name, experiment=record.spec))


def pipeline_route(name: str, record: PipelineRecord | None) -> rpb.WatchRoutesResponse:
    """The version gateways should execute: the newest Ready one, else the newest still live."""
    return guarded(
        "pipeline route",
        name,
        lambda: _pipeline_route(name, record),
        lambda _reason: rpb.WatchRoutesResponse(pipeline=rpb.PipelineRoute(name=safe_name(name), removed=True)),
        MAX_ROUTE_BYTES,
    )


def _pipeline_route(name: str, record: PipelineRecord | None) -> rpb.WatchRoutesResponse:
    if record is None or record.deleted:
        return rpb.WatchRoutesResponse(pipeline=rpb.PipelineRoute(name=name, removed=True))
    live = [v for v in record.versions if not v.ending]
    ready = [v for v in live if v.status == PipelineStatus.READY]
    chosen = (ready or live or [record.latest])[-1]
    # The message constructor copies the spec: the route never aliases the record.
    return rpb.WatchRoutesResponse(
        pipeline=rpb.PipelineRoute(name=name, version=chosen.version, uid=chosen.uid, pipeline=chosen.spec)
    )
