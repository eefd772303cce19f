"""The status streams on the wire, against a real `modelplane scheduler` process: each status is serialised once for
every subscriber and sent as bytes (modelplane/event_hub.py), and a client must not be able to tell.

Every message of every subscription stream, read as raw bytes, is exactly what protobuf serialises the message it
parses to into (the bytes gRPC's generated serializer would have sent); a client built from the generated stubs,
subscribed at the same moment, receives the same messages in the same order; change events carry the model's
``modelDefn`` as Seldon's scheduler sends it (its Kafka model gateway reads ``dataflowSpec`` from it on delete),
equal to what ModelStatus answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from grpc import aio

from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.routing.v1 import routing_pb2_grpc as rpb_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.grpc_agent import FakeGrpcAgent
from tests.support.processes import SchedulerProcess, start_scheduler, stop_process
from tests.support.scheduler_client import AVAILABLE, Client, is_final, model_spec
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)  # a hang guard

SCHEDULER = "/seldon.mlops.scheduler.Scheduler/"
ROUTING = "/mlops.routing.v1.RoutingService/"


@dataclass
class Stream:
    """One subscription read twice at once: as raw bytes, and through the generated stub."""

    kind: type[Message]
    raw: list[bytes] = field(default_factory=list)
    parsed: list[Message] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def _collect(call: AsyncIterable[Any], into: list[Any]) -> None:
    async for message in call:
        into.append(message)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[SchedulerProcess]:
    process = start_scheduler(tmp_path, "--sync-grace=0.2")
    try:
        yield process
    finally:
        stop_process(process.process)


def _subscribe(
    channel: aio.Channel, path: str, request: Message, stub_call: Callable[[], Any], kind: type[Message]
) -> Stream:
    stream = Stream(kind)
    raw: aio.UnaryStreamMultiCallable[Message, bytes] = channel.unary_stream(
        path, request_serializer=type(request).SerializeToString, response_deserializer=None
    )
    stream.tasks.append(asyncio.create_task(_collect(raw(request), stream.raw)))
    stream.tasks.append(asyncio.create_task(_collect(stub_call(), stream.parsed)))
    return stream


def _route_key(route: rpb.WatchRoutesResponse) -> tuple[str, str]:
    kind = route.WhichOneof("route")
    return (kind, getattr(route, kind).name) if kind else ("snapshot", "")


KEYS: dict[type[Message], Callable[[Any], object]] = {
    pb.ModelStatusResponse: lambda status: status.modelName,
    pb.ServerStatusResponse: lambda status: (status.serverName, status.type),
    pb.PipelineStatusResponse: lambda status: status.pipelineName,
    pb.ExperimentStatusResponse: lambda status: status.experimentName,
    rpb.WatchRoutesResponse: _route_key,
}


def _last_per_key(messages: list[Any], key: Callable[[Any], object]) -> dict[object, Any]:
    return {key(message): message for message in messages}


def _without_timestamps(status: pb.ModelStatusResponse) -> pb.ModelStatusResponse:
    copy = pb.ModelStatusResponse()
    copy.CopyFrom(status)
    copy.ClearField("timestamp")
    for version in copy.versions:
        version.state.ClearField("lastChangeTimestamp")
        for replica in version.modelReplicaState.values():
            replica.ClearField("lastChangeTimestamp")
    return copy


async def test_every_subscription_sends_what_grpc_would_have_serialised(running: SchedulerProcess) -> None:
    client = Client(running.listen)
    agent = FakeGrpcAgent(running.agent_listen)
    await agent.start()
    raw_channel = aio.insecure_channel(running.listen)
    stub_channel = aio.insecure_channel(running.listen)
    scheduler = pb_grpc.SchedulerStub(stub_channel)
    routing = rpb_grpc.RoutingServiceStub(stub_channel)
    streams: list[Stream] = []
    try:
        requests: list[tuple[str, Message, Callable[[], Any], type[Message]]] = [
            (
                SCHEDULER + "SubscribeModelStatus",
                pb.ModelSubscriptionRequest(subscriberName="wire"),
                lambda: scheduler.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="wire-stub")),
                pb.ModelStatusResponse,
            ),
            (
                SCHEDULER + "SubscribeServerStatus",
                pb.ServerSubscriptionRequest(subscriberName="wire"),
                lambda: scheduler.SubscribeServerStatus(pb.ServerSubscriptionRequest(subscriberName="wire-stub")),
                pb.ServerStatusResponse,
            ),
            (
                SCHEDULER + "SubscribePipelineStatus",
                pb.PipelineSubscriptionRequest(subscriberName="wire"),
                lambda: scheduler.SubscribePipelineStatus(pb.PipelineSubscriptionRequest(subscriberName="wire-stub")),
                pb.PipelineStatusResponse,
            ),
            (
                SCHEDULER + "SubscribeExperimentStatus",
                pb.ExperimentSubscriptionRequest(subscriberName="wire"),
                lambda: scheduler.SubscribeExperimentStatus(
                    pb.ExperimentSubscriptionRequest(subscriberName="wire-stub")
                ),
                pb.ExperimentStatusResponse,
            ),
            (
                ROUTING + "WatchRoutes",
                rpb.WatchRoutesRequest(gateway_name="wire"),
                lambda: routing.WatchRoutes(rpb.WatchRoutesRequest(gateway_name="wire")),
                rpb.WatchRoutesResponse,
            ),
        ]
        # Subscribed before anything exists: both readers of a stream get only published messages, the same ones.
        for path, request, stub_call, kind in requests:
            streams.append(_subscribe(raw_channel, path, request, stub_call, kind))
        routes = streams[-1]
        await wait_for(lambda: len(routes.raw) >= 1 and len(routes.parsed) >= 1, 20, "both route snapshots")

        deep = model_spec("deep", bulk_kib=20, generation=3)
        deep.dataflowSpec.cleanTopicsOnDelete = True
        deep.modelSpec.storageConfig.CopyFrom(pb.StorageConfig(storageSecretName="artifact-store"))
        for model in (model_spec("iris"), deep, model_spec("wine")):
            await client.load(model)
        await client.load(model_spec("iris", uri="gs://models/iris-v2"))  # a new version
        await client.stub.LoadPipeline(
            pb.LoadPipelineRequest(pipeline=pb.Pipeline(name="flow", steps=[pb.PipelineStep(name="iris")])), timeout=20
        )
        experiment = pb.Experiment(
            name="ab", candidates=[pb.ExperimentCandidate(name=n, weight=1) for n in ("iris", "wine")]
        )
        await client.stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=20)
        for name in ("iris", "deep", "wine"):
            await client.wait_state(name, AVAILABLE)
        final = {status.modelName: status for status in await client.all_statuses()}
        await client.unload("wine")
        await client.wait_state("wine", None)

        models = streams[0]

        def seen_last(reader: list[Any], parse: Callable[[Any], pb.ModelStatusResponse]) -> bool:
            statuses = [parse(message) for message in reader]
            latest = {status.modelName: status for status in statuses}
            return (
                "wine" in latest
                and is_final(latest["wine"])
                and all(
                    name in latest and latest[name].versions and latest[name].versions[-1].state.state == AVAILABLE
                    for name in ("iris", "deep")
                )
            )

        await wait_for(
            lambda: seen_last(models.raw, pb.ModelStatusResponse.FromString) and seen_last(models.parsed, lambda m: m),
            30,
            "both model readers to have every model's final state",
        )

        # Each reader coalesces what it has not read yet (modelplane/event_hub.py), so two readers may get different
        # numbers of messages; once both have caught up they hold the same last message of every key.
        def caught_up(stream: Stream) -> bool:
            key = KEYS[stream.kind]
            raw = _last_per_key([stream.kind.FromString(data) for data in stream.raw], key)
            return raw == _last_per_key(stream.parsed, key)

        await wait_for(lambda: all(caught_up(stream) for stream in streams), 30, "both readers of every stream")
        for stream in streams:
            assert stream.raw, stream.kind.__name__
            for data in stream.raw:  # exactly the bytes protobuf makes of the message, so what gRPC would send
                assert stream.kind.FromString(data).SerializeToString() == data, stream.kind.__name__

        # Change events carry modelDefn, as Seldon's do, the same as ModelStatus answers.
        latest = {}
        for data in models.raw:
            status = pb.ModelStatusResponse.FromString(data)
            if status.modelName in ("iris", "deep") and status.versions[-1].state.state == AVAILABLE:
                latest[status.modelName] = status
        for name in ("iris", "deep"):
            assert latest[name].versions[-1].HasField("modelDefn")
            assert _without_timestamps(latest[name]) == _without_timestamps(final[name])
        assert latest["deep"].versions[-1].modelDefn.dataflowSpec.cleanTopicsOnDelete
        assert latest["deep"].versions[-1].kubernetesMeta == pb.KubernetesMeta(namespace="seldon-mesh", generation=3)
        assert latest["iris"].versions[-1].modelDefn.modelSpec.uri == "gs://models/iris-v2"
    finally:
        for stream in streams:
            for task in stream.tasks:
                task.cancel()
            await asyncio.gather(*stream.tasks, return_exceptions=True)
        await raw_channel.close()
        await stub_channel.close()
        await agent.close()
        await client.close()
