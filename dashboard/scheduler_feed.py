"""The scheduler's side of the board: its four status subscriptions (servers, models, pipelines, experiments) and
the routing table's experiments (their weights, which the Scheduler API's experiment status does not carry), each
followed on its own, reconnected with backoff when it fails.

On each (re)connect the kind is listed whole first (the one-shot status RPCs, which end), and what the board held
that the listing lacks is removed: what was deleted while the stream was down does not stay on the page. Then the
subscription's snapshot (equal views: no change sent) and its changes follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable
from typing import Any

import grpc
from grpc import aio

from dashboard.board_state import JsonView, Kind
from dashboard.live_board import LiveBoard
from dashboard.status_views import experiment_spec_view, experiment_view, model_view, pipeline_view, server_view, text
from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.routing.v1 import routing_pb2_grpc as rpb_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.auth.client_token import ClientToken
from modelplane.backoff import Backoff
from modelplane.transport import TransportSecurity, open_channel

log = logging.getLogger(__name__)

SUBSCRIBER = "modelplane-dashboard"
LIST_TIMEOUT_SECONDS = 30.0

ToView = Callable[[Any], tuple[str, JsonView | None]]


def _server(message: pb.ServerStatusResponse) -> tuple[str, JsonView | None]:
    return message.serverName, server_view(message)


def _model(message: pb.ModelStatusResponse) -> tuple[str, JsonView | None]:
    return message.modelName, model_view(message)


def _pipeline(message: pb.PipelineStatusResponse) -> tuple[str, JsonView | None]:
    return message.pipelineName, pipeline_view(message)


def _experiment(message: pb.ExperimentStatusResponse) -> tuple[str, JsonView | None]:
    return message.experimentName, experiment_view(message)


class SchedulerFeed:
    def __init__(
        self, board: LiveBoard, address: Address, security: TransportSecurity, token: ClientToken | None
    ) -> None:
        self._board = board
        self._address = address
        self._security = security
        self._token = token
        self._problems: dict[str, str] = {}  # stream -> why it is down
        self._streams = ("servers", "models", "pipelines", "experiments", "experiment routes")
        for stream in self._streams:
            self._problems[stream] = "connecting"
        self._show_source()

    async def run(self) -> None:
        """Follow every stream until cancelled."""
        async with open_channel(self._address, self._security, self._token) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            routes = rpb_grpc.RoutingServiceStub(channel)
            await asyncio.gather(
                self._follow(
                    "servers",
                    Kind.SERVER,
                    _server,
                    lambda: stub.ServerStatus(
                        pb.ServerStatusRequest(subscriberName=SUBSCRIBER), timeout=LIST_TIMEOUT_SECONDS
                    ),
                    lambda: stub.SubscribeServerStatus(pb.ServerSubscriptionRequest(subscriberName=SUBSCRIBER)),
                ),
                self._follow(
                    "models",
                    Kind.MODEL,
                    _model,
                    lambda: stub.ModelStatus(
                        pb.ModelStatusRequest(subscriberName=SUBSCRIBER), timeout=LIST_TIMEOUT_SECONDS
                    ),
                    lambda: stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=SUBSCRIBER)),
                ),
                self._follow(
                    "pipelines",
                    Kind.PIPELINE,
                    _pipeline,
                    lambda: stub.PipelineStatus(
                        pb.PipelineStatusRequest(subscriberName=SUBSCRIBER), timeout=LIST_TIMEOUT_SECONDS
                    ),
                    lambda: stub.SubscribePipelineStatus(pb.PipelineSubscriptionRequest(subscriberName=SUBSCRIBER)),
                ),
                self._follow(
                    "experiments",
                    Kind.EXPERIMENT,
                    _experiment,
                    lambda: stub.ExperimentStatus(
                        pb.ExperimentStatusRequest(subscriberName=SUBSCRIBER), timeout=LIST_TIMEOUT_SECONDS
                    ),
                    lambda: stub.SubscribeExperimentStatus(pb.ExperimentSubscriptionRequest(subscriberName=SUBSCRIBER)),
                ),
                self._follow_experiment_routes(routes),
            )

    async def _follow(
        self,
        stream: str,
        kind: Kind,
        to_view: ToView,
        listing: Callable[[], AsyncIterable[Any]],
        subscription: Callable[[], AsyncIterable[Any]],
    ) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                views: dict[str, JsonView] = {}
                async for message in listing():
                    name, view = to_view(message)
                    if view is not None:
                        views[text(name)] = view
                self._board.replace_all(kind, views)
                self._up(stream)
                backoff.reset()
                async for message in subscription():
                    name, view = to_view(message)
                    if view is None:
                        self._board.remove(kind, text(name))
                    else:
                        self._board.put(kind, text(name), view)
                self._down(stream, "the scheduler ended the stream")
            except aio.AioRpcError as error:
                self._down(stream, _describe(error))
            await asyncio.sleep(backoff.next_jittered())

    async def _follow_experiment_routes(self, routes: rpb_grpc.RoutingServiceAsyncStub) -> None:
        """The experiments of the routing table (their weights): its snapshot (up to the marker that ends it) replaces
        what the board held, then each change."""
        stream = "experiment routes"
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                snapshot: dict[str, JsonView] | None = {}
                async for message in routes.WatchRoutes(rpb.WatchRoutesRequest(gateway_name=SUBSCRIBER)):
                    if message.snapshot_complete and snapshot is not None:
                        self._board.replace_all(Kind.EXPERIMENT_SPEC, snapshot)
                        snapshot = None
                        self._up(stream)
                        backoff.reset()
                    if message.WhichOneof("route") != "experiment":
                        continue
                    route = message.experiment
                    name = text(route.name)
                    if snapshot is not None:
                        if not route.removed:
                            snapshot[name] = experiment_spec_view(route.experiment)
                    elif route.removed:
                        self._board.remove(Kind.EXPERIMENT_SPEC, name)
                    else:
                        self._board.put(Kind.EXPERIMENT_SPEC, name, experiment_spec_view(route.experiment))
                self._down(stream, "the scheduler ended the stream")
            except aio.AioRpcError as error:
                self._down(stream, _describe(error))
            await asyncio.sleep(backoff.next_jittered())

    def _up(self, stream: str) -> None:
        if self._problems.pop(stream, None) is not None:
            log.info("following the scheduler's %s", stream)
            self._show_source()

    def _down(self, stream: str, why: str) -> None:
        if self._problems.get(stream) != why:
            log.warning("the scheduler's %s stream is down: %s", stream, why)
            self._problems[stream] = why
            self._show_source()

    def _show_source(self) -> None:
        problems = [f"{stream}: {why}" for stream, why in sorted(self._problems.items())]
        self._board.put(
            Kind.SOURCE,
            "scheduler",
            {
                "name": "scheduler",
                "address": str(self._address),
                "ok": not problems,
                "detail": text("; ".join(problems)),
            },
        )


def _describe(error: aio.AioRpcError) -> str:
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach the scheduler ({error.details()})"
    return f"{code.name}: {error.details()}"
