"""The gateway's Kafka records, topic names and delivery bookkeeping, without a broker."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.edges.v2_grpc_codec import encode_infer_request
from gateway.inference_types import MAX_REQUEST_ID_CHARS, InferenceError
from gateway.kafka.messages import (
    DecodedRequest,
    MalformedRecordError,
    answer_headers,
    decode_request,
    encode_error,
    encode_response,
    usable_request_id,
)
from gateway.kafka.settings import KafkaBridgeSettings
from gateway.kafka.topics import Resource, ResourceKind, TopicNames, is_valid_topic_name
from generated.inference.v2 import grpc_predict_v2_pb2 as v2_pb
from modelplane.kafka_delivery import OffsetTracker, RecentIds

MODEL = Resource(ResourceKind.MODEL, "iris")
PIPELINE = Resource(ResourceKind.PIPELINE, "flow")
REQUEST = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}


def decode(value: bytes | None, headers: list[tuple[Any, Any]] | None = None, *, limit: int = 10_000) -> DecodedRequest:
    return decode_request(value, headers or [], topic="t.inputs", partition=3, offset=17, max_value_bytes=limit)


def malformed(
    value: bytes | None, headers: list[tuple[Any, Any]] | None = None, *, limit: int = 10_000
) -> MalformedRecordError:
    with pytest.raises(MalformedRecordError) as caught:
        decode(value, headers, limit=limit)
    return caught.value


# ---- topic names ------------------------------------------------------------------------------------------


def test_topics_are_named_as_seldon_names_them() -> None:
    names = TopicNames("seldon", "prod")
    assert names.inputs(MODEL) == "seldon.prod.model.iris.inputs"
    assert names.outputs(MODEL) == "seldon.prod.model.iris.outputs"
    assert names.inputs(PIPELINE) == "seldon.prod.pipeline.flow.inputs"
    assert names.outputs(PIPELINE) == "seldon.prod.pipeline.flow.outputs"
    assert names.errors() == "seldon.prod.errors"
    assert TopicNames("seldon", "prod", "my-errors").errors() == "my-errors"
    assert TopicNames().inputs(MODEL) == "seldon.default.model.iris.inputs"


@pytest.mark.parametrize("name", ["has space", "slash/name", "a" * 240, "ünïcode", "", "colon:name"])
def test_names_kafka_cannot_carry_are_not_usable(name: str) -> None:
    assert not TopicNames().usable(Resource(ResourceKind.MODEL, name))


@given(st.text(max_size=300))
def test_topic_name_rule_matches_kafkas(name: str) -> None:
    legal = (
        name not in {".", ".."}
        and 0 < len(name) <= 249
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    )
    assert is_valid_topic_name(name) == legal


# ---- request ids ------------------------------------------------------------------------------------------


def test_request_id_prefers_seldon_header_then_x_request_id_then_json_id_then_record_position() -> None:
    body = json.dumps({**REQUEST, "id": "from-json"}).encode()
    both = [("seldon-request-id", b"from-seldon"), ("x-request-id", b"from-x")]
    assert decode(body, both).request_id == "from-seldon"
    assert decode(body, [("X-Request-ID", b"from-x")]).request_id == "from-x"
    assert decode(body).request_id == "from-json"
    assert decode(json.dumps(REQUEST).encode()).request_id == "t.inputs-3-17"


@pytest.mark.parametrize("bad_id", [b"", b"\xff\xfe", b"line\nbreak", b"x" * (MAX_REQUEST_ID_CHARS + 1), b"bell\x07"])
def test_unusable_header_ids_are_skipped(bad_id: bytes) -> None:
    body = json.dumps({**REQUEST, "id": "from-json"}).encode()
    assert decode(body, [("x-request-id", bad_id)]).request_id == "from-json"


@pytest.mark.parametrize("bad_id", [17, None, "", ["list"], "tab\tinside"])
def test_unusable_json_ids_fall_back_to_the_record_position(bad_id: object) -> None:
    assert decode(json.dumps({**REQUEST, "id": bad_id}).encode()).request_id == "t.inputs-3-17"


def test_readable_headers_reach_the_model_lower_cased_with_the_request_id() -> None:
    decoded = decode(
        json.dumps(REQUEST).encode(), [("Seldon-Model", b"iris"), ("binary", b"\xff\x00"), ("x-request-id", b"r1")]
    )
    assert decoded.headers == {"seldon-model": "iris", "x-request-id": "r1"}
    assert decoded.body == REQUEST


def test_the_json_id_is_passed_on_as_the_request_id_header() -> None:
    decoded = decode(json.dumps({**REQUEST, "id": "j1"}).encode())
    assert decoded.headers["x-request-id"] == "j1"


# ---- malformed records ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "no value"),
        (b"", "not a V2 inference request"),
        # A ModelInferRequest naming a model but carrying no inputs is not a request.
        (b"\x0a\x04iris", "not a V2 inference request (UTF-8 JSON, or a ModelInferRequest protobuf)"),
        (b"[1, 2]", "JSON object, not list"),
        (b'"text"', "JSON object, not str"),
        (b'{"inputs": NaN}', "not a V2 inference request"),
        (b'{"inputs": {"x": 1}}', '"inputs"'),
        (b'{"inputs": []', "not a V2 inference request"),
        (b"\xc3\x28", "not a V2 inference request"),
        (b"[" * 100_000 + b"]" * 100_000, "not a V2 inference request"),
        (b'{"n": ' + b"9" * 5000 + b"}", "not a V2 inference request"),
    ],
)
def test_malformed_values_are_400_with_a_reason(value: bytes | None, fragment: str) -> None:
    error = malformed(value, limit=1_000_000)
    assert error.status == 400
    assert fragment in error.message
    assert error.request_id == "t.inputs-3-17"


def test_malformed_values_keep_the_header_request_id() -> None:
    assert malformed(b"nonsense", [("seldon-request-id", b"abc")]).request_id == "abc"


def test_values_over_the_limit_are_413_without_being_parsed() -> None:
    error = malformed(json.dumps(REQUEST).encode() + b" " * 100, limit=50)
    assert error.status == 413
    assert "limit of 50" in error.message


@settings(max_examples=500)
@given(
    st.one_of(st.none(), st.binary(max_size=2000)), st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=40)))
)
def test_any_bytes_either_decode_to_a_json_object_or_raise_malformed(value: bytes | None, headers: list[Any]) -> None:
    try:
        decoded = decode(value, headers, limit=1000)
    except MalformedRecordError as error:
        assert error.status in {400, 413}
        assert usable_request_id(error.request_id) == error.request_id
    else:
        assert isinstance(decoded.body, dict)
        assert usable_request_id(decoded.request_id) == decoded.request_id


@given(
    st.lists(st.tuples(st.one_of(st.none(), st.integers(), st.text()), st.one_of(st.none(), st.text(), st.binary())))
)
def test_headers_of_any_shape_never_break_decoding(headers: list[Any]) -> None:
    assert decode(json.dumps(REQUEST).encode(), headers).body == REQUEST


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values))
def test_json_objects_decode_to_themselves(body: dict[str, Any]) -> None:
    body.pop("inputs", None)
    assert decode(json.dumps(body).encode(), limit=1_000_000).body == body


# ---- answers and errors -----------------------------------------------------------------------------------


def test_responses_get_the_request_id_when_the_model_left_it_out() -> None:
    assert json.loads(encode_response({"outputs": []}, "r1")) == {"outputs": [], "id": "r1"}
    assert json.loads(encode_response({"id": "model-id", "outputs": []}, "r1"))["id"] == "model-id"


@pytest.mark.parametrize("response", [{"outputs": [math.nan]}, {"outputs": {1, 2}}, {"outputs": object()}])
def test_responses_that_are_not_json_are_a_502(response: dict[str, Any]) -> None:
    with pytest.raises(InferenceError) as caught:
        encode_response(response, "r1")
    assert caught.value.status == 502


def test_answer_headers_carry_the_request_id_and_content_type() -> None:
    assert answer_headers("r1") == [("x-request-id", b"r1"), ("content-type", b"application/json")]


def test_error_records_name_request_resource_status_and_message() -> None:
    value = encode_error(
        request_id="r1", resource=PIPELINE, status=404, message="no such pipeline", topic="t", partition=0, offset=5
    )
    assert json.loads(value) == {
        "request_id": "r1",
        "kind": "pipeline",
        "name": "flow",
        "status": 404,
        "message": "no such pipeline",
        "topic": "t",
        "partition": 0,
        "offset": 5,
    }


# ---- delivery bookkeeping ---------------------------------------------------------------------------------


def test_tracker_commits_only_past_answered_records() -> None:
    tracker = OffsetTracker()
    assert tracker.committable() is None
    for offset in (10, 11, 12):
        tracker.add(offset)
    tracker.done(12)
    tracker.done(11)
    assert tracker.committable() == 10  # offset 10 is not answered yet: nothing past it may be committed
    tracker.done(10)
    assert tracker.committable() == 13
    assert tracker.in_flight == 0


@given(st.permutations(list(range(20))), st.integers(min_value=0, max_value=20))
def test_tracker_never_passes_an_unanswered_record(order: list[int], finished: int) -> None:
    tracker = OffsetTracker()
    for offset in range(20):
        tracker.add(offset)
    for offset in order[:finished]:
        tracker.done(offset)
    unanswered = set(order[finished:])
    position = tracker.committable()
    assert position is not None
    assert position == (min(unanswered) if unanswered else 20)


async def test_tracker_reports_idle_when_everything_is_answered() -> None:
    tracker = OffsetTracker()
    tracker.add(1)
    waiting = asyncio.create_task(tracker.wait_idle())
    await asyncio.sleep(0)
    assert not waiting.done()
    tracker.done(1)
    await waiting


def test_recent_ids_forget_the_oldest_first() -> None:
    recent = RecentIds(2)
    recent.add("a")
    recent.add("b")
    recent.add("a")  # refreshed: now the newest
    recent.add("c")
    assert "a" in recent
    assert "c" in recent
    assert "b" not in recent
    assert len(recent) == 2
    disabled = RecentIds(0)
    disabled.add("a")
    assert "a" not in disabled


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_in_flight": 0},
        {"session_timeout_ms": 0},
        {"max_message_bytes": 0},
        {"dedupe_window": -1},
        {"drain_timeout_s": -1.0},
        {"backoff_initial_s": 0.0},
        {"backoff_initial_s": 20.0, "backoff_max_s": 10.0},
        {"bootstrap_servers": " "},
    ],
)
def test_settings_reject_impossible_values(overrides: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:9092", **overrides}
    with pytest.raises(ValueError, match=r"must"):
        KafkaBridgeSettings(**arguments)


def test_settings_name_the_topics() -> None:
    configured = KafkaBridgeSettings(bootstrap_servers="127.0.0.1:9092", topic_prefix="p", namespace="n")
    assert configured.topic_names().errors() == "p.n.errors"
    assert configured.group_id == "modelplane-gateway"


def test_protobuf_requests_decode_and_are_answered_in_protobuf() -> None:
    request = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.5, 2.5]}]}
    value = encode_infer_request("m", None, request).SerializeToString()
    decoded = decode_request(
        value, [("x-request-id", b"r1")], topic="t", partition=0, offset=7, max_value_bytes=1 << 20
    )
    assert decoded.protobuf
    assert decoded.request_id == "r1"
    assert decoded.body["inputs"] == request["inputs"]
    response = {"model_name": "m", "outputs": [{"name": "y", "shape": [1], "datatype": "INT64", "data": [3]}]}
    answer = v2_pb.ModelInferResponse.FromString(encode_response(response, "r1", protobuf=True))
    assert answer.model_name == "m"
    assert answer.id == "r1"
    assert list(answer.outputs[0].contents.int64_contents) == [3]
    assert dict(answer_headers("r1", protobuf=True))["content-type"] == b"application/x-protobuf"


def test_a_protobuf_content_type_insists_on_protobuf() -> None:
    with pytest.raises(MalformedRecordError) as raised:
        decode_request(
            b"\xff\xff\xff",
            [("content-type", b"application/x-protobuf")],
            topic="t",
            partition=0,
            offset=1,
            max_value_bytes=1 << 20,
        )
    assert raised.value.status == 400
    assert "ModelInferRequest" in raised.value.message
