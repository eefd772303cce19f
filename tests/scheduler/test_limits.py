"""Issue 10, defects 1 and 3 and the smaller items of 10: one record never breaks status for anyone, every
string and repeated field of the Scheduler API and the agent protocol has a limit and a character check, the
largest status fits a default client, empty names and names shared with experiments are refused.

Over real gRPC: a `modelplane scheduler` process where restarts matter, else the real servicers on a real
grpc.aio server in this process (tests/support/scheduler_in_process.py), so the test can also check invariants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc import aio
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.bounded_text import cut
from modelplane.spec import limits
from modelplane.spec.errors import InvalidArgument
from scheduler.persistence import Put, SqliteStateStore, StateStore
from tests.support.grpc_agent import FakeGrpcAgent, MiB
from tests.support.processes import STARTED, start_scheduler, stop_process
from tests.support.scheduler_in_process import InProcessScheduler, in_process_scheduler
from tests.support.waiting import wait_for, wait_for_async

CALL_TIMEOUT = 20.0
UINT32_MAX = 2**32 - 1
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def model(
    name: str, *, uri: str = "gs://models/iris", generation: int = 0, parameters: dict[str, str] | None = None
) -> pb.Model:
    spec = pb.Model(
        meta=pb.MetaData(name=name),
        modelSpec=pb.ModelSpec(uri=uri, requirements=["sklearn"], memoryBytes=10 * MiB),
        deploymentSpec=pb.DeploymentSpec(replicas=1),
    )
    if generation:
        spec.meta.kubernetesMeta.CopyFrom(pb.KubernetesMeta(namespace="seldon-mesh", generation=generation))
    for key, value in (parameters or {}).items():
        spec.modelSpec.parameters.append(pb.ParameterSpec(name=key, value=value))
    return spec


async def load(stub: pb_grpc.SchedulerAsyncStub, spec: pb.Model) -> None:
    await stub.LoadModel(pb.LoadModelRequest(model=spec), timeout=CALL_TIMEOUT)


async def refused(call: object) -> aio.AioRpcError:
    """The error a call (an awaitable, or a stream to drain) ends with; fails if it succeeds."""
    try:
        if isinstance(call, aio.UnaryStreamCall):
            [_ async for _ in call]
        else:
            await call  # type: ignore[misc]
    except aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded")


async def all_model_statuses(stub: pb_grpc.SchedulerAsyncStub) -> dict[str, pb.ModelStatusResponse]:
    request = pb.ModelStatusRequest(subscriberName="t", allVersions=True)
    return {s.modelName: s async for s in stub.ModelStatus(request, timeout=CALL_TIMEOUT)}


async def subscription_snapshot(stub: pb_grpc.SchedulerAsyncStub, names: set[str]) -> dict[str, pb.ModelStatusResponse]:
    """What a new SubscribeModelStatus stream says of ``names`` first (its snapshot)."""
    call = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="t"))
    seen: dict[str, pb.ModelStatusResponse] = {}
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            while not names <= seen.keys():
                status = await call.read()
                assert isinstance(status, pb.ModelStatusResponse), f"the stream ended: {await call.code()}"
                seen[status.modelName] = status
    finally:
        call.cancel()
    return seen


@contextlib.asynccontextmanager
async def scheduler_client(
    store: StateStore | None = None,
) -> AsyncIterator[tuple[InProcessScheduler, pb_grpc.SchedulerAsyncStub]]:
    async with in_process_scheduler(store) as running, running.channel() as channel:
        yield running, pb_grpc.SchedulerStub(channel)


# ----------------------------------------------------------------- defect 1: one record breaks status for all


async def test_a_huge_generation_never_breaks_status_for_anyone(tmp_path: Path) -> None:
    """The issue's reproduction against a real scheduler process: generation 2**63-1, then another uri."""
    running = start_scheduler(tmp_path, "--sync-grace=1")
    try:
        async with aio.insecure_channel(running.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            await load(stub, model("iris"))
            codes = []
            for uri in ("gs://models/a", "gs://models/b"):
                try:
                    await load(stub, model("huge", uri=uri, generation=2**63 - 1))
                    codes.append(grpc.StatusCode.OK)
                except aio.AioRpcError as error:
                    codes.append(error.code())
                    assert "generation" in (error.details() or ""), error.details()
            assert running.process.poll() is None
            statuses = await all_model_statuses(stub)
            assert statuses["iris"].versions[-1].version == 1
            assert "iris" in await subscription_snapshot(stub, {"iris"})
            assert codes == [INVALID, INVALID]  # a generation beyond uint32 cannot be a model version
    finally:
        stop_process(running.process)
        STARTED.remove(running.process)


async def test_the_last_version_number_refuses_a_new_version_and_status_still_works() -> None:
    async with scheduler_client() as (running, stub):
        await load(stub, model("iris"))
        await load(stub, model("last", uri="gs://models/a", generation=UINT32_MAX))
        error = await refused(load(stub, model("last", uri="gs://models/b", generation=UINT32_MAX)))
        assert error.code() == PRECONDITION
        assert "4294967295" in (error.details() or ""), error.details()
        assert "unload" in (error.details() or ""), error.details()  # says what to do
        statuses = await all_model_statuses(stub)
        assert [v.version for v in statuses["last"].versions] == [UINT32_MAX]
        assert statuses["last"].versions[-1].modelDefn.modelSpec.uri == "gs://models/a"
        assert {"iris", "last"} <= (await subscription_snapshot(stub, {"iris", "last"})).keys()
        running.core.check_invariants()


async def test_a_record_that_cannot_be_rendered_is_that_model_s_error_and_no_one_else_s() -> None:
    """Robust by construction: plant a record no RPC can create (a version past uint32, what main's overflow
    stored); every status path reports it as that model's own error and goes on with the others."""
    async with scheduler_client() as (running, stub):
        await load(stub, model("iris"))
        await load(stub, model("broken"))
        watch = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="watch"))
        try:
            first = await asyncio.wait_for(watch.read(), CALL_TIMEOUT)
            assert isinstance(first, pb.ModelStatusResponse)
            running.core.cluster.models["broken"].latest.version = 2**32
            scaled = model("broken")
            scaled.deploymentSpec.replicas = 2  # changes the version in place: its status is published
            await load(stub, scaled)
            await load(stub, model("later"))
            seen: dict[str, pb.ModelStatusResponse] = {first.modelName: first}
            async with asyncio.timeout(CALL_TIMEOUT):
                while "later" not in seen:  # the open stream goes on past the broken model
                    status = await watch.read()
                    assert isinstance(status, pb.ModelStatusResponse), await watch.code()
                    seen[status.modelName] = status
            assert seen["broken"].versions[-1].state.state == pb.ModelStatus.ModelFailed
            statuses = await all_model_statuses(stub)
            assert statuses["iris"].versions[-1].version == 1
            broken = statuses["broken"].versions[-1].state
            assert broken.state == pb.ModelStatus.ModelFailed
            assert "cannot report" in broken.reason, broken.reason
            snapshot = await subscription_snapshot(stub, {"iris", "later", "broken"})
            assert snapshot["broken"].versions[-1].state.state == pb.ModelStatus.ModelFailed

            # The reconcile loop lives on: the later model is placed (nowhere, there are no servers).
            async def later_placed() -> bool:
                state = (await all_model_statuses(stub))["later"].versions[-1].state.state
                return state == pb.ModelStatus.ScheduleFailed

            await wait_for_async(later_placed, CALL_TIMEOUT, "the later model's placement")
        finally:
            watch.cancel()


def _store_record(state_dir: Path, records: dict[str, bytes]) -> None:
    async def write() -> None:
        store = await SqliteStateStore.open(state_dir)
        try:
            await store.apply([Put("models", name, value) for name, value in records.items()])
        finally:
            await store.close()

    asyncio.run(write())


def _stored_model(versions: list[tuple[int, pb.Model]]) -> bytes:
    """A model record in the state store's format, as main wrote it (no checks)."""
    entries = [
        {"version": number, "created_at": 1.0, "spec": spec.SerializeToString().hex()} for number, spec in versions
    ]
    return json.dumps({"deleted": False, "versions": entries}).encode()


async def test_a_bad_record_restored_after_kill_9_breaks_nothing(tmp_path: Path) -> None:
    """The state main left behind after the overflow (versions 2**32-1 and 2**32), and a record with nothing
    usable in it, restored by a scheduler that was killed with -9: status works for everyone."""
    state = tmp_path / "state"
    state.mkdir()
    await asyncio.to_thread(
        _store_record,
        state,
        {
            "iris": _stored_model([(1, model("iris"))]),
            "huge": _stored_model(
                [
                    (UINT32_MAX, model("huge", uri="gs://a", generation=2**63 - 1)),
                    (2**32, model("huge", uri="gs://b", generation=2**63 - 1)),
                ]
            ),
            "nothing": _stored_model([(0, model("nothing")), (2**40, model("nothing"))]),
        },
    )
    running = start_scheduler(tmp_path, "--sync-grace=1")
    try:
        async with aio.insecure_channel(running.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            statuses = await all_model_statuses(stub)
            assert [v.version for v in statuses["iris"].versions] == [1]
            # The version past uint32 is dropped (logged); the one that fits is kept.
            assert [v.version for v in statuses["huge"].versions] == [UINT32_MAX]
            assert "nothing" not in statuses  # nothing usable: skipped and logged, kept in the store
            await subscription_snapshot(stub, {"iris", "huge"})
            await load(stub, model("after"))
        os.kill(running.process.pid, signal.SIGKILL)
        running.process.wait()
        STARTED.remove(running.process)
        running = start_scheduler(tmp_path, "--sync-grace=1")
        async with aio.insecure_channel(running.listen) as channel:
            statuses = await all_model_statuses(pb_grpc.SchedulerStub(channel))
            assert {"iris", "huge", "after"} <= statuses.keys()
        assert "nothing" in running.log()
        assert "Traceback" not in running.log()
    finally:
        stop_process(running.process)


# ----------------------------------------------------------------- defect 3: sizes without limits


def test_a_name_or_namespace_with_a_trailing_newline_is_refused() -> None:
    """A pattern ending in ``$`` also matches before a final newline: names are checked whole."""
    from modelplane.spec.errors import InvalidArgument  # noqa: PLC0415
    from modelplane.spec.names import check_name, is_namespace  # noqa: PLC0415

    for name in ("iris\n", "iris\n\n", "\niris"):
        with pytest.raises(InvalidArgument, match="invalid"):
            check_name(name)
    assert not is_namespace("seldon\n")
    assert is_namespace("seldon")


async def test_stored_servers_named_with_a_trailing_newline_are_left_out() -> None:
    """Server records read back from the store pass the request's checks (server_specs.stored_server_problem):
    what no ServerNotify could create is skipped, the others restored."""
    from scheduler.models.server_records import ServerRecord  # noqa: PLC0415
    from scheduler.persistence import MemoryStateStore  # noqa: PLC0415

    store = MemoryStateStore()
    await store.apply(
        [
            Put("servers", name, ServerRecord(name, kubernetes_namespace=namespace).to_bytes())
            for name, namespace in (("mlserver\n", ""), ("triton", "seldon\n"), ("good", "seldon"))
        ]
    )
    async with in_process_scheduler(store) as running, running.channel() as channel:
        stub = pb_grpc.SchedulerStub(channel)
        request = pb.ServerStatusRequest(subscriberName="t")
        names = [s.serverName async for s in stub.ServerStatus(request, timeout=CALL_TIMEOUT)]
        assert names == ["good"]
        running.core.check_invariants()


async def test_a_3_9_mb_parameter_value_is_refused_saying_the_limit_and_the_size() -> None:
    async with scheduler_client() as (_running, stub):
        error = await refused(load(stub, model("big", parameters={"p": "x" * 3_900_000})))
        assert error.code() == INVALID
        details = error.details() or ""
        assert "3900000" in details, details
        assert "limit" in details, details
        assert len(details) < 400, details


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (model("nul", parameters={"a\x00b": "1"}), "parameters[0].name"),
        (model("nul", parameters={"a": "1\x00"}), "parameters[0].value"),
        (model("nul", uri="gs://models/\x00iris"), "uri"),
        (model("nul", uri="gs://models/iris\n"), "uri"),
        (model("nul", parameters={"": "1"}), "parameter name"),
    ],
    ids=["nul-in-parameter-name", "nul-in-parameter-value", "nul-in-uri", "newline-in-uri", "empty-parameter-name"],
)
async def test_control_characters_and_empty_names_are_refused(spec: pb.Model, words: str) -> None:
    async with scheduler_client() as (running, stub):
        error = await refused(load(stub, spec))
        assert error.code() == INVALID, error.details()
        assert words in (error.details() or ""), error.details()
        assert "\x00" not in (error.details() or "")
        assert running.core.cluster.models == {}


async def test_two_versions_with_big_parameters_can_never_outgrow_a_default_client() -> None:
    """On main: two versions of 2.5 MB parameters each made ModelStatus(allVersions) exceed the client's 4 MB."""
    async with scheduler_client() as (_running, stub):
        bulk = {f"p{index}": "x" * 10_000 for index in range(250)}  # 250 parameters of 10 KB: each one is fine
        codes = []
        for uri in ("gs://models/a", "gs://models/b"):
            try:
                await load(stub, model("bulky", uri=uri, parameters=bulk))
                codes.append(grpc.StatusCode.OK)
            except aio.AioRpcError as error:
                codes.append(error.code())
                assert "bytes" in (error.details() or ""), error.details()
        await all_model_statuses(stub)  # a default client (4 MB) reads every version of every model
        assert codes == [INVALID, INVALID]


async def test_server_notify_refuses_floods_duplicates_and_min_above_max() -> None:
    async with scheduler_client() as (running, stub):
        cases = [
            (
                [pb.ServerNotify(name=f"s{i}", expectedReplicas=1) for i in range(10_000)],
                "has 10000 entries; the limit is 1000",
            ),
            ([pb.ServerNotify(name="twice", expectedReplicas=1)] * 2, "'twice' is listed more than once"),
            ([pb.ServerNotify(name="mm", expectedReplicas=1, minReplicas=3, maxReplicas=2)], "minReplicas=3"),
            (
                [pb.ServerNotify(name="ns", kubernetesMeta=pb.KubernetesMeta(namespace="a\x00b"))],
                "kubernetesMeta.namespace",
            ),
        ]
        for servers, words in cases:
            error = await refused(stub.ServerNotify(pb.ServerNotifyRequest(servers=servers), timeout=CALL_TIMEOUT))
            assert error.code() == INVALID, error.details()
            assert words in (error.details() or ""), error.details()
        assert running.core.cluster.servers == {}


async def test_agents_cannot_take_the_scheduler_past_its_server_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """ServerNotify is not the only way a server becomes known: an agent's registration names one too."""
    monkeypatch.setattr(limits, "MAX_SERVERS", 2)
    async with in_process_scheduler() as running:
        first, second = (FakeGrpcAgent(running.listen, server=name) for name in ("one", "two"))
        await first.start()
        await second.start()
        another_replica = FakeGrpcAgent(running.listen, server="two", replica_idx=1)
        await another_replica.start()  # a known server takes more replicas
        third = FakeGrpcAgent(running.listen, server="three")
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await third.start()
        assert refusal.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "knows 2 servers" in (refusal.value.details() or "")
        assert set(running.core.cluster.servers) == {"one", "two"}
        for agent in (first, second, another_replica):
            await agent.close()


async def test_pipelines_and_running_experiments_are_limited_in_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """Their count bounds the state a status stream starts with, as the model and server limits do."""
    monkeypatch.setattr(limits, "MAX_PIPELINES", 2)
    monkeypatch.setattr(limits, "MAX_EXPERIMENTS", 1)
    async with scheduler_client() as (running, stub):
        for name in ("p1", "p2"):
            pipeline = pb.Pipeline(name=name, steps=[pb.PipelineStep(name="iris")])
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline), timeout=CALL_TIMEOUT)
        changed = pb.Pipeline(name="p2", steps=[pb.PipelineStep(name="other")])
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=changed), timeout=CALL_TIMEOUT)  # may still change
        third = pb.Pipeline(name="p3", steps=[pb.PipelineStep(name="iris")])
        error = await refused(stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=third), timeout=CALL_TIMEOUT))
        assert error.code() == EXHAUSTED, error.details()
        assert "holds 2 pipelines" in (error.details() or "")
        assert set(running.core.pipelines.records) == {"p1", "p2"}

        def experiment(name: str, candidate: str) -> pb.StartExperimentRequest:
            candidates = [pb.ExperimentCandidate(name=candidate, weight=1)]
            return pb.StartExperimentRequest(experiment=pb.Experiment(name=name, candidates=candidates))

        await stub.StartExperiment(experiment("e1", "a"), timeout=CALL_TIMEOUT)
        await stub.StartExperiment(experiment("e1", "b"), timeout=CALL_TIMEOUT)  # replacing it is no new one
        error = await refused(stub.StartExperiment(experiment("e2", "a"), timeout=CALL_TIMEOUT))
        assert error.code() == EXHAUSTED, error.details()
        assert "runs 1 experiments" in (error.details() or "")
        await stub.StopExperiment(pb.StopExperimentRequest(name="e1"), timeout=CALL_TIMEOUT)
        await stub.StartExperiment(experiment("e2", "a"), timeout=CALL_TIMEOUT)  # a stopped one does not count
        assert running.core.experiments.running().keys() == {"e2"}
        running.core.check_invariants()


async def test_a_3_mb_reason_in_model_status_event_is_kept_bounded() -> None:
    async with scheduler_client() as (_running, stub):
        await load(stub, model("iris"))
        update = pb.ModelUpdateMessage(op=pb.ModelUpdateMessage.Create, model="iris", version=1)
        message = pb.ModelUpdateStatusMessage(update=update, success=False, reason="r" * 3_000_000)
        await stub.ModelStatusEvent(message, timeout=CALL_TIMEOUT)
        reason = (await all_model_statuses(stub))["iris"].versions[-1].state.modelGwReason
        assert reason.startswith("rrrr")
        assert len(reason) < 5000, len(reason)
        assert "2995904 more characters" in reason or "more characters" in reason


async def test_a_100_kb_name_is_never_echoed() -> None:
    async with scheduler_client() as (_running, stub):
        name = "a" * 100_000
        calls = [
            stub.ModelStatus(pb.ModelStatusRequest(model=pb.ModelReference(name=name)), timeout=CALL_TIMEOUT),
            stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name=name)), timeout=CALL_TIMEOUT),
            stub.ServerStatus(pb.ServerStatusRequest(name=name), timeout=CALL_TIMEOUT),
            stub.ExperimentStatus(pb.ExperimentStatusRequest(name=name), timeout=CALL_TIMEOUT),
            stub.PipelineStatus(pb.PipelineStatusRequest(name=name), timeout=CALL_TIMEOUT),
            stub.StopExperiment(pb.StopExperimentRequest(name=name), timeout=CALL_TIMEOUT),
            stub.UnloadPipeline(pb.UnloadPipelineRequest(name=name), timeout=CALL_TIMEOUT),
            stub.LoadModel(pb.LoadModelRequest(model=model("ok", parameters={name: "1"})), timeout=CALL_TIMEOUT),
            stub.LoadModel(pb.LoadModelRequest(model=model("ok", uri=name)), timeout=CALL_TIMEOUT),
        ]
        for call in calls:
            error = await refused(call)
            assert error.code() == INVALID, error.details()
            details = error.details() or ""
            assert len(details) < 400, details[:500]
            assert sum(len(str(value)) for _, value in error.trailing_metadata() or ()) < 400


async def test_after_a_flood_of_servers_an_unplaceable_model_says_why_briefly() -> None:
    async with scheduler_client() as (running, stub):
        for batch in range(10):
            servers = [pb.ServerNotify(name=f"s{batch}-{i}", expectedReplicas=1) for i in range(1000)]
            await stub.ServerNotify(pb.ServerNotifyRequest(servers=servers), timeout=CALL_TIMEOUT)
        await load(stub, model("nowhere"))

        async def schedule_failed() -> bool:
            state = (await all_model_statuses(stub))["nowhere"].versions[-1].state.state
            return state == pb.ModelStatus.ScheduleFailed

        await wait_for_async(schedule_failed, CALL_TIMEOUT, "ScheduleFailed")
        text = (await all_model_statuses(stub))["nowhere"].versions[-1].state.reason
        assert len(text) <= 4096, len(text)
        assert "and 9995 more servers" in text, text
        assert "server s0-0: " in text, text
        running.core.check_invariants()


async def test_agent_protocol_refuses_bad_registrations() -> None:
    async with in_process_scheduler() as running, running.channel() as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        def register(**changes: object) -> agent_pb2.SessionRequest:
            replica = agent_pb2.ReplicaConfig(
                server_name="mlserver",
                total_memory_bytes=1000 * MiB,
                capabilities=["sklearn"],
                endpoints=agent_pb2.InferenceEndpoints(http_url="http://127.0.0.1:1", grpc_target="127.0.0.1:1"),
            )
            message = agent_pb2.Register(protocol_version=1, agent_id="a", replica=replica)
            for field, value in changes.items():
                target = message.replica if hasattr(message.replica, field) else message
                if field == "http_url":
                    message.replica.endpoints.http_url = str(value)
                elif isinstance(value, list):
                    getattr(target, field).extend(value)
                else:
                    setattr(target, field, value)
            return agent_pb2.SessionRequest(register=message)

        cases = [
            (register(capabilities=["a\x00b"]), "capabilit"),
            (register(capabilities=[f"c{i}" for i in range(10_000)]), "capabilities"),
            (register(agent_id="agent\nforged log line"), "agent_id"),
            (register(agent_id="x" * 100_000), "agent_id"),
            (register(http_url="http://" + "h" * 100_000), "http_url"),
            (register(http_url="http://host\x00/"), "http_url"),
            (
                register(loaded_models=[agent_pb2.LoadedModel(name="iris", version=1)] * 2),
                "'iris' version 1 is listed more than once",
            ),
        ]
        for request, words in cases:
            call = stub.Session()
            await call.write(request)
            error = await refused(call.read())
            assert error.code() == INVALID, error.details()
            assert words in (error.details() or ""), error.details()
            assert len(error.details() or "") < 400
        assert running.core.cluster.servers == {}


async def test_an_agent_s_3_mb_failure_reason_is_kept_bounded() -> None:
    async with scheduler_client() as (running, stub):
        agent = FakeGrpcAgent(running.listen, fail_models={"iris": "f" * 3_000_000})
        await agent.start()
        try:
            await load(stub, model("iris"))

            async def failed() -> bool:
                return (await all_model_statuses(stub))["iris"].versions[-1].state.state == pb.ModelStatus.ModelFailed

            await wait_for_async(failed, CALL_TIMEOUT, "ModelFailed")
            state = (await all_model_statuses(stub))["iris"].versions[-1].state
            assert state.reason.startswith("fff")
            assert len(state.reason) < 5000, len(state.reason)
            running.core.check_invariants()
        finally:
            await agent.close()


# ----------------------------------------------------------------- item 10: empty names, names shared with experiments


async def test_an_empty_name_is_not_a_missing_one() -> None:
    """A missing name asks for everything (Seldon); an empty one is malformed, for every status RPC."""
    async with scheduler_client() as (_running, stub):
        await load(stub, model("iris"))
        everything = [s async for s in stub.ModelStatus(pb.ModelStatusRequest(), timeout=CALL_TIMEOUT)]
        assert [s.modelName for s in everything] == ["iris"]
        calls = [
            stub.ModelStatus(pb.ModelStatusRequest(model=pb.ModelReference(name="")), timeout=CALL_TIMEOUT),
            stub.ServerStatus(pb.ServerStatusRequest(name=""), timeout=CALL_TIMEOUT),
            stub.ExperimentStatus(pb.ExperimentStatusRequest(name=""), timeout=CALL_TIMEOUT),
            stub.PipelineStatus(pb.PipelineStatusRequest(name=""), timeout=CALL_TIMEOUT),
            stub.StopExperiment(pb.StopExperimentRequest(name=""), timeout=CALL_TIMEOUT),
            stub.UnloadPipeline(pb.UnloadPipelineRequest(name=""), timeout=CALL_TIMEOUT),
            stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name="")), timeout=CALL_TIMEOUT),
        ]
        for call in calls:
            error = await refused(call)
            assert error.code() == INVALID, error.details()
            assert "empty" in (error.details() or ""), error.details()


def experiment(name: str, *candidates: str, default: str | None = None, pipelines: bool = False) -> pb.Experiment:
    spec = pb.Experiment(
        name=name,
        candidates=[pb.ExperimentCandidate(name=c, weight=50) for c in candidates],
        resourceType=pb.PIPELINE if pipelines else pb.MODEL,
    )
    if default is not None:
        spec.default = default
    return spec


def pipeline(name: str, step: str = "iris") -> pb.Pipeline:
    return pb.Pipeline(name=name, steps=[pb.PipelineStep(name=step)], output=pb.PipelineOutput(steps=[step]))


async def test_a_name_that_would_make_routing_ambiguous_is_refused_both_ways() -> None:
    async with scheduler_client() as (running, stub):
        await load(stub, model("iris"))
        await load(stub, model("iris2"))
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline("flow")), timeout=CALL_TIMEOUT)

        async def start(spec: pb.Experiment) -> None:
            await stub.StartExperiment(pb.StartExperimentRequest(experiment=spec), timeout=CALL_TIMEOUT)

        # Seldon's case: an experiment in front of its default model, and that model loaded again, both work.
        await start(experiment("ab", "iris", "iris2", default="iris"))
        await load(stub, model("iris", uri="gs://models/iris-v2"))
        # An experiment named like its own default: requests to that name reach the experiment either way.
        await start(experiment("iris2", "iris2", "iris", default="iris2"))

        for spec, words in [
            (experiment("iris", "iris2", "ab-model"), "model 'iris'"),
            (experiment("flow", "iris", "iris2"), "pipeline 'flow'"),
            (experiment("iris", "other", "iris", default="other"), "model 'iris'"),
        ]:
            error = await refused(start(spec))
            assert error.code() == PRECONDITION, error.details()
            assert words in (error.details() or ""), error.details()
            assert "experiment" in (error.details() or ""), error.details()

        error = await refused(load(stub, model("ab")))
        assert error.code() == PRECONDITION, error.details()
        assert "experiment 'ab'" in (error.details() or ""), error.details()
        error = await refused(stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline("ab")), timeout=CALL_TIMEOUT))
        assert error.code() == PRECONDITION, error.details()
        assert "experiment 'ab'" in (error.details() or ""), error.details()

        # Once the experiment is stopped its name is free again.
        await stub.StopExperiment(pb.StopExperimentRequest(name="ab"), timeout=CALL_TIMEOUT)
        await load(stub, model("ab"))
        assert "ab" in running.core.cluster.models
        running.core.check_invariants()


# ----------------------------------------------------------------- the largest messages the limits allow

WIDE = "\U0001f600"  # four bytes of UTF-8 per character: the worst case for a limit counted in characters
LATEST_TIME = 253402300799.999  # 9999-12-31: the widest timestamp


def _largest_allowed_model(name: str, generation: int) -> pb.Model:
    """A Model that passes validate_spec with its serialized size at MAX_MODEL_SPEC_BYTES (within a few bytes)."""
    from modelplane.spec import limits  # noqa: PLC0415 - these tests are about the new limits
    from scheduler.models import model_specs  # noqa: PLC0415

    spec = pb.Model(
        meta=pb.MetaData(name=name, kubernetesMeta=pb.KubernetesMeta(namespace="n" * 63, generation=generation)),
        modelSpec=pb.ModelSpec(uri="s3://" + "u" * (limits.MAX_URI_CHARS - 5), memoryBytes=limits.MAX_MEMORY_BYTES),
        deploymentSpec=pb.DeploymentSpec(replicas=limits.MAX_REPLICAS, maxReplicas=limits.MAX_REPLICAS),
    )
    index = 0
    while spec.ByteSize() < limits.MAX_MODEL_SPEC_BYTES - 200:
        room = limits.MAX_MODEL_SPEC_BYTES - spec.ByteSize() - 40
        value = WIDE * min(limits.MAX_VALUE_CHARS, room // 4)
        spec.modelSpec.parameters.append(pb.ParameterSpec(name=f"p{index}", value=value))
        index += 1
    spec.modelSpec.parameters[-1].value += "v" * (limits.MAX_MODEL_SPEC_BYTES - spec.ByteSize())
    model_specs.validate_spec(spec)
    assert limits.MAX_MODEL_SPEC_BYTES - 8 <= spec.ByteSize() <= limits.MAX_MODEL_SPEC_BYTES
    return spec


def test_the_largest_model_status_the_limits_allow_fits_a_default_client() -> None:
    """Computed, not guessed: every version kept, each with the largest spec, a replica at every index with the
    longest reason (four-byte characters), the longest model and gateway reasons, the widest numbers."""
    from modelplane.spec import limits  # noqa: PLC0415
    from scheduler import status_messages  # noqa: PLC0415
    from scheduler.models.model_records import ModelRecord, ModelVersion, ReplicaAssignment  # noqa: PLC0415
    from scheduler.models.model_state import DerivedState, ModelState  # noqa: PLC0415
    from scheduler.models.replica_state import ReplicaState  # noqa: PLC0415

    name = "m" * limits.MAX_NAME_CHARS
    reason = limits.clean_reason(WIDE * 10 * limits.MAX_REASON_CHARS)
    versions = []
    for offset in range(limits.MAX_MODEL_VERSIONS):
        number = limits.MAX_VERSION - limits.MAX_MODEL_VERSIONS + 1 + offset
        version = ModelVersion(number, _largest_allowed_model(name, number), created_at=LATEST_TIME)
        version.replicas = {
            ("s" * limits.MAX_NAME_CHARS, index): ReplicaAssignment(ReplicaState.LOAD_FAILED, reason, LATEST_TIME)
            for index in range(limits.MAX_SERVER_REPLICAS)
        }
        version.derived = DerivedState(ModelState.FAILED, "failed: " + reason * 3, 2**32 - 1, 2**32 - 1)
        version.state_changed_at = LATEST_TIME
        version.gateway_state, version.gateway_reason = ModelState.FAILED, reason * 3
        versions.append(version)
    record = ModelRecord(name, versions, deleted=True)

    status = status_messages.render_model_status(record, all_versions=True)
    size = status.ByteSize()
    print(f"largest ModelStatusResponse: {size} bytes of {limits.MAX_STATUS_BYTES}")
    assert len(status.versions) == limits.MAX_MODEL_VERSIONS
    assert all(len(v.modelReplicaState) == limits.MAX_SERVER_REPLICAS for v in status.versions)
    assert size <= limits.MAX_STATUS_BYTES
    # The guard lets it through as it is (only the timestamp of the answer differs).
    assert status_messages.model_status(record, all_versions=True).versions == status.versions


def test_the_largest_pipeline_server_experiment_and_route_messages_fit_too() -> None:
    from modelplane.spec import limits  # noqa: PLC0415
    from scheduler import route_messages, status_messages  # noqa: PLC0415
    from scheduler.experiments import ExperimentRecord  # noqa: PLC0415
    from scheduler.models.model_records import ModelRecord, ModelVersion, ReplicaAssignment  # noqa: PLC0415
    from scheduler.models.replica_state import ReplicaState  # noqa: PLC0415
    from scheduler.models.server_records import ReplicaRecord, ServerRecord  # noqa: PLC0415
    from scheduler.pipelines import PipelineRecord, PipelineStatus, PipelineVersion, validate_pipeline  # noqa: PLC0415
    from scheduler.pipelines.pipeline_registry import render_status_response  # noqa: PLC0415

    name = "p" * limits.MAX_NAME_CHARS
    reason = limits.clean_reason(WIDE * 10 * limits.MAX_REASON_CHARS)
    spec = pb.Pipeline(name=name, kubernetesMeta=pb.KubernetesMeta(namespace="n" * 63, generation=2**63 - 1))
    while spec.ByteSize() < limits.MAX_PIPELINE_SPEC_BYTES - 2000:
        step = spec.steps.add(name=f"s{len(spec.steps)}")
        step.tensorMap.update({f"t{i}{WIDE * 100}": WIDE * 100 for i in range(4)})
    spec.output.steps.append("s0")
    validate_pipeline(spec)
    pipeline_versions = []
    for offset in range(limits.MAX_PIPELINE_VERSIONS):
        version = PipelineVersion(limits.MAX_VERSION - offset, "u" * 32, spec, PipelineStatus.FAILED, reason * 3)
        version.gateway_reason, version.changed_at = reason * 3, LATEST_TIME
        pipeline_versions.append(version)
    pipeline_status = render_status_response(PipelineRecord(name, pipeline_versions[::-1]), all_versions=True)

    server = ServerRecord(
        "s" * 63, expected_replicas=1000, kubernetes_namespace="n" * 63, kubernetes_generation=2**63 - 1
    )
    endpoint = "h" * limits.MAX_ENDPOINT_CHARS
    for index in range(limits.MAX_SERVER_REPLICAS):
        server.replicas[index] = ReplicaRecord(
            server.name,
            index,
            frozenset(),
            limits.MAX_MEMORY_BYTES,
            limits.MAX_OVERCOMMIT_PERCENT,
            endpoint,
            endpoint,
            session=None,  # type: ignore[arg-type]
        )
    server_status = status_messages.render_server_status(server)

    experiment = pb.Experiment(
        name=name,
        candidates=[pb.ExperimentCandidate(name=f"{i}" + "c" * 60, weight=1) for i in range(limits.MAX_CANDIDATES)],
        kubernetesMeta=pb.KubernetesMeta(namespace="n" * 63, generation=2**63 - 1),
    )
    experiment_record = ExperimentRecord(experiment, status_description=cut(reason * 50, limits.MAX_REASON_CHARS))
    experiment_status = experiment_record.to_status()

    model_versions = []
    for offset in range(limits.MAX_MODEL_VERSIONS):
        model_version = ModelVersion(limits.MAX_VERSION - offset, pb.Model())
        model_version.replicas = {(server.name, i): ReplicaAssignment(ReplicaState.AVAILABLE) for i in range(1000)}
        model_versions.append(model_version)
    route = route_messages._model_route(name, ModelRecord(name, model_versions[::-1]), {server.name: server})
    pipeline_route = route_messages._pipeline_route(name, PipelineRecord(name, pipeline_versions[::-1]))

    sizes = {
        "PipelineStatusResponse": (pipeline_status.ByteSize(), limits.MAX_STATUS_BYTES),
        "ServerStatusResponse": (server_status.ByteSize(), limits.MAX_STATUS_BYTES),
        "ExperimentStatusResponse": (experiment_status.ByteSize(), limits.MAX_STATUS_BYTES),
        "WatchRoutesResponse(model)": (route.ByteSize(), limits.MAX_STATUS_BYTES),
        "WatchRoutesResponse(pipeline)": (pipeline_route.ByteSize(), limits.MAX_STATUS_BYTES),
    }
    print(sizes)
    assert len(route.model.versions) == limits.MAX_MODEL_VERSIONS
    assert all(size <= bound for size, bound in sizes.values()), sizes


def test_every_string_and_repeated_field_of_every_request_has_a_rule() -> None:
    """limits.FIELD_RULES names every string, repeated and map field reachable from every request of the
    Scheduler API, the RoutingService and the AgentService, and nothing else."""
    from google.protobuf.descriptor import Descriptor, FieldDescriptor  # noqa: PLC0415

    from generated.mlops.agent.v1 import agent_pb2 as apb  # noqa: PLC0415
    from generated.mlops.routing.v1 import routing_pb2  # noqa: PLC0415
    from modelplane.spec import limits  # noqa: PLC0415

    def fields(message: Descriptor, seen: set[str]) -> Iterator[FieldDescriptor]:
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for field in message.fields:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                yield field
            elif field.message_type is not None:
                if field.is_repeated:
                    yield field
                yield from fields(field.message_type, seen)
            elif field.type == FieldDescriptor.TYPE_STRING or field.is_repeated:
                yield field

    services = [
        pb.DESCRIPTOR.services_by_name["Scheduler"],
        routing_pb2.DESCRIPTOR.services_by_name["RoutingService"],
        apb.DESCRIPTOR.services_by_name["AgentService"],
    ]
    seen: set[str] = set()
    reachable = {
        field.full_name
        for service in services
        for method in service.methods
        for field in fields(method.input_type, seen)
    }
    assert reachable - limits.FIELD_RULES.keys() == set()
    assert limits.FIELD_RULES.keys() - reachable == set()


async def test_a_model_keeps_at_most_four_versions() -> None:
    """Inactive versions make room for a new one; versions still on replicas refuse it (RESOURCE_EXHAUSTED)."""
    from modelplane.spec import limits  # noqa: PLC0415
    from modelplane.spec.errors import ResourceExhausted  # noqa: PLC0415
    from tests.support.scheduler_harness import Harness  # noqa: PLC0415

    async with Harness() as h:
        for index in range(10):  # nowhere to place them: every older version is inactive
            await h.load("iris", uri=f"gs://models/iris-{index}")
            await h.settle()
        record = h.core.cluster.models["iris"]
        assert [v.version for v in record.versions] == [7, 8, 9, 10]
        replica = h.add_replica(index=0)
        replica.answering = False  # loads hang: each version keeps its replica
        for index in range(10, 13):
            await h.load("iris", uri=f"gs://models/iris-{index}")
            await h.settle()
        assert [v.version for v in record.versions if not v.inactive] == [11, 12, 13]
        await h.load("iris", uri="gs://models/iris-13")  # drops version 10, the last inactive one
        await h.settle()
        with pytest.raises(ResourceExhausted, match="keeps 4 versions that still have replicas"):
            await h.load("iris", uri="gs://models/iris-14")
        assert len(record.versions) == limits.MAX_MODEL_VERSIONS
        h.core.check_invariants()


async def test_a_version_dropped_while_an_agent_reports_it_leaves_the_record_and_the_replica() -> None:
    """LoadModel drops an inactive version to make room; while its record is being written an agent connects
    holding that very version. The record written is the one that counts: the version is not kept (a fifth
    version, past MAX_MODEL_VERSIONS), and the replica is told to unload it, as it would be after a restart."""
    from scheduler.persistence import Change, MemoryStateStore  # noqa: PLC0415

    class HeldStore(MemoryStateStore):
        """Holds the next write of model ``held``'s record alone (a LoadModel's) until ``release`` is set."""

        def __init__(self) -> None:
            super().__init__()
            self.held: str | None = None
            self.holding = asyncio.Event()
            self.release = asyncio.Event()

        async def apply(self, changes: Sequence[Change]) -> None:
            [first, *rest] = changes
            if not rest and isinstance(first, Put) and (first.table, first.key) == ("models", self.held):
                self.held = None
                self.holding.set()
                await self.release.wait()
            await super().apply(changes)

    store = HeldStore()
    async with scheduler_client(store) as (running, stub):
        for index in range(1, 5):  # nowhere to place them yet: every version is inactive
            await load(stub, model("iris", uri=f"gs://models/iris-{index}"))
        record = running.core.cluster.models["iris"]
        assert [v.version for v in record.versions] == [1, 2, 3, 4]

        store.held = "iris"
        fifth = asyncio.create_task(load(stub, model("iris", uri="gs://models/iris-5")))  # drops version 1
        await asyncio.wait_for(store.holding.wait(), CALL_TIMEOUT)
        agent = FakeGrpcAgent(running.listen, loaded=[("iris", 1, 10 * MiB)], answering=False)
        await agent.start()  # holding version 1: the scheduler takes it as Available there
        try:
            assert record.versions[0].state_of(("mlserver", 0)).name == "AVAILABLE"
            store.release.set()
            await asyncio.wait_for(fifth, CALL_TIMEOUT)

            assert [v.version for v in record.versions] == [2, 3, 4, 5]
            running.core.check_invariants()
            await wait_for(lambda: ("iris", 1) in agent.unloads, CALL_TIMEOUT, "version 1 unloaded from the replica")
            statuses = await all_model_statuses(stub)
            assert [v.version for v in statuses["iris"].versions] == [2, 3, 4, 5]
            running.core.check_invariants()
        finally:
            await agent.close()


def test_a_pipeline_keeps_at_most_four_versions_and_drops_those_that_serve_nothing() -> None:
    from modelplane.spec import limits  # noqa: PLC0415
    from scheduler.pipelines import PipelineRegistry, PipelineStatus  # noqa: PLC0415

    registry = PipelineRegistry()
    ready: set[str] = set()
    for index in range(10):
        prepared = registry.prepare_load(pipeline("flow", step=f"step-{index}"))
        assert prepared is not None
        registry.apply_load(prepared)
        registry.refresh(lambda name: name in ready)
        if index == 2:
            ready.add("step-2")  # version 3 becomes Ready and keeps serving while later ones wait
            registry.refresh(lambda name: name in ready)
    record = registry.records["flow"]
    assert len(record.versions) <= limits.MAX_PIPELINE_VERSIONS
    assert record.versions[-1].version == 10
    assert [v.version for v in record.versions if v.status == PipelineStatus.READY] == [3]
    registry.check_invariants()


_TEXTS = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=st.sampled_from("ab\t\n\r\x00\x1f\x7f\x85\u2028\u00e9"), max_size=12),
    st.integers(0, 3).map(lambda extra: "x" * (limits.MAX_NAME_CHARS + extra - 1)),
    st.integers(0, 3).map(lambda extra: "y" * (limits.MAX_URI_CHARS + extra - 1)),
)


@settings(max_examples=300, deadline=None)
@given(
    name=_TEXTS,
    uri=_TEXTS,
    requirements=st.lists(_TEXTS, max_size=3) | st.integers(255, 258).map(lambda n: ["r"] * n),
    parameters=st.lists(st.tuples(_TEXTS, _TEXTS), max_size=3),
    step_inputs=st.lists(_TEXTS, max_size=2),
    tensor_map=st.dictionaries(_TEXTS, _TEXTS, max_size=3),
)
def test_the_quick_field_check_passes_exactly_what_the_check_naming_the_field_passes(
    *,
    name: str,
    uri: str,
    requirements: list[str],
    parameters: list[tuple[str, str]],
    step_inputs: list[str],
    tensor_map: dict[str, str],
) -> None:
    # check_fields tries a walk that builds no field paths first and walks again naming the field only when that
    # one fails (modelplane/spec/limits.py): both must draw the line at the same place, strings, counts and maps.
    model = pb.Model(
        meta=pb.MetaData(name=name),
        modelSpec=pb.ModelSpec(
            uri=uri,
            requirements=requirements,
            parameters=[pb.ParameterSpec(name=key, value=value) for key, value in parameters],
        ),
    )
    pipeline = pb.Pipeline(name=name, steps=[pb.PipelineStep(name=uri, inputs=step_inputs, tensorMap=tensor_map)])
    for message in (pb.LoadModelRequest(model=model), pb.LoadPipelineRequest(pipeline=pipeline)):
        try:
            limits._check_fields_saying_where(message, "request", InvalidArgument)
        except InvalidArgument:
            passes = False
        else:
            passes = True
        assert limits._fields_ok(message) is passes
