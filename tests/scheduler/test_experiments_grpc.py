"""The experiment RPCs over real gRPC against a `modelplane scheduler` process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.processes import SchedulerProcess, start_scheduler, stop_process


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


async def _status_of(stub: pb_grpc.SchedulerAsyncStub, name: str) -> pb.ExperimentStatusResponse | None:
    """The experiment's status, or None once the scheduler no longer knows it (FAILED_PRECONDITION)."""
    try:
        [status] = [s async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(name=name), timeout=10)]
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        return None
    return status


async def test_a_stopped_experiment_is_forgotten_after_its_ttl_and_stays_forgotten(tmp_path: Path) -> None:
    """Seldon's scheduler keeps a deleted experiment's record for --deleted-resource-ttl (a day by default) so its
    status still answers, then drops it: otherwise every experiment ever started stays in memory and in the store
    for good. A running one is never dropped, and neither is one started again after its stop."""
    scheduler = start_scheduler(tmp_path, "--stopped-experiment-ttl=1")
    try:
        async with grpc.aio.insecure_channel(scheduler.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            for name in ("gone", "again", "running"):
                spec = pb.Experiment(name=name, candidates=[pb.ExperimentCandidate(name="iris", weight=1)])
                await stub.StartExperiment(pb.StartExperimentRequest(experiment=spec), timeout=10)
            await stub.StopExperiment(pb.StopExperimentRequest(name="gone"), timeout=10)
            await stub.StopExperiment(pb.StopExperimentRequest(name="again"), timeout=10)
            stopped = await _status_of(stub, "gone")
            assert stopped is not None
            assert stopped.statusDescription == "stopped"  # asked at once: the record is still there
            spec = pb.Experiment(name="again", candidates=[pb.ExperimentCandidate(name="iris", weight=1)])
            await stub.StartExperiment(pb.StartExperimentRequest(experiment=spec), timeout=10)

            deadline = asyncio.get_running_loop().time() + 60
            while await _status_of(stub, "gone") is not None:
                assert asyncio.get_running_loop().time() < deadline, "the stopped experiment was never forgotten"
                await asyncio.sleep(0.2)
            assert await _status_of(stub, "again") is not None
            assert await _status_of(stub, "running") is not None
    finally:
        assert stop_process(scheduler.process) == 0
    restarted = start_scheduler(tmp_path)
    try:
        async with grpc.aio.insecure_channel(restarted.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            assert await _status_of(stub, "gone") is None  # gone from the store too
            assert {"again", "running"} <= {
                s.experimentName async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(), timeout=10)
            }
    finally:
        stop_process(restarted.process)
