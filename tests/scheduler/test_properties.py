"""Property tests (hypothesis) over every Scheduler API and RoutingService RPC and the agent protocol, against a live
scheduler over real gRPC (issue 10).

For any request, well-formed or hostile (huge, empty, control characters, numbers at and past every limit):
- only the status codes documented for that RPC come back (README, "Scheduler API notes"), never UNKNOWN or
  INTERNAL;
- after each example, every model's status still renders over ModelStatus and a new subscription (the anchor, a
  well-formed model loaded first, among them), and the scheduler's invariants hold (``check_invariants``).

The bulk runs against the real servicers on a real grpc.aio server in this process (so the test can call the
invariant check), one scheduler for all the examples of a test, so state piles up as it would in production; a
smaller set runs against a `modelplane scheduler` process for the codes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.mlops.agent.v1 import agent_pb2_grpc
from generated.mlops.routing.v1 import routing_pb2_grpc as rpb_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.processes import STARTED, start_scheduler, stop_process
from tests.support.scheduler_calls import (
    ANCHOR,
    ANY_CALL,
    CALL_TIMEOUT,
    PROPERTY_SETTINGS,
    C,
    Call,
    Outcome,
    Stubs,
    invoke,
    plant_anchors,
    sessions,
    unary_calls,
)
from tests.support.scheduler_in_process import InProcessScheduler, in_process_scheduler

# What each RPC may answer besides OK (README, "Scheduler API notes"). Streams that the test ends itself may
# also end CANCELLED.
_MUTATION = {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE}
_SUBSCRIPTION = {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE, C.CANCELLED}
DOCUMENTED: dict[str, set[grpc.StatusCode]] = {
    "LoadModel": _MUTATION,
    "UnloadModel": _MUTATION,
    "ServerNotify": _MUTATION,
    "StartExperiment": _MUTATION,
    "StopExperiment": _MUTATION,
    "LoadPipeline": _MUTATION,
    "UnloadPipeline": _MUTATION,
    "ModelStatusEvent": {C.INVALID_ARGUMENT},
    "PipelineStatusEvent": {C.INVALID_ARGUMENT},
    "SchedulerStatus": {C.INVALID_ARGUMENT},
    "ModelStatus": {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION},
    "ServerStatus": {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION},
    "ExperimentStatus": {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION},
    "PipelineStatus": {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION},
    "SubscribeModelStatus": _SUBSCRIPTION,
    "SubscribeServerStatus": _SUBSCRIPTION,
    "SubscribeExperimentStatus": _SUBSCRIPTION,
    "SubscribePipelineStatus": _SUBSCRIPTION,
    "SubscribeControlPlane": _SUBSCRIPTION,
    "ModelEndpoints": {C.INVALID_ARGUMENT, C.NOT_FOUND, C.UNAVAILABLE},
    "WatchRoutes": _SUBSCRIPTION,
    "ExperimentRouted": {C.INVALID_ARGUMENT},
    "Session": {C.INVALID_ARGUMENT, C.UNAVAILABLE, C.CANCELLED},
}


async def check_everything_renders(stubs: Stubs) -> None:
    """Every model's status renders over ModelStatus (the anchor's too) and a new subscription; every status RPC
    answers for all; no record is reported as the scheduler's own failure."""
    request = pb.ModelStatusRequest(subscriberName="check", allVersions=True)
    statuses = {s.modelName: s async for s in stubs.scheduler.ModelStatus(request, timeout=CALL_TIMEOUT)}
    assert ANCHOR in statuses
    assert statuses[ANCHOR].versions[-1].modelDefn.modelSpec.uri == "gs://models/anchor"
    for status in statuses.values():
        assert all("cannot report" not in v.state.reason for v in status.versions), status.modelName
    subscription = stubs.scheduler.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="check"))
    try:
        seen: set[str] = set()
        async with asyncio.timeout(CALL_TIMEOUT):
            while ANCHOR not in seen:
                message = await subscription.read()
                assert isinstance(message, pb.ModelStatusResponse), await subscription.code()
                seen.add(message.modelName)
    finally:
        subscription.cancel()
    assert [s async for s in stubs.scheduler.ServerStatus(pb.ServerStatusRequest(), timeout=CALL_TIMEOUT)]
    assert [
        s
        async for s in stubs.scheduler.PipelineStatus(pb.PipelineStatusRequest(allVersions=True), timeout=CALL_TIMEOUT)
    ]
    assert [s async for s in stubs.scheduler.ExperimentStatus(pb.ExperimentStatusRequest(), timeout=CALL_TIMEOUT)]


# ----------------------------------------------------------------- a live scheduler in this process


@dataclass
class Live:
    runner: asyncio.Runner
    scheduler: InProcessScheduler
    stubs: Stubs

    def run(self, step: Callable[[], Awaitable[None]]) -> None:
        self.runner.run(step())  # type: ignore[arg-type]


@pytest.fixture
def live() -> Iterator[Live]:
    """One scheduler for every example of a test (state piles up across examples, as it would in service)."""
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        scheduler = runner.run(stack.enter_async_context(in_process_scheduler(heartbeat_seconds=2)))
        channel = runner.run(stack.enter_async_context(aio.insecure_channel(scheduler.listen)))
        stubs = Stubs.on(channel)
        runner.run(plant_anchors(stubs))
        try:
            yield Live(runner, scheduler, stubs)
        finally:
            runner.run(stack.aclose())


def check_code(call: Call, outcome: Outcome) -> None:
    assert outcome.code == C.OK or outcome.code in DOCUMENTED[call.rpc], (
        f"{call.rpc} answered {outcome.code.name}: {outcome.details[:300]!r} to {str(call.request)[:300]}"
    )


@settings(PROPERTY_SETTINGS, max_examples=250)
@given(calls=st.lists(ANY_CALL, min_size=1, max_size=4))
def test_any_calls_answer_documented_codes_and_break_nothing(live: Live, calls: list[Call]) -> None:
    async def example() -> None:
        outcomes = [await invoke(live.stubs, call) for call in calls]
        for call, outcome in zip(calls, outcomes, strict=True):
            check_code(call, outcome)
        live.scheduler.core.check_invariants()
        await check_everything_renders(live.stubs)
        live.scheduler.core.check_invariants()

    live.run(example)


@settings(PROPERTY_SETTINGS, max_examples=80)
@given(calls=st.lists(st.one_of(sessions(), unary_calls()), min_size=1, max_size=3))
def test_concurrent_calls_and_agent_sessions_break_nothing(live: Live, calls: list[Call]) -> None:
    """The same calls at once: agents register, report and leave while clients load, unload and ask."""

    async def example() -> None:
        outcomes = list(await asyncio.gather(*(invoke(live.stubs, call) for call in calls)))
        for call, outcome in zip(calls, outcomes, strict=True):
            check_code(call, outcome)
        live.scheduler.core.check_invariants()
        await check_everything_renders(live.stubs)

    live.run(example)


# ----------------------------------------------------------------- a `modelplane scheduler` process


@pytest.fixture
def process_stubs(tmp_path: Path) -> Iterator[tuple[asyncio.Runner, Stubs]]:
    running = start_scheduler(tmp_path, "--sync-grace=1", "--heartbeat=2")
    try:
        with asyncio.Runner() as runner:
            stack = contextlib.AsyncExitStack()
            api = runner.run(stack.enter_async_context(aio.insecure_channel(running.listen)))
            agents = runner.run(stack.enter_async_context(aio.insecure_channel(running.agent_listen)))
            stubs = Stubs(
                pb_grpc.SchedulerStub(api), rpb_grpc.RoutingServiceStub(api), agent_pb2_grpc.AgentServiceStub(agents)
            )
            runner.run(plant_anchors(stubs))
            try:
                yield runner, stubs
            finally:
                runner.run(stack.aclose())
        assert running.process.poll() is None, "the scheduler exited"
        assert "Traceback" not in running.log()
    finally:
        stop_process(running.process)
        STARTED.remove(running.process)


@settings(PROPERTY_SETTINGS, max_examples=40)
@given(calls=st.lists(ANY_CALL, min_size=1, max_size=3))
def test_a_scheduler_process_answers_documented_codes(
    process_stubs: tuple[asyncio.Runner, Stubs], calls: list[Call]
) -> None:
    runner, stubs = process_stubs

    async def example() -> None:
        for call in calls:
            check_code(call, await invoke(stubs, call))
        await check_everything_renders(stubs)

    runner.run(example())
