"""modelplane.inference_errors on the answers MLServer 1.7 and Triton 2.51 gave in tests/e2e/test_gateway_errors.py
(copied here as they came), and hypothesis: whatever a server answers, the reason is one short line that names no
file; an answer of any size is read in bounded memory and still understood."""

from __future__ import annotations

import itertools
import json
import logging
import sys
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from modelplane.http_hop import HopClient
from modelplane.inference_errors import (
    KEPT_BYTES,
    MAX_REASON_CHARS,
    CallerHttpErrors,
    ErrorBody,
    Verdict,
    read_error_answer,
    safe_reason,
)
from tests.support.http_stand_ins import serving

VENV = "/root/.cache/modelplane/venvs/mlserver/lib/python3.11/site-packages"


def traceback(exception: str) -> bytes:
    frames = "".join(
        f'  File "{VENV}/{module}.py", line {line}, in f\n    code()\n    ^^^^^^\n'
        for module, line in (("starlette/routing", 73), ("mlserver/codecs/numpy", 163))
    )
    return f"Traceback (most recent call last):\n{frames}{exception}\n".encode()


# What MLServer answered for shape [5] of FP64 (found by tests/gateway/test_properties.py): numpy wraps the
# array over two lines, the second indented.
SKLEARN_WRAPPED = (
    "ValueError: Expected 2D array, got 1D array instead:\narray=[0.00000000e+00 0.00000000e+00 0.00000000e+00\n"
    " 1.00000001e+08].\nReshape your data either using array.reshape(-1, 1) if your data has a single feature."
)
SKLEARN_2D = (
    "ValueError: Expected 2D array, got 1D array instead:\narray=['" + "x" * 100_000 + "'].\n"
    "Reshape your data either using array.reshape(-1, 1) if your data has a single feature."
)


@pytest.mark.parametrize(
    ("status", "body", "verdict", "caller_status", "reason"),
    [
        # MLServer: what a model's code raises is a 500 with the traceback.
        (500, traceback("ValueError: cannot reshape array of size 8 into shape (1,4)"), Verdict.INVALID, 400,
         "the model raised ValueError: cannot reshape array of size 8 into shape (1,4)"),
        (500, traceback(SKLEARN_2D), Verdict.INVALID, 400, "the model raised ValueError: Expected 2D array, got 1D"),
        (500, traceback(SKLEARN_WRAPPED), Verdict.INVALID, 400, "ValueError: Expected 2D array, got 1D array instead"),
        (500, traceback("TypeError: unsupported operand"), Verdict.INVALID, 400, "the model raised TypeError"),
        (500, traceback("KeyError: 'petal'"), Verdict.FAILED, 502, "the model raised KeyError: 'petal'"),
        (500, traceback(f"FileNotFoundError: [Errno 2] No such file: '{VENV}/x.joblib'"), Verdict.FAILED, 502,
         "No such file: '<path>'"),
        # MLServer: its codecs' and its schema's refusals.
        (400, b'{"error":"There was an error encoding / decoding the payload: The \'np\' codec only supports a '
              b'single input tensor (2 were received)"}', Verdict.INVALID, 400, "single input tensor"),
        (422, b'{"detail":[{"type":"json_invalid","loc":["body",1025],"msg":"JSON decode error","input":{},'
              b'"ctx":{"error":"depth limit exceeded"}}]}', Verdict.INVALID, 422,
         "1025: JSON decode error (depth limit exceeded)"),
        (422, b'{"detail":[{"type":"enum","loc":["body","inputs",0,"datatype"],"msg":"Input should be \'BOOL\'"}]}',
         Verdict.INVALID, 422, "inputs.0.datatype: Input should be 'BOOL'"),
        # Triton: its config's refusals are 400, what it cannot parse is 500.
        (400, b'{"error":"[request id: <id_unknown>] unexpected shape for input \'INPUT0\' for model \'doubler\'. '
              b'Expected [-1], got [1,3]. "}', Verdict.INVALID, 400, "unexpected shape for input 'INPUT0'"),
        (500, b'{"error":"Unable to parse \'data\': Shape does not match true shape of \'data\' field"}',
         Verdict.INVALID, 400, "Shape does not match"),
        (500, b'{"error":"failed to parse the request JSON buffer: Invalid value. at 100000"}', Verdict.INVALID, 400,
         "failed to parse the request JSON"),
        # Not the request's fault.
        (404, b'{"error":"model iris version 3 is not loaded on this replica"}', Verdict.NOT_HERE, 404, "not loaded"),
        (503, b'{"error":"the inference server is unreachable: ClientConnectorError"}', Verdict.UNAVAILABLE, 503,
         "unreachable"),
        (502, b"<html>Bad Gateway</html>", Verdict.UNAVAILABLE, 503, "<html>Bad Gateway</html>"),
        (429, b"", Verdict.UNAVAILABLE, 503, "HTTP 429"),
        (504, b'{"error":"the inference server did not answer in time"}', Verdict.TIMED_OUT, 504, "in time"),
        (500, b"Internal Server Error", Verdict.FAILED, 502, "Internal Server Error"),
        (403, b'{"error":"forbidden"}', Verdict.FAILED, 502, "forbidden"),
        (301, b"", Verdict.FAILED, 502, "HTTP 301"),
    ],
)  # fmt: skip
def test_measured_answers(status: int, body: bytes, verdict: Verdict, caller_status: int, reason: str) -> None:
    answer = read_error_answer(status, body)
    assert (answer.verdict, answer.status) == (verdict, caller_status)
    assert reason in answer.reason
    assert len(answer.reason) <= MAX_REASON_CHARS
    assert VENV not in answer.reason
    assert "Traceback" not in answer.reason
    assert answer.retryable == (verdict not in (Verdict.INVALID, Verdict.TIMED_OUT))


def test_the_detail_for_the_log_is_the_end_of_what_was_said_and_bounded() -> None:
    answer = read_error_answer(500, traceback(SKLEARN_2D))
    assert answer.detail.endswith("has a single feature.\n")
    assert len(answer.detail) <= 2000


@given(st.text(max_size=3000))
def test_a_reason_is_one_short_printable_line_without_paths(text: str) -> None:
    reason = safe_reason(f"{text} {VENV}/sklearn/base.py {text}")
    assert len(reason) <= MAX_REASON_CHARS
    assert "\n" not in reason
    assert reason.isprintable()
    assert "site-packages" not in reason or "site-packages" in text


@given(
    st.integers(min_value=100, max_value=599),
    st.binary(max_size=2000) | st.text(max_size=500).map(str.encode),
    st.sampled_from([0, 3 * KEPT_BYTES]),  # or so long that only its ends are kept
)
def test_any_answer_gets_a_verdict(status: int, body: bytes, padding: int) -> None:
    answer = read_error_answer(status, body + b"\\" * padding + body if padding else body)
    assert 400 <= answer.status <= 599
    assert len(answer.reason) <= MAX_REASON_CHARS
    assert answer.reason


def test_json_that_nests_too_deep_for_the_parser_is_just_text() -> None:
    answer = read_error_answer(500, b'{"error": ' + b"[" * 100_000)
    assert answer.verdict is Verdict.FAILED
    assert json.dumps(answer.reason)


def test_aiohttps_log_of_a_malformed_request_is_one_info_line() -> None:
    try:
        raise BadHttpMessage(f"Duplicate 'Content-Type' header found in {VENV}/x.py.\n  more")
    except BadHttpMessage:
        record = logging.LogRecord(
            "aiohttp.server", logging.ERROR, "p", 1, "Error handling request from %s", ("1.2.3.4",), sys.exc_info()
        )
    other = logging.LogRecord("aiohttp.server", logging.ERROR, "p", 1, "something else", (), None)
    quiet = CallerHttpErrors()
    assert quiet.filter(record)
    assert quiet.filter(other)
    assert (record.levelno, record.exc_info) == (logging.INFO, None)
    assert record.getMessage() == (
        "Error handling request from 1.2.3.4: BadHttpMessage: Duplicate 'Content-Type' header found in <path> more"
    )
    assert "\n" not in record.getMessage()
    assert VENV not in record.getMessage()
    assert other.levelno == logging.ERROR


# -- large error answers: read in bounded memory, still understood ------------------------------------------------

ECHO_BYTES = 40 * 1024 * 1024  # what a server echoes back of a request: up to the 64 MiB a request may hold
ECHO_CHUNK = b"x" * (256 * 1024)
FRAME = f'  File "{VENV}/sklearn/utils/validation.py", line 1076, in check_array\n    raise ValueError(msg)\n'
CHAINED = (
    "\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n"
)


def large_traceback(first: str, final: str | None) -> list[bytes]:
    """A traceback whose exception ``first`` echoes ECHO_BYTES of a request (``first`` holds ``{}`` where the
    echo goes), and with ``final``, a second traceback chained to it whose exception echoes as much again:
    its last frame lies far from both ends of the answer."""
    before, _, after = first.partition("{}")
    parts = [f"Traceback (most recent call last):\n{FRAME * 60}{before}".encode()]
    parts += [ECHO_CHUNK] * (ECHO_BYTES // len(ECHO_CHUNK)) + [after.encode()]
    if final is not None:
        before, _, after = final.partition("{}")
        parts += [f"\n{CHAINED}{FRAME * 3}{before}".encode()]
        parts += [ECHO_CHUNK] * (ECHO_BYTES // len(ECHO_CHUNK)) + [after.encode()]
    return parts


@asynccontextmanager
async def answering(status: int, parts: list[bytes]) -> AsyncIterator[str]:
    """An HTTP server on a loopback port answering every request with ``status`` and ``parts``, streamed."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        for part in parts:
            await response.write(part)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    async with serving(app) as base:
        yield f"{base}/"


SKLEARN_ECHO = "ValueError: Expected 2D array, got 1D array instead:\narray=['{}'].\nReshape your data."
KEY_ECHO = "KeyError: '{}'"
FLOAT_ECHO = "ValueError: could not convert string to float: '{}'"


@pytest.mark.parametrize(
    ("parts", "verdict", "reason"),
    [
        # What MLServer 1.7 answered for a 3 MB BYTES element (tests/e2e/test_gateway_errors.py), at 40 MB.
        (large_traceback(SKLEARN_ECHO, None), Verdict.INVALID, "the model raised ValueError: Expected 2D array"),
        # Chained: the final exception is the verdict, whatever the first one said.
        (large_traceback(KEY_ECHO, FLOAT_ECHO), Verdict.INVALID, "the model raised ValueError: could not convert"),
        (large_traceback(FLOAT_ECHO, KEY_ECHO), Verdict.FAILED, "the model raised KeyError: 'xxx"),
    ],
    ids=["sklearn-echo", "chained-value-error", "chained-key-error"],
)
async def test_a_large_error_answer_is_read_in_bounded_memory_and_still_understood(
    parts: list[bytes], verdict: Verdict, reason: str
) -> None:
    # Read as the data path's hops read every error answer (modelplane/http_hop.py: HopAnswer.error_body).
    hops = HopClient(total_timeout=60)
    async with answering(500, parts) as url:
        tracemalloc.start()
        try:
            hop = await hops.request("POST", url.rstrip("/"), "/")
            assert hop.error_body is not None
            answer = read_error_answer(hop.status, hop.error_body)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await hops.close()
    assert peak < 4 * 1024 * 1024, f"reading a {sum(map(len, parts)) >> 20} MiB error answer took {peak >> 20} MiB"
    assert answer.verdict is verdict
    assert answer.reason.startswith(reason), answer.reason
    assert len(answer.reason) <= MAX_REASON_CHARS
    assert VENV not in answer.reason
    assert answer.detail.endswith(parts[-1].decode()), answer.detail[-300:]
    assert len(answer.detail) <= 2000


def test_a_long_json_error_is_understood_from_its_start() -> None:
    """Triton's parse failures are 400s however long the answer; the reason is the start of the error."""
    said = "Unable to parse 'data': expected " + "1, " * 1_000_000
    answer = read_error_answer(500, json.dumps({"error": said}).encode())
    assert (answer.verdict, answer.status) == (Verdict.INVALID, 400)
    assert answer.reason.startswith("Unable to parse 'data': expected 1, 1, ")
    assert len(answer.reason) <= MAX_REASON_CHARS


@settings(deadline=None, max_examples=50)  # one-byte chunks of 400 KB take a while
@given(
    first_echo=st.integers(min_value=0, max_value=200_000),
    final_echo=st.integers(min_value=0, max_value=200_000),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=8),
)
def test_however_an_answer_arrives_in_chunks_the_verdict_is_that_of_its_final_exception(
    first_echo: int, final_echo: int, chunk_sizes: list[int]
) -> None:
    body = (
        f"Traceback (most recent call last):\n{FRAME * 3}ValueError: '{'x' * first_echo}'\n{CHAINED}{FRAME * 3}"
        f"KeyError: 'petal{'y' * final_echo}'\n"
    ).encode()
    kept = ErrorBody()
    start = 0
    for size in itertools.cycle(chunk_sizes):
        if start >= len(body):
            break
        kept.feed(body[start : start + size])
        start += size
    assert kept.kept_bytes <= 3 * 2 * KEPT_BYTES
    answer = read_error_answer(500, kept)
    assert (answer.verdict, answer.status) == (Verdict.FAILED, 502)
    assert answer.reason.startswith("the model raised KeyError: 'petal"), answer.reason
    assert answer.detail.endswith("y'\n" if final_echo else "petal'\n")
