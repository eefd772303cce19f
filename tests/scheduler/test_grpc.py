"""The scheduler core over REAL gRPC: a `modelplane scheduler` subprocess, Scheduler API clients, and fake
agents (tests/support/grpc_agent.py) that speak AgentService.Session like node agents would.

Waits are hang guards only (generous timeouts on conditions), never timing assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane import __version__
from modelplane.spec import limits
from tests.support.grpc_agent import FakeGrpcAgent, MiB
from tests.support.processes import STARTED, SchedulerProcess, start_scheduler, stop_process
from tests.support.scheduler_client import (
    AVAILABLE,
    CALL_TIMEOUT,
    FAILED,
    SCHEDULE_FAILED,
    TERMINATED,
    TERMINATING,
    Client,
    Replica,
    State,
    is_final,
    load_many,
    model_spec,
    state_name,
)
from tests.support.waiting import wait_for, wait_for_async

FLAGS = ("--sync-grace=1", "--heartbeat=1", "--shutdown-grace=1")


class Agents:
    """Fake agents of one test, all closed at its end."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.started: list[FakeGrpcAgent] = []

    async def start(self, replica_idx: int = 0, **options: Any) -> FakeGrpcAgent:
        agent = FakeGrpcAgent(self.address, replica_idx=replica_idx, **options)
        self.started.append(agent)
        await agent.start()
        return agent

    async def close_all(self) -> None:
        for agent in self.started:
            if agent.connected:
                await agent.close()
            else:
                await agent.crash()  # tears down what is left


@pytest.fixture
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SchedulerProcess]:
    """One scheduler subprocess for the test; parametrize indirectly with a tuple of flags to override FLAGS."""
    extra: tuple[str, ...] = getattr(request, "param", ())
    process = start_scheduler(tmp_path, *FLAGS, *extra)
    try:
        yield process
    finally:
        stop_process(process.process)


@pytest.fixture
async def client(running: SchedulerProcess) -> AsyncIterator[Client]:
    scheduler_client = Client(running.listen)
    try:
        yield scheduler_client
    finally:
        await scheduler_client.close()


@pytest.fixture
async def agents(running: SchedulerProcess) -> AsyncIterator[Agents]:
    pool = Agents(running.agent_listen)
    try:
        yield pool
    finally:
        await pool.close_all()


def replica_states(status: pb.ModelStatusResponse, version_index: int = -1) -> dict[int, int]:
    """replica index -> ModelReplicaState, for one version of a status."""
    return {index: replica.state for index, replica in status.versions[version_index].modelReplicaState.items()}


# --------------------------------------------------------------------------- models


async def test_load_becomes_available_then_unload_terminates_and_removes(client: Client, agents: Agents) -> None:
    agent = await agents.start()
    watch = client.watch_models()

    await client.load(model_spec("iris"))
    await wait_for(lambda: watch.state("iris") == AVAILABLE, what="iris Available on the status stream")
    assert agent.loads == Counter({("iris", 1): 1})
    assert agent.holds("iris", 1)
    await client.load(model_spec("iris"))  # the same request again changes nothing

    status = await client.status("iris")
    assert status.modelName == "iris"
    assert not status.deleted
    [version] = status.versions
    assert version.version == 1
    assert version.serverName == "mlserver"
    assert version.state.state == AVAILABLE
    assert version.state.availableReplicas == 1
    assert version.modelDefn.modelSpec.uri == "gs://models/iris"
    assert replica_states(status) == {0: Replica.Available}

    await client.unload("iris")
    await wait_for(lambda: watch.terminated("iris"), what="iris terminated on the status stream")
    await client.wait_state("iris", None)
    assert agent.unloads == Counter({("iris", 1): 1})
    assert not agent.held
    history = watch.history["iris"]
    first_deleted = next(index for index, status in enumerate(history) if status.deleted)
    assert first_deleted > 0
    assert all(status.deleted for status in history[first_deleted:])  # once deleted, always deleted
    assert is_final(history[-1])
    # Terminating/Terminated on the way out; ModelTerminated itself can be coalesced away, even for a
    # subscriber that keeps up (see test_a_lagging_subscriber_still_learns_that_a_deleted_model_terminated).
    leaving = {s.versions[-1].state.state for s in history[first_deleted:] if s.versions}
    assert leaving <= {AVAILABLE, TERMINATING, TERMINATED}, [state_name(s) for s in leaving]
    with pytest.raises(aio.AioRpcError) as raised:
        await client.status("iris")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'iris' not found" in (raised.value.details() or "")


async def test_changed_uri_rolls_out_version_2_before_unloading_version_1(client: Client, agents: Agents) -> None:
    agent = await agents.start()
    await client.load(model_spec("iris", uri="gs://models/iris-v1"))
    await client.wait_state("iris", AVAILABLE)

    await client.load(model_spec("iris", uri="gs://models/iris-v2"))
    await wait_for(lambda: agent.unloads[("iris", 1)] == 1, what="version 1 unloaded")
    await client.wait_state("iris", AVAILABLE)

    assert agent.loads == Counter({("iris", 1): 1, ("iris", 2): 1})
    assert agent.first("unload", "iris", 1).seq > agent.first("loaded", "iris", 2).seq
    assert set(agent.held) == {("iris", 2)}
    status = await client.status("iris", all_versions=True)
    assert [v.version for v in status.versions] == [2]  # the terminated version 1 is forgotten
    assert status.versions[-1].modelDefn.modelSpec.uri == "gs://models/iris-v2"
    assert [op.model.modelSpec.uri for op in agent.operations if op.kind == agent_pb2.ModelOperation.KIND_LOAD] == [
        "gs://models/iris-v1",
        "gs://models/iris-v2",
    ]


async def test_failing_new_version_leaves_version_1_serving(client: Client, agents: Agents) -> None:
    agent = await agents.start(fail_uris={"gs://models/broken": "artifact gs://models/broken does not exist"})
    await client.load(model_spec("iris", uri="gs://models/iris-v1"))
    await client.wait_state("iris", AVAILABLE)
    await client.load(model_spec("iris", uri="gs://models/broken"))
    await client.wait_state("iris", FAILED)
    status = await client.status("iris", all_versions=True)
    assert agent.holds("iris", 1)
    assert agent.unloads[("iris", 1)] == 0
    assert agent.loads == Counter({("iris", 1): 1, ("iris", 2): 1})
    by_version = {v.version: v for v in status.versions}
    assert set(by_version) == {1, 2}
    assert by_version[2].state.state == FAILED
    assert "artifact gs://models/broken does not exist" in by_version[2].state.reason
    assert replica_states(status, 0) == {0: Replica.Available}  # version 1 still serves on replica 0
    assert by_version[1].state.state == AVAILABLE
    assert by_version[1].state.availableReplicas == 1


async def test_scheduler_refuses_a_model_it_cannot_place(client: Client, agents: Agents) -> None:
    agent = await agents.start(capabilities=["sklearn"])
    await client.load(model_spec("tri", requirements=["triton"]))
    await client.wait_state("tri", SCHEDULE_FAILED)
    status = await client.status("tri")
    reason = status.versions[-1].state.reason
    assert "server mlserver" in reason
    assert "missing capability triton" in reason
    assert not agent.loads


async def test_recreating_a_model_still_being_deleted_is_refused_until_its_unload_is_answered(
    client: Client, agents: Agents
) -> None:
    agent = await agents.start()
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)

    agent.answering = False
    await client.unload("iris")
    await wait_for(lambda: bool(agent.unanswered), what="the unload reaching the agent")
    with pytest.raises(aio.AioRpcError) as raised:
        await client.load(model_spec("iris"))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "in process of deletion" in (raised.value.details() or "")

    agent.answering = True
    await agent.answer_pending()
    await client.wait_state("iris", None)
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)
    assert agent.loads[("iris", 1)] == 2
    assert agent.unloads[("iris", 1)] == 1


async def test_a_duplicate_event_is_rejected_and_changes_nothing(client: Client, agents: Agents) -> None:
    agent = await agents.start()
    watch = client.watch_models()
    await client.load(model_spec("iris"))
    await wait_for(lambda: watch.state("iris") == AVAILABLE, what="iris Available")
    [load] = agent.operations
    loaded = agent_pb2.ModelEvent(
        operation_id=load.operation_id, kind=agent_pb2.ModelEvent.KIND_LOADED, model_name="iris", model_version=1
    )
    await agent.send_event(loaded)  # the same answer again
    await wait_for(lambda: bool(agent.rejected), what="EventRejected for the duplicate")
    [rejected] = agent.rejected
    assert (rejected.operation_id, rejected.model_name, rejected.model_version) == (load.operation_id, "iris", 1)
    assert rejected.reason
    assert await client.state("iris") == AVAILABLE
    assert agent.loads == Counter({("iris", 1): 1})


async def test_a_stale_event_for_an_earlier_operation_is_rejected(client: Client, agents: Agents) -> None:
    agent = await agents.start()
    watch = client.watch_models()
    await client.load(model_spec("iris"))
    await wait_for(lambda: watch.state("iris") == AVAILABLE, what="iris Available")
    [first_load] = agent.operations
    agent.answering = False
    await client.unload("iris")
    await wait_for(lambda: bool(agent.unanswered), what="the unload")
    await agent.answer_pending()
    await client.wait_state("iris", None)
    await client.load(model_spec("iris"))
    await wait_for(lambda: bool(agent.unanswered), what="the second load")  # in flight: not answered
    assert agent.unanswered[0].operation_id > first_load.operation_id

    stale = agent_pb2.ModelEvent(
        operation_id=first_load.operation_id, kind=agent_pb2.ModelEvent.KIND_LOADED, model_name="iris", model_version=1
    )
    await agent.send_event(stale)
    await wait_for(lambda: bool(agent.rejected) or watch.state("iris") == AVAILABLE, what="the stale event handled")
    assert [r.operation_id for r in agent.rejected] == [first_load.operation_id]
    assert await client.state("iris") != AVAILABLE  # the second load has not been answered


# --------------------------------------------------------------------------- agents come and go


@pytest.mark.parametrize("leave", ["crash", "close"])
async def test_departed_agent_s_model_moves_to_another_replica(client: Client, agents: Agents, leave: str) -> None:
    first = await agents.start(replica_idx=0)
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)
    assert first.holds("iris")
    second = await agents.start(replica_idx=1)

    if leave == "crash":
        await first.crash()
    else:
        await first.close()
        assert first.end_code == grpc.StatusCode.OK  # a clean goodbye gets a clean end
    await wait_for(lambda: second.holds("iris"), what="iris loaded on replica 1")
    await client.wait_state("iris", AVAILABLE)
    assert replica_states(await client.status("iris")) == {1: Replica.Available}
    assert second.loads == Counter({("iris", 1): 1})
    server = await client.server_status("mlserver")
    assert [r.replicaIdx for r in server.resources] == [1]


@pytest.mark.parametrize("running", [("--heartbeat=0.5",)], indirect=True)
async def test_hung_agent_loses_its_replica_and_its_model_moves(client: Client, agents: Agents) -> None:
    hung = await agents.start(replica_idx=0)
    assert hung.accepted is not None
    assert hung.accepted.heartbeat_interval_ms == 500
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)
    healthy = await agents.start(replica_idx=1)

    hung.hang()
    await hung.wait_ended()
    assert hung.end_code == grpc.StatusCode.UNAVAILABLE
    assert "no message from the agent" in hung.end_details
    await wait_for(lambda: healthy.holds("iris"), what="iris loaded on the healthy replica")
    await client.wait_state("iris", AVAILABLE)
    assert replica_states(await client.status("iris")) == {1: Replica.Available}
    # An idle session: the scheduler heartbeats it, and the agent's heartbeats keep it in well past 3 intervals.
    received = healthy.heartbeats_received
    await wait_for(lambda: healthy.heartbeats_received >= received + 4, what="four more scheduler heartbeats")
    assert healthy.connected


async def test_drain_moves_the_model_before_completing(client: Client, agents: Agents) -> None:
    leaving = await agents.start(replica_idx=0)
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)
    staying = await agents.start(replica_idx=1)
    watch = client.watch_models()
    await wait_for(lambda: watch.state("iris") == AVAILABLE, what="the status stream's snapshot")

    await leaving.drain()
    complete = await leaving.wait_drain_complete()
    assert list(complete.unplaced_models) == []
    assert staying.loads == Counter({("iris", 1): 1})
    assert staying.holds("iris")
    assert leaving.unloads == Counter({("iris", 1): 1})
    assert not leaving.held
    loaded_on_staying = staying.first("loaded", "iris", 1).seq
    unload_on_leaving = leaving.first("unload", "iris", 1).seq
    assert loaded_on_staying < unload_on_leaving < leaving.first("drain_complete").seq
    await client.wait_state("iris", AVAILABLE)
    assert replica_states(await client.status("iris")) == {1: Replica.Available}
    # The model served throughout: a draining copy serves until the new one does.
    assert set(watch.states("iris")) == {AVAILABLE}


async def test_drain_with_nowhere_to_go_completes_naming_the_model(client: Client, agents: Agents) -> None:
    only = await agents.start()
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)

    await only.drain()
    complete = await only.wait_drain_complete()
    assert list(complete.unplaced_models) == ["iris"]
    assert only.holds("iris")  # it keeps serving until the agent actually leaves
    assert not only.unloads
    assert await client.state("iris") == AVAILABLE


async def test_a_dead_server_reported_over_the_session_makes_its_model_unavailable(
    client: Client, agents: Agents
) -> None:
    agent = await agents.start()
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)
    await agent.send_server_health(agent_pb2.ServerHealth(serving=False, reason="MLServer exited"))
    await client.wait_state("iris", State.ModelProgressing)
    status = await client.status("iris")
    assert replica_states(status) == {0: Replica.LoadedUnavailable}
    assert status.versions[-1].state.reason.startswith("server mlserver replica 0 is down: MLServer exited")
    held = [agent_pb2.LoadedModel(name="iris", version=1)]
    await agent.send_server_health(agent_pb2.ServerHealth(serving=True, loaded_models=held))
    await client.wait_state("iris", AVAILABLE)
    assert agent.loads == Counter({("iris", 1): 1})  # served again without a reload


async def test_a_server_health_reason_is_an_agents_words_kept_on_one_bounded_line(
    client: Client, agents: Agents
) -> None:
    """Like every reason an agent gives, it is never refused (the state change it comes with matters more)."""
    agent = await agents.start()
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)
    reason = "MLServer exited\x00\nTraceback " + "x" * 100_000
    await agent.send_server_health(agent_pb2.ServerHealth(serving=False, reason=reason))
    await client.wait_state("iris", State.ModelProgressing)
    assert agent.connected
    shown = (await client.status("iris")).versions[-1].state.reason
    assert shown.startswith("server mlserver replica 0 is down: MLServer exited Traceback xxx")
    assert shown.isprintable()
    assert "(99002 more characters)" in shown  # the agent's words were cut to MAX_REASON_CHARS when stored
    assert len(shown) <= limits.MAX_STATUS_REASON_CHARS


@pytest.mark.parametrize(
    ("health", "problem"),
    [
        (
            agent_pb2.ServerHealth(serving=False, loaded_models=[agent_pb2.LoadedModel(name="iris", version=1)]),
            "a server that is not serving holds no loaded models",
        ),
        (
            agent_pb2.ServerHealth(serving=True, loaded_models=[agent_pb2.LoadedModel(name="iris", version=0)]),
            "versions start at 1",
        ),
    ],
)
async def test_an_invalid_server_health_ends_the_session_with_the_reason(
    client: Client, agents: Agents, health: agent_pb2.ServerHealth, problem: str
) -> None:
    agent = await agents.start()
    await agent.send_server_health(health)
    await agent.wait_ended()
    assert agent.end_code == grpc.StatusCode.UNAVAILABLE
    assert "invalid ServerHealth" in agent.end_details
    assert problem in agent.end_details


async def test_an_agent_writing_when_its_session_ends_hears_why(running: SchedulerProcess) -> None:
    """A session the scheduler ends while its agent is writing (here: replaced by a newer registration of the same
    replica) ends with the scheduler's status and reason at the agent, not gRPC's INTERNAL "Internal error from
    Core" (what a client writing into a stream its server has finished sees, in nearly every try before the
    scheduler said goodbye first). The agent does what agent.proto asks: on SessionEnding it stops writing and
    half-closes."""
    register = FakeGrpcAgent(running.agent_listen, agent_id="earlier").register_message()
    async with aio.insecure_channel(running.agent_listen) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        for attempt in range(20):
            call = stub.Session()
            await call.write(register)
            accepted = await call.read()
            assert isinstance(accepted, agent_pb2.SessionResponse)
            assert accepted.HasField("register_accepted")
            goodbye = asyncio.Event()

            async def read_until_goodbye(call: Any = call, goodbye: asyncio.Event = goodbye) -> None:
                while (message := await call.read()) is not aio.EOF:
                    if message.WhichOneof("message") == "session_ending":
                        goodbye.set()
                        return

            reader = asyncio.create_task(read_until_goodbye())
            newer = FakeGrpcAgent(running.agent_listen, agent_id=f"newer-{attempt}")
            await newer.start()
            with contextlib.suppress(aio.AioRpcError):
                async with asyncio.timeout(30):
                    while not goodbye.is_set() and not reader.done():
                        await call.write(agent_pb2.SessionRequest(heartbeat=agent_pb2.Heartbeat()))
                    await call.done_writing()
            assert await call.code() == grpc.StatusCode.UNAVAILABLE, (attempt, await call.details())
            assert "replaced by a newer registration" in (await call.details() or "")
            reader.cancel()
            await newer.close()


async def test_model_held_but_not_wanted_is_unloaded_when_the_agent_registers(client: Client, agents: Agents) -> None:
    agent = await agents.start(loaded=[("stale", 3, 10 * MiB)])
    await wait_for(lambda: not agent.held, what="the stale model unloaded")
    assert agent.unloads == Counter({("stale", 3): 1})
    assert not agent.loads
    assert await client.state("stale") is None


@pytest.mark.parametrize("running", [("--heartbeat=0.5",)], indirect=True)
async def test_registering_a_replica_again_ends_the_earlier_session(client: Client, agents: Agents) -> None:
    earlier = await agents.start(agent_id="agent-before")
    await client.load(model_spec("iris"))
    await client.wait_state("iris", AVAILABLE)
    later = await agents.start(agent_id="agent-after")  # the same server and replica index
    await wait_for(lambda: later.holds("iris"), what="iris on the replica's new session")
    await wait_for(lambda: not earlier.connected, 3, "the superseded session to end")  # six heartbeat intervals
    assert earlier.end_code not in (None, grpc.StatusCode.OK)


# --------------------------------------------------------------------------- servers and the control plane


async def test_server_status_notify_and_scaling_request(client: Client, agents: Agents) -> None:
    servers = client.watch_servers()
    await agents.start(memory=512 * MiB, overcommit=10)
    await wait_for(lambda: any(s.resources for s in servers.updates("mlserver")), what="mlserver on the stream")
    [replica] = next(s for s in servers.updates("mlserver") if s.resources).resources
    assert (replica.replicaIdx, replica.totalMemoryBytes, replica.availableMemoryBytes) == (0, 512 * MiB, 512 * MiB)
    assert replica.overCommitPercentage == 10

    await client.stub.ServerNotify(
        pb.ServerNotifyRequest(
            servers=[pb.ServerNotify(name="mlserver", expectedReplicas=1, minReplicas=1, maxReplicas=4, shared=True)],
            isFirstSync=True,
        ),
        timeout=CALL_TIMEOUT,
    )
    status = await client.server_status("mlserver")
    assert status.type == pb.ServerStatusResponse.StatusUpdate
    assert (status.expectedReplicas, status.availableReplicas) == (1, 1)
    assert [(r.replicaIdx, r.totalMemoryBytes) for r in status.resources] == [(0, 512 * MiB)]

    await client.load(model_spec("wide", replicas=3, min_replicas=1, memory=100 * MiB))
    await wait_for(lambda: bool(servers.scaling_requests("mlserver")), what="a ScalingRequest for mlserver")
    request = servers.scaling_requests("mlserver")[-1]
    assert request.expectedReplicas == 3
    await client.wait_state("wide", AVAILABLE)  # minReplicas=1 is met while the server scales
    model_status = await client.status("wide")
    assert model_status.versions[-1].state.availableReplicas == 1
    status = await client.server_status("mlserver")
    assert status.numLoadedModelReplicas == 1
    assert status.resources[0].availableMemoryBytes == 412 * MiB


async def test_control_plane_asks_for_servers_first_then_the_rest_in_order(client: Client) -> None:
    call = client.stub.SubscribeControlPlane(pb.ControlPlaneSubscriptionRequest(subscriberName="controller"))
    try:
        events = []
        for _ in range(4):
            message = await asyncio.wait_for(call.read(), 20)
            assert isinstance(message, pb.ControlPlaneResponse)
            events.append(pb.ControlPlaneResponse.Event.Name(message.event))
    finally:
        call.cancel()
    assert events == ["SEND_SERVERS", "SEND_EXPERIMENTS", "SEND_MODELS", "SEND_PIPELINES"]


# --------------------------------------------------------------------------- status streams


# A stall shorter than the subscriber lag is caught up by coalescing (a longer one is dropped: see
# tests/scheduler/test_status_stream_lag.py); the lag is set far above what these stalls last on a loaded machine.
LONG_LAG = ("--subscriber-lag=3600",)


@pytest.mark.parametrize("running", [LONG_LAG], indirect=True)
async def test_a_stalled_subscriber_does_not_delay_a_reading_one(client: Client, agents: Agents) -> None:
    await agents.start(memory=100_000 * MiB)
    await client.load(model_spec("seed", memory=MiB))
    await client.wait_state("seed", AVAILABLE)
    stalled = client.stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="stalled"))
    try:
        first = await asyncio.wait_for(stalled.read(), 20)  # subscribed; from here on it reads nothing
        assert isinstance(first, pb.ModelStatusResponse)
        reading = client.watch_models("reading")
        # ~100 KiB per status, a few statuses per model: far more than the stalled stream's transport holds.
        names = [f"s-{i}" for i in range(200)]
        await load_many(client, names, bulk_kib=100)
        await wait_for(
            lambda: all(reading.state(name) == AVAILABLE for name in names), 60, "200 models Available on the stream"
        )
        assert await client.state("s-199") == AVAILABLE
        assert not stalled.done()

        # The stalled one, once it reads, catches up to the same latest state.
        latest: dict[str, int] = {}
        while not all(latest.get(name) == AVAILABLE for name in names):
            message = await asyncio.wait_for(stalled.read(), 20)
            assert isinstance(message, pb.ModelStatusResponse)
            if message.versions:
                latest[message.modelName] = message.versions[-1].state.state
    finally:
        stalled.cancel()


@pytest.mark.parametrize("running", [LONG_LAG], indirect=True)
async def test_a_lagging_subscriber_still_learns_that_a_deleted_model_terminated(
    client: Client, agents: Agents
) -> None:
    await agents.start(memory=100_000 * MiB)
    await client.load(model_spec("seed", memory=MiB))
    await client.wait_state("seed", AVAILABLE)
    lagging = client.stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="controller"))
    try:
        assert isinstance(await asyncio.wait_for(lagging.read(), 20), pb.ModelStatusResponse)
        reading = client.watch_models("reading")
        names = [f"b-{i}" for i in range(100)]
        # 12 MB in all fills the lagging stream's transport; each spec stays within MAX_MODEL_SPEC_BYTES (128 KiB).
        await load_many(client, names, bulk_kib=120)
        await wait_for(lambda: all(reading.state(name) == AVAILABLE for name in names), 60, "bulk models Available")

        await client.load(model_spec("doomed", generation=1))
        await client.wait_state("doomed", AVAILABLE)
        await client.unload("doomed")
        await client.wait_state("doomed", None)
        assert TERMINATED in reading.states("doomed")  # a subscriber that keeps up sees it

        seen: list[pb.ModelStatusResponse] = []
        while not (seen and is_final(seen[-1])):
            message = await asyncio.wait_for(lagging.read(), 20)
            assert isinstance(message, pb.ModelStatusResponse)
            if message.modelName == "doomed":
                seen.append(message)
        if len(seen) >= len(reading.history["doomed"]):
            pytest.skip("the lagging stream never filled up, so nothing was coalesced")
        # What Seldon's controller needs to remove its finalizer: a version saying ModelTerminated, with its
        # Kubernetes metadata.
        assert any(
            m.versions and m.versions[0].state.state == TERMINATED and m.versions[0].HasField("kubernetesMeta")
            for m in seen
        ), [(len(m.versions), m.deleted) for m in seen]
    finally:
        lagging.cancel()


# --------------------------------------------------------------------------- restart


async def test_restart_keeps_every_acknowledged_model_and_reloads_nothing_still_held(tmp_path: Path) -> None:
    flags = ("--sync-grace=3", "--heartbeat=1", "--shutdown-grace=1")
    first = start_scheduler(tmp_path, *flags)
    second: SchedulerProcess | None = None
    agent = FakeGrpcAgent(first.agent_listen, memory=100_000 * MiB)
    client = Client(first.listen)
    try:
        await agent.start()
        acknowledged: list[str] = []
        enough = asyncio.Event()

        async def load_until_killed() -> str:
            for index in itertools.count():
                name = f"m-{index}"
                try:
                    await client.load(model_spec(name, memory=MiB))
                except aio.AioRpcError:
                    return name  # in flight when the scheduler died: it may or may not exist afterwards
                acknowledged.append(name)
                if len(acknowledged) == 40:
                    agent.pause()  # later loads stay in transit: the agent never sees them
                if len(acknowledged) >= 50:
                    enough.set()
            raise AssertionError("unreachable")

        loader = asyncio.create_task(load_until_killed())
        await asyncio.wait_for(enough.wait(), 60)
        os.kill(first.process.pid, signal.SIGKILL)  # while the loader is still calling
        in_flight = await asyncio.wait_for(loader, 20)
        first.process.wait(20)
        await client.close()
        held_at_kill = {name for name, _version in agent.held}
        loads_at_kill = Counter(agent.loads)
        not_held = [name for name in acknowledged if name not in held_at_kill]
        assert held_at_kill <= {*acknowledged, in_flight}
        assert len(held_at_kill) >= 30, "the agent answered loads until it paused"
        assert len(not_held) >= 10, "loads acknowledged after the pause never reached the agent"

        second = start_scheduler(tmp_path, *flags)  # the same state dir, new ports
        client = Client(second.listen)
        await agent.reconnect(second.agent_listen)  # re-registers with every model it holds

        async def all_available() -> bool:
            statuses = {s.modelName: s for s in await client.all_statuses()}
            return all(
                name in statuses and statuses[name].versions[-1].state.state == AVAILABLE for name in acknowledged
            )

        await wait_for_async(all_available, 30, "every acknowledged model Available after the restart")
        known = {s.modelName for s in await client.all_statuses()}
        assert set(acknowledged) <= known
        assert known <= {*acknowledged, in_flight}
        for name in acknowledged:
            assert agent.holds(name), name
            assert agent.loads[(name, 1)] == 1, f"{name} was loaded {agent.loads[(name, 1)]} times"
        assert all(loads_at_kill[(name, 1)] == 1 for name in held_at_kill)  # so no reload after the restart
        assert all(loads_at_kill[(name, 1)] == 0 for name in not_held)  # so loaded once, after the restart
        assert not agent.unloads
    finally:
        await agent.crash()
        await client.close()
        stop_process(first.process)
        if second is not None:
            stop_process(second.process)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def shared_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    """One scheduler for every bad-input case (a scheduler start is the slow part of each case)."""
    process = start_scheduler(tmp_path_factory.mktemp("bad-input"), *FLAGS)
    # conftest's autouse fixture stops, after each test, every process started; this one lives for the module,
    # so it is taken off that list and stopped here instead.
    STARTED.remove(process.process)
    try:
        yield process
    finally:
        stop_process(process.process)


@dataclass(frozen=True)
class Stubs:
    scheduler: pb_grpc.SchedulerAsyncStub
    agent: agent_pb2_grpc.AgentServiceAsyncStub


BadCall = Callable[[Stubs], Awaitable[object]]


def _load(model: pb.Model | None) -> BadCall:
    request = pb.LoadModelRequest() if model is None else pb.LoadModelRequest(model=model)
    return lambda stubs: stubs.scheduler.LoadModel(request, timeout=CALL_TIMEOUT)


def _drain(call: Callable[[Stubs], aio.UnaryStreamCall[Any, Any]]) -> BadCall:
    async def run(stubs: Stubs) -> object:
        return [item async for item in call(stubs)]

    return run


def _session(first: agent_pb2.SessionRequest) -> BadCall:
    async def run(stubs: Stubs) -> object:
        call = stubs.agent.Session(timeout=CALL_TIMEOUT)
        try:
            await call.write(first)
            return await call.read()
        finally:
            call.cancel()

    return run


def _register(**replica: Any) -> agent_pb2.SessionRequest:
    version = replica.pop("protocol_version", 1)
    config = {"server_name": "mlserver", "total_memory_bytes": 100 * MiB, **replica}
    return agent_pb2.SessionRequest(
        register=agent_pb2.Register(protocol_version=version, replica=agent_pb2.ReplicaConfig(**config))
    )


INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
BAD_CALLS: list[tuple[str, BadCall, grpc.StatusCode, str]] = [
    ("load-no-model", _load(None), INVALID, "LoadModelRequest.model is missing"),
    ("load-no-meta", _load(pb.Model(modelSpec=pb.ModelSpec(uri="gs://m"))), INVALID, "model.meta is missing"),
    ("load-empty-name", _load(model_spec("")), INVALID, "model name is empty"),
    ("load-upper-case-name", _load(model_spec("Bad_Name")), INVALID, "model name 'Bad_Name' is invalid"),
    ("load-dotted-name", _load(model_spec("a.b")), INVALID, "model name 'a.b' is invalid"),
    ("load-long-name", _load(model_spec("a" * 70)), INVALID, "is 70 characters long; the limit is 63"),
    ("load-no-model-spec", _load(pb.Model(meta=pb.MetaData(name="nospec"))), INVALID, "modelSpec is missing"),
    ("load-empty-uri", _load(model_spec("nouri", uri="")), INVALID, "modelSpec.uri is empty"),
    (
        "load-too-many-replicas",
        _load(model_spec("many", replicas=100_000)),
        INVALID,
        "deploymentSpec.replicas=100000 is above the limit of 1000",
    ),
    (
        "load-min-above-replicas",
        _load(model_spec("minmax", replicas=2, min_replicas=3)),
        INVALID,
        "minReplicas=3 is more than replicas=2",
    ),
    (
        "unload-no-model",
        lambda stubs: stubs.scheduler.UnloadModel(pb.UnloadModelRequest(), timeout=CALL_TIMEOUT),
        INVALID,
        "UnloadModelRequest.model is missing",
    ),
    (
        "unload-unknown",
        lambda stubs: stubs.scheduler.UnloadModel(
            pb.UnloadModelRequest(model=pb.ModelReference(name="nope")), timeout=CALL_TIMEOUT
        ),
        PRECONDITION,
        "model 'nope' not found",
    ),
    (
        "model-status-unknown",
        _drain(
            lambda stubs: stubs.scheduler.ModelStatus(
                pb.ModelStatusRequest(model=pb.ModelReference(name="nope")), timeout=CALL_TIMEOUT
            )
        ),
        PRECONDITION,
        "model 'nope' not found",
    ),
    (
        "server-status-unknown",
        _drain(lambda stubs: stubs.scheduler.ServerStatus(pb.ServerStatusRequest(name="nope"), timeout=CALL_TIMEOUT)),
        PRECONDITION,
        "server 'nope' not found",
    ),
    (
        "server-notify-bad-name",
        lambda stubs: stubs.scheduler.ServerNotify(
            pb.ServerNotifyRequest(servers=[pb.ServerNotify(name="Bad_Name", expectedReplicas=1)]),
            timeout=CALL_TIMEOUT,
        ),
        INVALID,
        "server name 'Bad_Name' is invalid",
    ),
    (
        "agent-first-message-not-register",
        _session(agent_pb2.SessionRequest(heartbeat=agent_pb2.Heartbeat())),
        INVALID,
        "must start with a Register message",
    ),
    ("agent-protocol-version-2", _session(_register(protocol_version=2)), INVALID, "protocol version 2"),
    ("agent-zero-memory", _session(_register(total_memory_bytes=0)), INVALID, "total_memory_bytes 0"),
    ("agent-bad-server-name", _session(_register(server_name="Bad_Name")), INVALID, "server name 'Bad_Name'"),
]


@pytest.mark.parametrize(
    ("call", "code", "message"), [case[1:] for case in BAD_CALLS], ids=[case[0] for case in BAD_CALLS]
)
async def test_bad_input_is_refused_with_a_message(
    shared_scheduler: SchedulerProcess, call: BadCall, code: grpc.StatusCode, message: str
) -> None:
    async with (
        aio.insecure_channel(shared_scheduler.listen) as api,
        aio.insecure_channel(shared_scheduler.agent_listen) as agents_channel,
    ):
        stub = pb_grpc.SchedulerStub(api)
        with pytest.raises(aio.AioRpcError) as raised:
            await call(Stubs(stub, agent_pb2_grpc.AgentServiceStub(agents_channel)))
        assert raised.value.code() == code, raised.value.details()
        assert message in (raised.value.details() or ""), raised.value.details()
        answer = await stub.SchedulerStatus(pb.SchedulerStatusRequest(subscriberName="t"), timeout=CALL_TIMEOUT)
        assert answer.applicationVersion == __version__


async def test_scheduler_survives_every_bad_input(shared_scheduler: SchedulerProcess) -> None:
    """All the bad calls above, again, against the same scheduler: it refuses each, keeps serving, keeps nothing."""
    running = shared_scheduler
    async with (
        aio.insecure_channel(running.listen) as api,
        aio.insecure_channel(running.agent_listen) as agents_channel,
    ):
        stubs = Stubs(pb_grpc.SchedulerStub(api), agent_pb2_grpc.AgentServiceStub(agents_channel))
        for case_id, call, code, _message in BAD_CALLS:
            with pytest.raises(aio.AioRpcError) as raised:
                await call(stubs)
            assert raised.value.code() == code, case_id
    assert running.process.poll() is None
    client = Client(running.listen)
    try:
        answer = await client.stub.SchedulerStatus(pb.SchedulerStatusRequest(subscriberName="t"), timeout=CALL_TIMEOUT)
        assert answer.applicationVersion == __version__
        assert await client.all_statuses() == []  # no bad request left a model behind
        assert [s async for s in client.stub.ServerStatus(pb.ServerStatusRequest(), timeout=CALL_TIMEOUT)] == []
    finally:
        await client.close()
    assert "Traceback" not in running.log()
