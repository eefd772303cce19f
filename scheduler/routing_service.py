"""modelplane's RoutingService: where models are served now (proto/mlops/routing/v1/routing.proto)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from generated.mlops.routing.v1 import routing_pb2 as pb
from generated.mlops.routing.v1 import routing_pb2_grpc as pb_grpc
from modelplane.grpc_handlers import add_with_raw_responses
from modelplane.spec.names import check_name
from modelplane.stream_watchdog import StreamWatchdog
from scheduler import status_codes
from scheduler.core import SchedulerCore

Context = aio.ServicerContext[Any, Any]


class RoutingService(pb_grpc.RoutingServiceServicer):
    def __init__(self, core: SchedulerCore, streams: StreamWatchdog) -> None:
        self.core = core
        self.streams = streams  # WatchRoutes goes through it (the subscriber lag)

    def add_to(self, server: aio.Server) -> None:
        """Serve this on ``server``; WatchRoutes sends each route as the bytes it was serialised to once, for every
        gateway (the same bytes gRPC would have made of it)."""
        add_with_raw_responses(pb_grpc.add_RoutingServiceServicer_to_server, self, server, ["WatchRoutes"])

    async def ModelEndpoints(self, request: pb.ModelEndpointsRequest, context: Context) -> pb.ModelEndpointsResponse:
        async def call() -> tuple[int, list[pb.ModelEndpoint]]:
            return self.core.model_endpoints(request.model_name)

        version, endpoints = await status_codes.unary(context, call)
        return pb.ModelEndpointsResponse(model_name=request.model_name, version=version, endpoints=endpoints)

    async def WatchRoutes(  # type: ignore[override] # serialised already (add_to)
        self, request: pb.WatchRoutesRequest, context: Context
    ) -> AsyncIterator[bytes]:
        gateway = _gateway(request.gateway_name)
        async with self.core.watch_routes(gateway) as subscription:
            async for update in status_codes.subscription(
                context, subscription, self.streams, rpc="WatchRoutes", subscriber=gateway
            ):
                yield update

    async def ExperimentRouted(
        self, request: pb.ExperimentRoutedRequest, context: Context
    ) -> pb.ExperimentRoutedResponse:
        async def call() -> None:
            # Field limits are checked before this runs (scheduler/request_limits.py); the reason, a gateway's
            # words, is bounded where it is stored, never refused.
            check_name(request.experiment_name, "experiment")
            self.core.record_experiment_routed(
                request.experiment_name, _gateway(request.gateway_name), request.active, request.reason
            )

        await status_codes.unary(context, call)
        return pb.ExperimentRoutedResponse()


def _gateway(name: str) -> str:
    """The name a gateway's streams and acknowledgements are filed under (the same in both RPCs); its length and
    characters are checked before the handler runs (modelplane/spec/limits.py, SUBSCRIBER)."""
    return name or "gateway"
