"""The experiment RPCs over real gRPC against a `modelplane scheduler` process."""

from __future__ import annotations

import grpc
import pytest

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.processes import SchedulerProcess


async def test_start_status_stop(scheduler: SchedulerProcess) -> None:
    async with grpc.aio.insecure_channel(scheduler.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        spec = pb.Experiment(
            name="ab",
            default="iris",
            candidates=[
                pb.ExperimentCandidate(name="iris", weight=80),
                pb.ExperimentCandidate(name="iris-v2", weight=20),
            ],
            mirror=pb.ExperimentMirror(name="shadow", percent=10),
        )
        await stub.StartExperiment(pb.StartExperimentRequest(experiment=spec), timeout=10)
        [status] = [s async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(name="ab"), timeout=10)]
        assert status.experimentName == "ab"
        assert (status.active, status.candidatesReady) == (False, False)  # no model is loaded
        assert "iris" in status.statusDescription

        subscription = stub.SubscribeExperimentStatus(pb.ExperimentSubscriptionRequest(subscriberName="t"))
        first = await subscription.read()
        assert isinstance(first, pb.ExperimentStatusResponse)
        assert first.experimentName == "ab"  # current state first
        await stub.StopExperiment(pb.StopExperimentRequest(name="ab"), timeout=10)
        stopped = await subscription.read()
        assert isinstance(stopped, pb.ExperimentStatusResponse)
        assert stopped.statusDescription == "stopped"
        subscription.cancel()


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.StartExperimentRequest(), grpc.StatusCode.INVALID_ARGUMENT, "experiment is missing"),
        (
            pb.StartExperimentRequest(
                experiment=pb.Experiment(name="Bad_Name", candidates=[pb.ExperimentCandidate(name="a", weight=1)])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Bad_Name",
        ),
        (
            pb.StartExperimentRequest(
                experiment=pb.Experiment(name="x", candidates=[pb.ExperimentCandidate(name="a", weight=0)])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "weight",
        ),
        (
            pb.StartExperimentRequest(
                experiment=pb.Experiment(name="x", default="b", candidates=[pb.ExperimentCandidate(name="a", weight=1)])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "default",
        ),
    ],
)
async def test_bad_experiments(
    scheduler: SchedulerProcess, request_: pb.StartExperimentRequest, code: grpc.StatusCode, words: str
) -> None:
    async with grpc.aio.insecure_channel(scheduler.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.StartExperiment(request_, timeout=10)
        assert raised.value.code() == code
        assert words in (raised.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as stopped:
            await stub.StopExperiment(pb.StopExperimentRequest(name="never"), timeout=10)
        # Seldon's clients read FAILED_PRECONDITION as "do not retry".
        assert stopped.value.code() == grpc.StatusCode.FAILED_PRECONDITION
