"""The largest state the scheduler accepts streams whole, over real gRPC, to every kind of subscriber.

A status stream starts with a snapshot of the current state; however many models, servers, pipelines and
experiments the scheduler holds within its limits (modelplane/spec/limits.py), that snapshot is sent whole, and a
subscriber that has every one of them changed before it reads stays subscribed. Waits are hang guards.
"""

from __future__ import annotations

import asyncio

import pytest

from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.routing.v1 import routing_pb2_grpc as rpb_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.spec import limits
from tests.support.scheduler_in_process import in_process_scheduler

pytestmark = pytest.mark.timeout(900)  # a hang guard: 100,000 models are loaded and streamed twice

HANG_GUARD = 600.0


def _model(name: str) -> pb.Model:
    return pb.Model(
        meta=pb.MetaData(name=name),
        modelSpec=pb.ModelSpec(uri="gs://models/iris", requirements=["sklearn"], memoryBytes=1024),
        deploymentSpec=pb.DeploymentSpec(replicas=1),
    )


async def test_the_most_models_stream_whole_to_gateways_and_status_subscribers() -> None:
    names = [f"model-{index}" for index in range(limits.MAX_MODELS)]
    async with in_process_scheduler() as scheduler:
        channel = scheduler.channel()
        stub = pb_grpc.SchedulerStub(channel)
        # A pipeline and an experiment over the Scheduler API, then as many models as the scheduler takes. The models
        # go straight to the core (the servicer's next step): 100,000 LoadModel calls would take minutes.
        pipeline = pb.Pipeline(name="flow", steps=[pb.PipelineStep(name=names[0])])
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline), timeout=30)
        candidates = [pb.ExperimentCandidate(name=name, weight=1) for name in names[:2]]
        experiment = pb.Experiment(name="ab", candidates=candidates, resourceType=pb.MODEL)
        await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=30)
        for name in names:
            await scheduler.core.load_model(_model(name))

        try:
            async with asyncio.timeout(HANG_GUARD):
                routed: list[str] = []
                routes = rpb_grpc.RoutingServiceStub(channel).WatchRoutes(rpb.WatchRoutesRequest(gateway_name="gw"))
                async for update in routes:
                    if update.snapshot_complete:
                        break
                    kind = update.WhichOneof("route")
                    assert kind is not None, update
                    routed.append(f"{kind}/{getattr(update, kind).name}")
                routes.cancel()

                statuses = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="all-models"))
                reported: list[str] = []
                async for status in statuses:
                    reported.append(status.modelName)
                    if len(reported) == len(names):
                        break
                statuses.cancel()
        finally:
            await channel.close()

        # Subscribers that read nothing while every model changes: each holds a value per model, within its bound.
        core = scheduler.core
        async with core.subscribe_models("slow-models") as slow_models, core.subscribe_routes("slow-routes") as slow:
            for name in names:
                await core.unload_model(name)
            assert not slow_models.closed
            assert not slow.closed
            assert slow_models.pending_count >= 2 * len(names)  # the snapshot, and a value for every model
            assert slow.pending_count >= 2 * len(names)

    assert sorted(routed) == sorted(["pipeline/flow", "experiment/ab", *(f"model/{name}" for name in names)])
    assert sorted(reported) == sorted(names)
