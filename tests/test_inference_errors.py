"""modelplane.inference_errors on the answers MLServer 1.7 and Triton 2.51 gave in tests/test_gateway_errors_e2e.py
(copied here as they came), and hypothesis: whatever a server answers, the reason is one short line that names no
file."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from hypothesis import given
from hypothesis import strategies as st

from modelplane.inference_errors import MAX_REASON_CHARS, CallerHttpErrors, Verdict, read_error_answer, safe_reason

VENV = "/root/.cache/modelplane/venvs/mlserver/lib/python3.11/site-packages"


def traceback(exception: str) -> bytes:
    frames = "".join(
        f'  File "{VENV}/{module}.py", line {line}, in f\n    code()\n    ^^^^^^\n'
        for module, line in (("starlette/routing", 73), ("mlserver/codecs/numpy", 163))
    )
    return f"Traceback (most recent call last):\n{frames}{exception}\n".encode()


# What MLServer answered for shape [5] of FP64 (found by tests/test_gateway_properties.py): numpy wraps the
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
    assert answer.retryable == (verdict is not Verdict.INVALID)


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


@given(st.integers(min_value=100, max_value=599), st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
def test_any_answer_gets_a_verdict(status: int, body: bytes) -> None:
    answer = read_error_answer(status, body)
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
