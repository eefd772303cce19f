"""Issue 11, Audit: every mutation of the Scheduler API appears once in the audit log, with the caller, the
resource, the versions around it and the result the client saw, refusals too (invalid input, not found, the
request limits, an access check's); the line is on disk before the answer, so kill -9 right after an
acknowledged LoadModel keeps it; its request id is in the scheduler's log; ``modelplane audit`` filters it.

Against a real ``modelplane scheduler`` process, except where a test plays the access check that the auth work
puts in front of the audit (the real servicers on a real gRPC server in this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import threading
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc import aio
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.mlops.chainer import chainer_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import parse_address
from modelplane.audit import AuditLog, AuditLogError, AuditRecord, RotatingFile
from modelplane.audit.audit_reader import BadLine, read_log
from modelplane.audit.audit_record import MAX_MESSAGE_CHARS, MAX_NAME_CHARS
from modelplane.bounded_text import cut, one_line
from modelplane.transport import TransportSecurity, open_channel
from scheduler import resource_versions
from scheduler.audit_interceptor import AUDITED, AuditInterceptor
from scheduler.core import SchedulerCore
from tests.support.auth_material import token_line
from tests.support.processes import SchedulerProcess, run_modelplane, start_scheduler, stop_process
from tests.support.scheduler_calls import PROPERTY_SETTINGS, Call, Stubs, invoke, plant_anchors, unary_calls
from tests.support.scheduler_in_process import in_process_scheduler
from tests.support.waiting import wait_for

CALL_TIMEOUT = 20.0
MiB = 1024 * 1024
PREFIX = "/seldon.mlops.scheduler.Scheduler/"
Versions = tuple[int | None, int | None]  # a resource's live version before and after a call


def model(name: str, uri: str = "gs://models/iris") -> pb.Model:
    return pb.Model(
        meta=pb.MetaData(name=name, kubernetesMeta=pb.KubernetesMeta(namespace="seldon-mesh", generation=1)),
        modelSpec=pb.ModelSpec(uri=uri, requirements=["sklearn"], memoryBytes=10 * MiB),
        deploymentSpec=pb.DeploymentSpec(replicas=1),
    )


def pipeline(name: str) -> pb.Pipeline:
    return pb.Pipeline(
        name=name,
        steps=[pb.PipelineStep(name="pre"), pb.PipelineStep(name="model", inputs=["pre.outputs"])],
        output=pb.PipelineOutput(steps=["model"]),
    )


@dataclass(frozen=True)
class Expected:
    """What the audit line of one call must say: the client's answer, and the versions around it."""

    method: str
    kind: str
    name: str
    code: str
    message: str
    before: int | None
    after: int | None


def audit_lines(path: Path) -> list[AuditRecord]:
    items = list(read_log(path))
    assert not [item for item in items if isinstance(item, BadLine)], items
    return [item for item in items if isinstance(item, AuditRecord)]


async def answer(call: Awaitable[Any]) -> tuple[str, str]:
    """The status code name and message a client saw for one call."""
    try:
        await call
    except aio.AioRpcError as error:
        return error.code().name, error.details() or ""
    return "OK", ""


async def test_every_mutation_appears_once_with_the_result_the_client_saw(tmp_path: Path) -> None:
    running = start_scheduler(tmp_path)
    expected: list[Expected] = []
    try:
        async with aio.insecure_channel(running.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)

            async def call(method: str, request: Any, resource: tuple[str, str], versions: Versions) -> str:
                code, message = await answer(getattr(stub, method)(request, timeout=CALL_TIMEOUT))
                expected.append(Expected(method, *resource, code, message, *versions))
                return code

            iris, flow, ab = ("model", "iris"), ("pipeline", "flow"), ("experiment", "ab")
            huge = "a" * 10_000
            load, changed = pb.LoadModelRequest(model=model("iris")), pb.LoadModelRequest(model=model("iris", "gs://b"))
            assert await call("LoadModel", load, iris, (None, 1)) == "OK"
            assert await call("LoadModel", load, iris, (1, 1)) == "OK"  # the same again: no new version
            assert await call("LoadModel", changed, iris, (1, 2)) == "OK"
            assert await call("LoadModel", pb.LoadModelRequest(), ("model", ""), (None, None)) == "INVALID_ARGUMENT"
            bad_name = pb.LoadModelRequest(model=model("Bad_Name"))
            assert await call("LoadModel", bad_name, ("model", "Bad_Name"), (None, None)) == "INVALID_ARGUMENT"
            too_long = pb.LoadModelRequest(model=model(huge))  # refused by the request limits, before the handler
            assert await call("LoadModel", too_long, ("model", huge), (None, None)) == "INVALID_ARGUMENT"
            unknown = pb.UnloadModelRequest(model=pb.ModelReference(name="never"))
            assert await call("UnloadModel", unknown, ("model", "never"), (None, None)) != "OK"
            assert (
                await call("LoadPipeline", pb.LoadPipelineRequest(pipeline=pipeline("flow")), flow, (None, 1)) == "OK"
            )
            [status] = [s async for s in stub.PipelineStatus(pb.PipelineStatusRequest(name="flow"), timeout=10)]
            update = chainer_pb2.PipelineUpdateMessage(
                op=chainer_pb2.PipelineUpdateMessage.Create,
                pipeline="flow",
                version=1,
                uid=status.versions[-1].pipeline.uid,
            )
            ack = chainer_pb2.PipelineUpdateStatusMessage(update=update, success=True)
            assert await call("PipelineStatusEvent", ack, flow, (1, 1)) == "OK"
            model_ack = pb.ModelUpdateStatusMessage(update=pb.ModelUpdateMessage(model="iris", version=2), success=True)
            assert await call("ModelStatusEvent", model_ack, iris, (2, 2)) == "OK"
            assert await call("UnloadPipeline", pb.UnloadPipelineRequest(name="flow"), flow, (1, None)) == "OK"
            never = pb.UnloadPipelineRequest(name="never")
            assert await call("UnloadPipeline", never, ("pipeline", "never"), (None, None)) != "OK"
            candidates = [pb.ExperimentCandidate(name="iris", weight=100)]
            start = pb.StartExperimentRequest(
                experiment=pb.Experiment(name="ab", default="iris", candidates=candidates)
            )
            assert await call("StartExperiment", start, ab, (None, None)) == "OK"
            assert await call("StopExperiment", pb.StopExperimentRequest(name="ab"), ab, (None, None)) == "OK"
            stop_never = pb.StopExperimentRequest(name="never")
            assert (
                await call("StopExperiment", stop_never, ("experiment", "never"), (None, None)) == "FAILED_PRECONDITION"
            )
            servers = [pb.ServerNotify(name="mlserver", expectedReplicas=1), pb.ServerNotify(name="triton")]
            notify = pb.ServerNotifyRequest(servers=servers)
            assert await call("ServerNotify", notify, ("servers", "mlserver,triton"), (None, None)) == "OK"
            unload = pb.UnloadModelRequest(model=pb.ModelReference(name="iris"))
            assert await call("UnloadModel", unload, iris, (2, None)) == "OK"
            # Calls that change nothing are not audited.
            await stub.SchedulerStatus(pb.SchedulerStatusRequest(subscriberName="t"), timeout=CALL_TIMEOUT)
            [_ async for _ in stub.ModelStatus(pb.ModelStatusRequest(subscriberName="t"), timeout=CALL_TIMEOUT)]
    finally:
        assert stop_process(running.process) == 0

    lines = audit_lines(running.state_dir / "audit.log")
    seen = [
        Expected(
            line.method,
            line.resource.kind if line.resource else "",
            line.resource_name,
            line.code,
            line.message,
            line.version_before,
            line.version_after,
        )
        for line in lines
    ]
    # The oversized name is kept as its first characters only (the audit line is bounded whatever comes).
    cut_name = huge[: MAX_NAME_CHARS - 3] + "..."
    assert seen == [replace(e, name=cut_name) if e.name == huge else e for e in expected]
    assert all(line.rpc == PREFIX + line.method for line in lines)
    assert all((line.identity, line.credential, line.roles) == ("", "none", ()) for line in lines)  # no access check
    assert all(line.peer.startswith("ipv4:127.0.0.1:") for line in lines)
    loads = [line.resource for line in lines if line.resource and line.method == "LoadModel" and line.resource.name]
    assert {resource.namespace for resource in loads} == {"seldon-mesh"}
    request_ids = [line.request_id for line in lines]
    assert len(set(request_ids)) == len(lines)
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in request_ids)
    # Each line can be matched to what the scheduler logged while serving its call.
    log = running.log()
    assert all(f"request_id={rid}" in log for rid in request_ids)
    # No request body: the model's URI is nowhere in the audit log.
    assert b"gs://" not in (running.state_dir / "audit.log").read_bytes()

    check_audit_command(running, lines)


def check_audit_command(running: SchedulerProcess, lines: list[AuditRecord]) -> None:
    """`modelplane audit` over the log the scheduler wrote: each filter keeps exactly the lines it names."""
    path = running.state_dir / "audit.log"

    def audit(*flags: str) -> list[AuditRecord]:
        result = run_modelplane("audit", f"--audit-log={path}", "--output=json", *flags)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        return [AuditRecord.from_document(json.loads(line)) for line in result.stdout.splitlines()]

    assert audit() == lines
    as_yaml = run_modelplane("audit", f"--audit-log={path}", "--output=yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert [AuditRecord.from_document(doc) for doc in yaml.safe_load_all(as_yaml.stdout)] == lines  # one per record
    assert audit("--resource=iris") == [line for line in lines if line.resource_name == "iris"]
    assert audit("--rpc=UnloadPipeline") == [line for line in lines if line.method == "UnloadPipeline"]
    assert audit(f"--rpc={PREFIX}StopExperiment") == [line for line in lines if line.method == "StopExperiment"]
    assert audit("--result=refused") == [line for line in lines if line.code != "OK"]
    assert audit("--result=failed_precondition") == [line for line in lines if line.code == "FAILED_PRECONDITION"]
    assert audit("--identity=") == lines
    assert audit("--identity=spiffe://example.org/ci") == []
    assert audit("--since=1h") == lines
    middle = lines[len(lines) // 2].time
    assert audit(f"--since={middle.isoformat()}") == [line for line in lines if line.time >= middle]
    assert audit(f"--until={middle.isoformat()}") == [line for line in lines if line.time < middle]
    table = run_modelplane("audit", f"--audit-log={path}", "--resource=iris", "--rpc=LoadModel")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["TIME", "IDENTITY", "PEER", "RPC", "RESOURCE", "VERSION", "RESULT", "REQUEST", "MESSAGE"]
    assert len(rows) == 1 + 3
    assert all("seldon-mesh/model/iris" in row for row in rows[1:])
    assert [row.split()[1:] for row in rows[1:]] == [
        ["(anonymous)", line.peer, "LoadModel", "seldon-mesh/model/iris", version, "OK", line.request_id]
        for line, version in zip(
            [line for line in lines if line.method == "LoadModel"][:3], ["none->1", "1->1", "1->2"], strict=True
        )
    ]


async def test_an_undecodable_mutation_is_refused_as_invalid_and_audited(tmp_path: Path) -> None:
    """Bytes that are no LoadModelRequest never reach a handler: the refusal is still audited, and says
    INVALID_ARGUMENT (the client's input is malformed), not UNKNOWN."""
    running = start_scheduler(tmp_path)
    try:
        async with aio.insecure_channel(running.listen) as channel:
            for method in ("LoadModel", "UnloadPipeline"):
                # bytes in, bytes out: no serializer
                raw: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PREFIX + method)
                code, message = await answer(raw(b"\xff\xff\xff", timeout=CALL_TIMEOUT))
                assert code == "INVALID_ARGUMENT", message
                assert f"not a valid {method}Request" in message
    finally:
        assert stop_process(running.process) == 0
    lines = audit_lines(running.state_dir / "audit.log")
    assert [(line.method, line.resource, line.code) for line in lines] == [
        ("LoadModel", None, "INVALID_ARGUMENT"),
        ("UnloadPipeline", None, "INVALID_ARGUMENT"),
    ]


async def test_kill_9_right_after_an_acknowledged_load_keeps_its_line(tmp_path: Path) -> None:
    running = start_scheduler(tmp_path)
    async with aio.insecure_channel(running.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        await stub.LoadModel(pb.LoadModelRequest(model=model("iris")), timeout=CALL_TIMEOUT)
        os.kill(running.process.pid, signal.SIGKILL)  # at once: no graceful stop, nothing flushed at exit
    assert running.process.wait(timeout=CALL_TIMEOUT) == -signal.SIGKILL
    [line] = audit_lines(running.state_dir / "audit.log")
    assert (line.method, line.resource_name, line.code, line.version_after) == ("LoadModel", "iris", "OK", 1)

    # The next scheduler on the same state dir appends to the same log.
    again = start_scheduler(tmp_path)
    try:
        async with aio.insecure_channel(again.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            await stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name="iris")), timeout=CALL_TIMEOUT)
    finally:
        assert stop_process(again.process) == 0
    lines = audit_lines(running.state_dir / "audit.log")
    assert [(line.method, line.version_before, line.version_after) for line in lines] == [
        ("LoadModel", None, 1),
        ("UnloadModel", 1, None),
    ]


async def test_the_audit_log_flags_choose_the_file_and_its_rotation(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "trail.log"
    running = start_scheduler(tmp_path, f"--audit-log={path}", "--audit-log-max-bytes=4KiB", "--audit-log-keep=2")
    try:
        async with aio.insecure_channel(running.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            for number in range(30):
                await stub.LoadModel(pb.LoadModelRequest(model=model(f"model-{number}")), timeout=CALL_TIMEOUT)
    finally:
        assert stop_process(running.process) == 0
    assert not (running.state_dir / "audit.log").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["trail.log", "trail.log.1", "trail.log.2"]
    assert all(p.stat().st_size <= 4096 for p in path.parent.iterdir())
    names = [line.resource_name for line in audit_lines(path)]
    assert names == [f"model-{number}" for number in range(30 - len(names), 30)]  # the newest, whole, in order


async def test_audit_stdout_writes_the_lines_to_standard_output(tmp_path: Path) -> None:
    running = start_scheduler(tmp_path, "--audit-stdout")  # its stdout and stderr go to scheduler.log
    try:
        async with aio.insecure_channel(running.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            await stub.LoadModel(pb.LoadModelRequest(model=model("iris")), timeout=CALL_TIMEOUT)
    finally:
        assert stop_process(running.process) == 0
    assert not (running.state_dir / "audit.log").exists()
    [line] = [json.loads(text) for text in running.log().splitlines() if text.startswith('{"time"')]
    assert (line["rpc"], line["resource"]["name"], line["code"]) == (PREFIX + "LoadModel", "iris", "OK")


def test_bad_audit_flags_are_usage_errors(tmp_path: Path) -> None:
    for flags in (
        ["--audit-log-max-bytes=1"],
        ["--audit-log-keep=0"],
        ["--audit-log-keep=many"],
        ["--audit-stdout", f"--audit-log={tmp_path / 'audit.log'}"],
    ):
        result = run_modelplane("scheduler", f"--state-dir={tmp_path}", *flags)
        assert result.returncode == 2, result.stderr
        assert "audit-log" in result.stderr
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = run_modelplane(
        "scheduler",
        "--listen=127.0.0.1:0",
        "--agent-listen=127.0.0.1:0",
        f"--state-dir={tmp_path / 'state'}",
        f"--audit-log={blocked / 'audit.log'}",
    )
    assert result.returncode == 1
    assert "cannot open the audit log" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------ with an access check in front


async def test_the_access_checks_refusals_and_the_callers_identity_are_audited_once(tmp_path: Path) -> None:
    tokens, policy = tmp_path / "tokens", tmp_path / "policy.yaml"
    tokens.write_text(token_line("ci-token", "ci", "deployers") + token_line("viewer-token", "team-viewer"))
    policy.write_text("identities:\n  team-viewer: [viewer]\ngroups:\n  deployers: [operator]\n")
    running = start_scheduler(tmp_path, f"--auth-tokens={tokens}", f"--auth-policy={policy}")
    try:
        address = parse_address(running.listen)
        unload = pb.UnloadModelRequest(model=pb.ModelReference(name="iris"))
        async with open_channel(address, TransportSecurity(), "ci-token") as channel:
            await pb_grpc.SchedulerStub(channel).LoadModel(pb.LoadModelRequest(model=model("iris")), timeout=30)
            bad_name = pb.LoadModelRequest(model=model("Bad_Name"))
            assert (await answer(pb_grpc.SchedulerStub(channel).LoadModel(bad_name)))[0] == "INVALID_ARGUMENT"
        async with open_channel(address, TransportSecurity(), "viewer-token") as channel:
            refused = await answer(pb_grpc.SchedulerStub(channel).UnloadModel(unload, timeout=30))
            await pb_grpc.SchedulerStub(channel).SchedulerStatus(pb.SchedulerStatusRequest(), timeout=30)  # no line
        async with open_channel(address, TransportSecurity()) as channel:
            anonymous = await answer(pb_grpc.SchedulerStub(channel).UnloadModel(unload, timeout=30))
    finally:
        assert stop_process(running.process) == 0
    assert refused[0] == "PERMISSION_DENIED"
    assert anonymous[0] == "UNAUTHENTICATED"

    lines = audit_lines(running.state_dir / "audit.log")
    assert [(line.identity, line.credential, line.roles, line.method, line.code) for line in lines] == [
        ("ci", "token", ("operator",), "LoadModel", "OK"),
        ("ci", "token", ("operator",), "LoadModel", "INVALID_ARGUMENT"),
        ("team-viewer", "token", ("viewer",), "UnloadModel", "PERMISSION_DENIED"),
        ("", "none", (), "UnloadModel", "UNAUTHENTICATED"),
    ]
    assert [(line.message, line.resource_name) for line in lines[2:]] == [(refused[1], "iris"), (anonymous[1], "iris")]
    assert (lines[2].version_before, lines[2].version_after) == (None, None)  # refused before any lookup
    assert len({line.request_id for line in lines}) == 4
    # Each line's request id names the log lines written while its call was served.
    assert f"request_id={lines[1].request_id}" in running.log()


class FullDisk:
    """A sink whose every write fails, like a file on a full disk."""

    def append_many(self, lines: Sequence[bytes]) -> None:
        raise AuditLogError("cannot write the audit log /full/audit.log: No space left on device")

    def close(self) -> None:
        pass


async def test_a_change_whose_audit_line_cannot_be_written_is_not_acknowledged() -> None:
    audit = AuditLog(FullDisk())

    def interceptors(core: SchedulerCore) -> Sequence[aio.ServerInterceptor]:
        return [AuditInterceptor(audit, lambda resource: resource_versions.live_version(core, resource))]

    async with in_process_scheduler(outer_interceptors=interceptors) as running, running.channel() as channel:
        stub = pb_grpc.SchedulerStub(channel)
        with pytest.raises(aio.AioRpcError) as failed:
            await stub.LoadModel(pb.LoadModelRequest(model=model("iris")), timeout=CALL_TIMEOUT)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert "the change was applied, but its audit line could not be written" in (failed.value.details() or "")
        assert "No space left on device" in (failed.value.details() or "")
        assert "iris" in running.core.cluster.models  # applied: the retry the message invites changes nothing more
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.LoadModel(pb.LoadModelRequest(model=model("Bad_Name")), timeout=CALL_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # a refusal stays what it was


# ------------------------------------------------------------------------ any call, hostile or not


@pytest.fixture
def process_with_anchors(tmp_path: Path) -> Iterator[tuple[asyncio.Runner, Stubs, Path]]:
    running = start_scheduler(tmp_path, "--sync-grace=1")
    try:
        with asyncio.Runner() as runner:
            stack = contextlib.AsyncExitStack()
            api = runner.run(stack.enter_async_context(aio.insecure_channel(running.listen)))
            runner.run(plant_anchors(Stubs.on(api)))
            try:
                yield runner, Stubs.on(api), running.state_dir / "audit.log"
            finally:
                runner.run(stack.aclose())
    finally:
        assert stop_process(running.process) == 0
        assert "Traceback" not in running.log()


@settings(PROPERTY_SETTINGS, max_examples=60)
@given(calls=st.lists(unary_calls(), min_size=1, max_size=4))
def test_any_call_is_audited_once_exactly_when_it_is_a_mutation(
    process_with_anchors: tuple[asyncio.Runner, Stubs, Path], calls: list[Call]
) -> None:
    """Whatever the requests hold (hostile names, huge fields, numbers past every limit), each call of a mutating
    RPC adds exactly one line, with the code and message its client got, before the answer; other calls add none."""
    runner, stubs, path = process_with_anchors
    before = len(audit_lines(path))
    outcomes = [runner.run(invoke(stubs, call)) for call in calls]
    added = audit_lines(path)[before:]
    assert [(line.method, line.code, line.message) for line in added] == [
        (call.rpc, outcome.code.name, cut(one_line(outcome.details), MAX_MESSAGE_CHARS))
        for call, outcome in zip(calls, outcomes, strict=True)
        if call.rpc in AUDITED
    ]


class HeldLines:
    """A file sink whose writes wait until the test lets them go."""

    def __init__(self, path: Path) -> None:
        self.file = RotatingFile(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    def append_many(self, lines: Sequence[bytes]) -> None:
        self.entered.set()
        assert self.release.wait(60), "the test never released the sink"
        self.file.append_many(lines)

    def close(self) -> None:
        self.file.close()


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.LoadModelRequest(model=model("iris")), grpc.StatusCode.OK),
        (pb.LoadModelRequest(model=model("Bad_Name")), grpc.StatusCode.INVALID_ARGUMENT),  # the handler refuses
        (pb.LoadModelRequest(model=model("a" * 1000)), grpc.StatusCode.INVALID_ARGUMENT),  # the limits refuse
    ],
)
async def test_no_answer_leaves_before_its_audit_line_is_written(
    tmp_path: Path, request_: pb.LoadModelRequest, code: grpc.StatusCode
) -> None:
    """grpc.aio sends a refusal when the handler calls context.abort, before the handler's exception reaches the
    interceptor: the audit line must be written before that, not after."""
    sink = HeldLines(tmp_path / "audit.log")
    audit = AuditLog(sink)

    def interceptors(core: SchedulerCore) -> Sequence[aio.ServerInterceptor]:
        return [AuditInterceptor(audit, lambda resource: resource_versions.live_version(core, resource))]

    try:
        async with in_process_scheduler(outer_interceptors=interceptors) as running, running.channel() as channel:
            stub = pb_grpc.SchedulerStub(channel)
            call = asyncio.ensure_future(answer(stub.LoadModel(request_, timeout=60)))
            await wait_for(sink.entered.is_set, what="the audit line's write to begin")
            # While the line is being written the answer must not arrive (given a second to do so if it were sent).
            done, _ = await asyncio.wait([call], timeout=1.0)
            assert not done, f"answered {call.result()} before its audit line was written"
            sink.release.set()
            assert (await call)[0] == code.name
    finally:
        sink.release.set()
        audit.close()
    [line] = audit_lines(tmp_path / "audit.log")
    assert line.code == code.name
