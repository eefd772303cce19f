"""The gateway's Kafka bridge against a real broker (Tansu): requests on ``.inputs`` topics answered on
``.outputs``, failures on the errors topic, resources added and removed, duplicates, at-least-once delivery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import subprocess
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

# aiokafka ships no type information: its names are Any here.
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from gateway.inference_types import InferenceError, JsonObject
from gateway.kafka.bridge import KafkaBridge
from gateway.kafka.settings import KafkaBridgeSettings
from gateway.kafka.topics import Resource, ResourceKind
from tests.support.kafka_broker import (
    KafkaBroker,
    Record,
    consume,
    consume_until,
    create_topics,
    free_port,
    produce,
    start_tansu,
    unique_topic,
)
from tests.support.processes import STARTED, stop_process
from tests.support.waiting import wait_for

pytest_plugins = ["tests.support.kafka_broker"]

REQUEST: JsonObject = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}


class FakeGateway:
    """Stands in for the gateway's routing: doubles every input, remembers each call, and can be told to hold
    requests (to keep them in flight) or to fail for a name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, JsonObject, dict[str, str]]] = []
        self.hold: set[str] = set()  # request ids that wait until released
        self.released = asyncio.Event()
        self.delay = 0.0

    async def infer_model(self, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        return await self._infer("model", name, request, headers)

    async def infer_pipeline(self, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        return await self._infer("pipeline", name, request, headers)

    async def _infer(self, kind: str, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        self.calls.append((kind, name, request, dict(headers)))
        if headers.get("x-request-id") in self.hold:
            await self.released.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if name == "broken":
            raise InferenceError(503, f"no replica of {kind} {name} is available")
        if name == "ghost":
            raise InferenceError(404, f"{kind} {name} not found")
        if name == "buggy":
            raise RuntimeError("a bug in routing")
        if name == "not-json":
            return {"outputs": [{"name": "y", "data": [math.nan]}]}
        outputs = [{**tensor, "data": [value * 2 for value in tensor["data"]]} for tensor in request["inputs"]]
        return {"model_name": name, "outputs": outputs}

    def request_ids(self, kind: str = "model") -> list[str]:
        return [headers["x-request-id"] for called_kind, _, _, headers in self.calls if called_kind == kind]


def bridge_settings(broker: KafkaBroker, **overrides: Any) -> KafkaBridgeSettings:
    """Settings for one test: its own topic prefix and group, so tests sharing the broker never meet."""
    arguments: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap,
        "topic_prefix": unique_topic("mp"),
        "namespace": "ns",
        "group_id": unique_topic("group"),
        "session_timeout_ms": 3000,
        "commit_interval_s": 0.05,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 1.0,
        "metadata_max_age_ms": 1000,
        "revoke_timeout_s": 2.0,
        **overrides,
    }
    return KafkaBridgeSettings(**arguments)


@contextlib.asynccontextmanager
async def running(
    settings: KafkaBridgeSettings, fake: FakeGateway, models: Collection[str], pipelines: Collection[str] = ()
) -> AsyncIterator[KafkaBridge]:
    bridge = KafkaBridge(settings, fake.infer_model, fake.infer_pipeline)
    await bridge.update_resources(models, pipelines)
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


def model(name: str) -> Resource:
    return Resource(ResourceKind.MODEL, name)


def request_value(request_id: str | None = None, data: Sequence[float] = (1.0, 2.0, 3.0)) -> bytes:
    body: JsonObject = {"inputs": [{"name": "x", "shape": [len(data)], "datatype": "FP32", "data": list(data)}]}
    if request_id is not None:
        body["id"] = request_id
    return json.dumps(body).encode()


def header(record: Record, name: str) -> str:
    values: list[str] = [value.decode() for key, value in record.headers if key == name]
    assert len(values) == 1, f"{name} in {record.headers}"
    return values[0]


def ids_of(records: Sequence[Record]) -> list[str]:
    return [header(record, "x-request-id") for record in records]


async def send(
    broker: KafkaBroker, topic: str, value: bytes, *, key: bytes | None = None, rid: str | None = None
) -> None:
    await produce(broker.bootstrap, topic, [value], key=key, headers=[("x-request-id", rid.encode())] if rid else ())


# ---- answering --------------------------------------------------------------------------------------------


async def test_model_requests_come_back_on_outputs_keyed_with_the_request_id(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    inputs, outputs = names.inputs(model("m")), names.outputs(model("m"))
    await create_topics(kafka_broker.bootstrap, [inputs])
    await produce(
        kafka_broker.bootstrap,
        inputs,
        [request_value(data=[1.0])],
        key=b"k1",
        headers=[("seldon-request-id", b"from-seldon"), ("x-request-id", b"ignored"), ("tenant", b"blue")],
    )
    await produce(
        kafka_broker.bootstrap, inputs, [request_value(data=[2.0])], key=b"k2", headers=[("X-Request-Id", b"from-x")]
    )
    await produce(kafka_broker.bootstrap, inputs, [request_value("from-json", data=[3.0])], key=b"k3")
    offsets = await produce(kafka_broker.bootstrap, inputs, [request_value(data=[4.0])])
    fake = FakeGateway()
    async with running(settings, fake, {"m"}):
        answers = await consume(kafka_broker.bootstrap, outputs, 4)
    by_id = {header(record, "x-request-id"): record for record in answers}
    assert set(by_id) == {"from-seldon", "from-x", "from-json", f"{inputs}-0-{offsets[0]}"}
    for request_id, key, number in [("from-seldon", b"k1", 1.0), ("from-x", b"k2", 2.0), ("from-json", b"k3", 3.0)]:
        record = by_id[request_id]
        assert record.key == key
        assert header(record, "content-type") == "application/json"
        body = json.loads(record.value)
        assert body["outputs"][0]["data"] == [number * 2]
        assert body["id"] == request_id
        assert body["model_name"] == "m"
    assert by_id[f"{inputs}-0-{offsets[0]}"].key is None
    # The record's headers reach the model, with the request id the bridge settled on.
    first_headers = next(headers for _, _, _, headers in fake.calls if headers["x-request-id"] == "from-seldon")
    assert first_headers["tenant"] == "blue"
    assert {name for _, name, _, _ in fake.calls} == {"m"}


async def test_pipeline_requests_go_to_the_pipeline_and_its_outputs(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    flow = Resource(ResourceKind.PIPELINE, "flow")
    await create_topics(kafka_broker.bootstrap, [names.inputs(flow)])
    await send(kafka_broker, names.inputs(flow), request_value(data=[5.0]), key=b"p", rid="p1")
    fake = FakeGateway()
    async with running(settings, fake, set(), {"flow"}):
        [answer] = await consume(kafka_broker.bootstrap, names.outputs(flow), 1)
    assert answer.topic == f"{settings.topic_prefix}.ns.pipeline.flow.outputs"
    assert (answer.key, header(answer, "x-request-id")) == (b"p", "p1")
    assert json.loads(answer.value)["outputs"][0]["data"] == [10.0]
    assert [(kind, name) for kind, name, _, _ in fake.calls] == [("pipeline", "flow")]


async def test_the_bridge_creates_the_topics_of_its_resources(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    expected = {names.inputs(model("m")), names.outputs(model("m")), names.errors()}
    async with running(settings, FakeGateway(), {"m"}):
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            listed: set[str] = set()
            deadline = time.monotonic() + 20
            while not expected <= listed and time.monotonic() < deadline:
                listed = set(await admin.list_topics())
                await asyncio.sleep(0.1)
        finally:
            await admin.close()
    assert expected <= listed


# ---- failures ---------------------------------------------------------------------------------------------


async def test_an_inference_error_goes_to_the_errors_topic_not_to_outputs(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    broken = model("broken")
    await create_topics(kafka_broker.bootstrap, [names.inputs(broken)])
    await send(kafka_broker, names.inputs(broken), request_value(), key=b"kb", rid="fails")
    async with running(settings, FakeGateway(), {"broken"}) as bridge:
        [error] = await consume(kafka_broker.bootstrap, names.errors(), 1)
        await wait_for(lambda: bridge.stats.errors == 1, timeout=30, what="error counted")
    assert (error.key, header(error, "x-request-id")) == (b"kb", "fails")
    body = json.loads(error.value)
    assert body["request_id"] == "fails"
    assert (body["kind"], body["name"], body["status"]) == ("model", "broken", 503)
    assert body["message"] == "no replica of model broken is available"
    assert body["topic"] == names.inputs(broken)
    assert bridge.stats.answered == 0
    with pytest.raises(TimeoutError):
        await consume(kafka_broker.bootstrap, names.outputs(broken), 1, timeout=1)


async def test_every_kind_of_failure_is_reported_and_the_good_model_still_served(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    failing = {"ghost": 404, "buggy": 500, "not-json": 502}
    await create_topics(kafka_broker.bootstrap, [names.inputs(model(name)) for name in [*failing, "m"]])
    for name in failing:
        await send(kafka_broker, names.inputs(model(name)), request_value(), rid=f"to-{name}")
    await send(kafka_broker, names.inputs(model("m")), request_value(), rid="to-m")
    async with running(settings, FakeGateway(), {*failing, "m"}):
        errors = await consume(kafka_broker.bootstrap, names.errors(), len(failing))
        [answer] = await consume(kafka_broker.bootstrap, names.outputs(model("m")), 1)
    reported = {json.loads(record.value)["name"]: json.loads(record.value) for record in errors}
    assert {name: body["status"] for name, body in reported.items()} == failing
    assert reported["ghost"]["message"] == "model ghost not found"
    assert reported["buggy"]["message"] == "internal error: RuntimeError"  # no internals leak to the topic
    assert header(answer, "x-request-id") == "to-m"
    for name in failing:
        with pytest.raises(TimeoutError):
            await consume(kafka_broker.bootstrap, names.outputs(model(name)), 1, timeout=0.5)


async def test_malformed_records_go_to_errors_and_the_next_request_is_still_served(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker, max_message_bytes=2000)
    names = settings.topic_names()
    inputs = names.inputs(model("m"))
    await create_topics(kafka_broker.bootstrap, [inputs])
    await send(kafka_broker, inputs, b"\x0a\x04not json", rid="bad-bytes")
    await send(kafka_broker, inputs, b"[1, 2, 3]", rid="bad-array")
    await send(kafka_broker, inputs, b'{"inputs": [' + b" " * 3000 + b"]}", rid="too-big")
    await send(kafka_broker, inputs, request_value(), rid="good")
    fake = FakeGateway()
    async with running(settings, fake, {"m"}):
        errors = await consume(kafka_broker.bootstrap, names.errors(), 3)
        [answer] = await consume(kafka_broker.bootstrap, names.outputs(model("m")), 1)
    statuses = {header(record, "x-request-id"): json.loads(record.value)["status"] for record in errors}
    assert statuses == {"bad-bytes": 400, "bad-array": 400, "too-big": 413}
    assert header(answer, "x-request-id") == "good"
    assert fake.request_ids() == ["good"]  # nothing malformed reached the model


async def test_random_bytes_never_stop_the_bridge(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    inputs = names.inputs(model("m"))
    await create_topics(kafka_broker.bootstrap, [inputs])
    generator = random.Random(20261122)  # noqa: S311  # reproducible junk, not secrets
    junk = [generator.randbytes(generator.randrange(0, 300)) for _ in range(25)]
    junk += [b"", b"null", b"{", b"\xff" * 10, b"[" * 5000, b"1e999999", b'{"inputs": "x"}']
    await produce(kafka_broker.bootstrap, inputs, junk)
    await send(kafka_broker, inputs, request_value(), rid="after-junk")
    fake = FakeGateway()
    async with running(settings, fake, {"m"}) as bridge:
        errors = await consume(kafka_broker.bootstrap, names.errors(), len(junk))
        [answer] = await consume(kafka_broker.bootstrap, names.outputs(model("m")), 1)
        assert bridge.stats.errors == len(junk)
    assert {json.loads(record.value)["status"] for record in errors} == {400}
    assert header(answer, "x-request-id") == "after-junk"


# ---- resources --------------------------------------------------------------------------------------------


async def test_update_resources_adds_and_removes_topics(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    a_in, b_in = names.inputs(model("a")), names.inputs(model("b"))
    fake = FakeGateway()
    async with running(settings, fake, {"a"}) as bridge:
        assert bridge.subscribed_topics == {a_in}
        await create_topics(kafka_broker.bootstrap, [a_in])
        await send(kafka_broker, a_in, request_value(), rid="a1")
        await consume(kafka_broker.bootstrap, names.outputs(model("a")), 1)

        await bridge.update_resources({"b"}, set())
        assert bridge.subscribed_topics == {b_in}
        await send(kafka_broker, a_in, request_value(), rid="a2-after-removal")
        await send(kafka_broker, b_in, request_value(), rid="b1")
        [b_answer] = await consume(kafka_broker.bootstrap, names.outputs(model("b")), 1)
        assert header(b_answer, "x-request-id") == "b1"
        await asyncio.sleep(1.5)  # time in which a2 would have been answered were "a" still consumed
        assert "a2-after-removal" not in fake.request_ids()
        assert len(await consume(kafka_broker.bootstrap, names.outputs(model("a")), 1)) == 1

        # The removed model's record was left uncommitted: adding the model back answers it.
        await bridge.update_resources({"a", "b"}, set())
        answers = await consume(kafka_broker.bootstrap, names.outputs(model("a")), 2)
    assert ids_of(answers) == ["a1", "a2-after-removal"]
    assert fake.request_ids().count("a1") == 1


async def test_illegal_names_are_left_out_and_the_rest_is_served(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    fake = FakeGateway()
    async with running(settings, fake, {"good", "bad name", "slash/name"}) as bridge:
        assert bridge.subscribed_topics == {settings.topic_names().inputs(model("good"))}
        await send(kafka_broker, settings.topic_names().inputs(model("good")), request_value(), rid="g")
        [answer] = await consume(kafka_broker.bootstrap, settings.topic_names().outputs(model("good")), 1)
    assert header(answer, "x-request-id") == "g"


# ---- delivery ---------------------------------------------------------------------------------------------


async def test_a_duplicate_request_id_is_answered_once(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    inputs, outputs = names.inputs(model("m")), names.outputs(model("m"))
    await create_topics(kafka_broker.bootstrap, [inputs])
    # Two copies arrive together (handled concurrently), a third later (after the first was answered).
    await produce(kafka_broker.bootstrap, inputs, [request_value("same"), request_value("same")])
    await create_topics(kafka_broker.bootstrap, [names.inputs(model("n"))])
    fake = FakeGateway()
    fake.delay = 0.3
    async with running(settings, fake, {"m", "n"}) as bridge:
        await consume(kafka_broker.bootstrap, outputs, 1)
        await send(kafka_broker, inputs, request_value("same"))
        await send(kafka_broker, inputs, request_value("other"))
        answers = await consume_until(kafka_broker.bootstrap, outputs, lambda got: "other" in ids_of(got))
        await wait_for(lambda: bridge.stats.duplicates == 2, timeout=30, what="two duplicates counted")
        # Ids are remembered per resource: the same id sent to another model is a different request.
        await send(kafka_broker, names.inputs(model("n")), request_value("same"))
        [other_model] = await consume(kafka_broker.bootstrap, names.outputs(model("n")), 1)
    assert ids_of(answers) == ["same", "other"]
    assert header(other_model, "x-request-id") == "same"
    assert fake.request_ids() == ["same", "other", "same"]
    assert [name for _, name, _, _ in fake.calls] == ["m", "m", "n"]


async def test_stop_finishes_in_flight_requests_and_commits_them(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker)
    names = settings.topic_names()
    inputs, outputs = names.inputs(model("m")), names.outputs(model("m"))
    await create_topics(kafka_broker.bootstrap, [inputs])
    await produce(kafka_broker.bootstrap, inputs, [request_value(f"r{index}") for index in range(4)])
    first = FakeGateway()
    first.delay = 0.5
    async with running(settings, first, {"m"}) as bridge:
        await wait_for(lambda: bridge.in_flight == 4, timeout=30, what="four requests in flight")
    # Leaving the context stopped the bridge: every request in flight was answered, then committed.
    assert len(await consume(kafka_broker.bootstrap, outputs, 4)) == 4

    second = FakeGateway()
    async with running(settings, second, {"m"}):
        await send(kafka_broker, inputs, request_value("marker"))
        await consume_until(kafka_broker.bootstrap, outputs, lambda got: "marker" in ids_of(got))
    assert second.request_ids() == ["marker"]


async def test_abandoned_requests_are_answered_by_the_next_member_of_the_group(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker, drain_timeout_s=0.2)
    names = settings.topic_names()
    inputs, outputs = names.inputs(model("m")), names.outputs(model("m"))
    await create_topics(kafka_broker.bootstrap, [inputs])
    request_ids = [f"r{index}" for index in range(8)]
    await produce(kafka_broker.bootstrap, inputs, [request_value(rid) for rid in request_ids])
    first = FakeGateway()
    first.hold = {"r3", "r6"}  # these never finish in the first bridge: it is stopped with them in flight
    async with running(settings, first, {"m"}) as bridge:
        await wait_for(lambda: bridge.stats.answered == 6, timeout=30, what="six answers")
        await asyncio.sleep(0.3)  # let the commit of what is answered go out
    answered_first = ids_of(await consume(kafka_broker.bootstrap, outputs, 6))
    assert sorted(answered_first) == sorted(set(request_ids) - first.hold)

    second = FakeGateway()
    async with running(settings, second, {"m"}):
        answers = await consume_until(
            kafka_broker.bootstrap, outputs, lambda got: set(request_ids) <= set(ids_of(got)), timeout=40
        )
    assert set(ids_of(answers)) == set(request_ids)  # none missing
    # The commit stopped below r3, the lowest unanswered offset: the second bridge starts there, so r0-r2
    # are not run again, while r4, r5 (answered but above r3) are: at-least-once, duplicates possible.
    assert second.request_ids() == request_ids[3:]


async def test_two_bridges_in_one_group_answer_each_request_once(kafka_broker: KafkaBroker) -> None:
    settings = bridge_settings(kafka_broker, topic_partitions=4)
    names = settings.topic_names()
    inputs, outputs = names.inputs(model("m")), names.outputs(model("m"))
    await create_topics(kafka_broker.bootstrap, [inputs], partitions=4)
    one, two = FakeGateway(), FakeGateway()
    async with running(settings, one, {"m"}) as first, running(settings, two, {"m"}) as second:
        await wait_for(
            lambda: (
                len(first.assignment) + len(second.assignment) == 4
                and bool(first.assignment)
                and bool(second.assignment)
            ),
            timeout=30,
            what="partitions shared by both bridges",
        )
        for index in range(12):
            await produce(kafka_broker.bootstrap, inputs, [request_value(f"r{index}")], partition=index % 4)
        answers = await consume(kafka_broker.bootstrap, outputs, 12)
    assert sorted(ids_of(answers)) == sorted(f"r{index}" for index in range(12))
    assert sorted(one.request_ids() + two.request_ids()) == sorted(f"r{index}" for index in range(12))
    assert one.request_ids()
    assert two.request_ids()


# ---- the broker coming and going ----------------------------------------------------------------------------


def start_tansu_on(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """Tansu on a chosen port (the shared fixture picks its own), so a test can start it after the bridge."""
    process, _ = start_tansu(folder, port, cluster_id="modelplane-bridge-outage")
    STARTED.append(process)  # stopped by PID by the autouse fixture even if this test fails midway
    return process


async def test_a_bridge_started_before_its_broker_serves_once_the_broker_is_up(tmp_path: Path) -> None:
    port = free_port()
    broker = KafkaBroker(f"127.0.0.1:{port}", 0, tmp_path / "unused.log")
    settings = bridge_settings(broker)
    names = settings.topic_names()
    fake = FakeGateway()
    async with running(settings, fake, {"m"}) as bridge:
        await asyncio.sleep(1.0)  # the bridge retries against nothing, and must not give up
        assert bridge.stats.answered == 0
        process = start_tansu_on(port, tmp_path)
        try:
            await send(broker, names.inputs(model("m")), request_value(), rid="late")
            [answer] = await consume(broker.bootstrap, names.outputs(model("m")), 1, timeout=40)
            assert header(answer, "x-request-id") == "late"
        finally:
            await bridge.stop()
            stop_process(process)


async def test_the_bridge_rides_out_a_broker_restart(tmp_path: Path) -> None:
    port = free_port()
    broker = KafkaBroker(f"127.0.0.1:{port}", 0, tmp_path / "unused.log")
    # The answer to "before" is still uncommitted when the broker stops (commits wait 30 s), and "after" goes to
    # the same partition: a commit of the old log's offset retried onto the new log would hide "after" for good.
    settings = bridge_settings(broker, commit_interval_s=30)
    names = settings.topic_names()
    inputs, outputs = names.inputs(model("m")), names.outputs(model("m"))
    fake = FakeGateway()
    process = start_tansu_on(port, tmp_path)
    try:
        async with running(settings, fake, {"m"}) as bridge:
            await send(broker, inputs, request_value(), key=b"one-partition", rid="before")
            await consume(broker.bootstrap, outputs, 1)
            assignments = bridge.stats.assignments
            stop_process(process)
            await asyncio.sleep(1.0)  # the bridge sees the broker gone
            # Tansu keeps topics and groups in memory: the restarted broker has neither. The bridge's consumer is
            # told its member id is unknown, joins again, and on that assignment the bridge recreates its topics.
            process = start_tansu_on(port, tmp_path)
            await wait_for(
                lambda: bridge.stats.assignments > assignments and bool(bridge.assignment),
                timeout=60,
                what="partitions assigned again",
            )
            await send(broker, inputs, request_value(), key=b"one-partition", rid="after")
            [answer] = await consume(broker.bootstrap, outputs, 1, timeout=40)
            assert header(answer, "x-request-id") == "after"
    finally:
        stop_process(process)
    assert fake.request_ids() == ["before", "after"]


async def test_an_unexpected_failure_in_the_consume_loop_restarts_it(kafka_broker: KafkaBroker) -> None:
    # One slot: had the failed admission kept it, nothing could be answered afterwards.
    settings = bridge_settings(kafka_broker, max_in_flight=1)
    names = settings.topic_names()
    inputs = names.inputs(model("m"))
    await create_topics(kafka_broker.bootstrap, [inputs])
    await send(kafka_broker, inputs, request_value(), rid="survivor")
    fake = FakeGateway()
    bridge = KafkaBridge(settings, fake.infer_model, fake.infer_pipeline)
    admit = bridge._admit
    failures: list[int] = []

    def admit_failing_once(partition: Any, record: Any) -> bool:
        if not failures:
            failures.append(record.offset)
            raise RuntimeError("a bug between fetching and handling")
        return admit(partition, record)

    bridge._admit = admit_failing_once  # type: ignore[method-assign]
    await bridge.update_resources({"m"}, set())
    await bridge.start()
    try:
        [answer] = await consume(kafka_broker.bootstrap, names.outputs(model("m")), 1)
    finally:
        await bridge.stop()
    assert failures == [0]
    assert header(answer, "x-request-id") == "survivor"
    assert fake.request_ids() == ["survivor"]
