"""Every log record is bounded, whatever it carries: a caller's megabytes never make a megabyte line, and no caller
text can forge a line (issue 10: after a flood of servers one unplaceable model logged a 340 KB line)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import replace

from modelplane import logs
from modelplane.auth.caller import ANONYMOUS, Caller, CredentialKind, serving

BOUND = 64 * 1024  # far above any real record, far below the lines the issue saw


def _record(
    message: str, *, fields: dict[str, object] | None = None, error: BaseException | None = None
) -> logging.LogRecord:
    record = logging.LogRecord("scheduler.models.cluster", logging.INFO, __file__, 1, "%s", (message,), None)
    if fields is not None:
        record.fields = fields
    if error is not None:
        record.exc_info = (type(error), error, error.__traceback__)
    return record


def _raised(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError:
        return sys.exc_info()[1]  # type: ignore[return-value]


def test_a_huge_message_and_fields_make_one_bounded_line() -> None:
    record = _record("cannot place m:1: " + "server s: has 0 replicas; " * 20_000, fields={"why": "x" * 100_000})
    line = logs.TextFormatter("scheduler").format(record)
    assert len(line) < BOUND, len(line)
    assert "\n" not in line
    assert "more characters" in line
    document = json.loads(logs.JsonFormatter("scheduler").format(record))
    assert len(document["message"]) <= logs.MAX_MESSAGE_CHARS + 40
    assert len(document["why"]) <= logs.MAX_FIELD_CHARS + 40


def test_caller_text_cannot_forge_a_line() -> None:
    line = logs.TextFormatter("scheduler").format(
        _record("agent connected\n2030-01-01 error scheduler: forged\x00", fields={"agent": "a\r\nb"})
    )
    assert not {"\n", "\r", "\x00"} & set(line)
    assert "\\n2030-01-01" in line
    assert "a\\r\\nb" in line


def test_a_traceback_keeps_its_head_and_its_tail_within_the_bound() -> None:
    record = _record("reconcile failed", error=_raised("boom " * 100_000))
    text = logs.TextFormatter("scheduler").format(record)
    assert len(text) < BOUND, len(text)
    assert text.startswith(text.split("\n", 1)[0])
    assert "Traceback" in text
    assert "characters left out" in text
    document = json.loads(logs.JsonFormatter("scheduler").format(record))
    assert len(document["error"]) <= logs.MAX_TRACEBACK_CHARS + 100


def test_too_many_fields_still_make_one_bounded_json_object() -> None:
    fields: dict[str, object] = {f"field{index}": "v" * 1000 for index in range(200)}
    line = logs.JsonFormatter("scheduler").format(_record("many fields", fields=fields))
    assert len(line) <= logs.MAX_RECORD_CHARS
    document = json.loads(line)
    assert document["message"] == "many fields"
    assert "fields left out" in document["truncated"]


def test_a_record_written_while_a_request_is_served_names_its_request_and_caller() -> None:
    """The request id of the request being served (and its caller's identity, bounded and on one line) is in
    every record logged meanwhile, so the request's audit line can be matched to them; outside a request,
    neither is."""
    caller = Caller("spiffe://example.org/ci\nforged", CredentialKind.CERTIFICATE, request_id="4f2a" * 8)
    with serving(caller):
        text = logs.TextFormatter("scheduler").format(_record("placing iris"))
        document = json.loads(logs.JsonFormatter("scheduler").format(_record("placing iris")))
    assert f"request_id={'4f2a' * 8}" in text
    assert "caller=spiffe://example.org/ci\\nforged" in text
    assert (document["request_id"], document["caller"]) == ("4f2a" * 8, "spiffe://example.org/ci\nforged")
    with serving(replace(ANONYMOUS, request_id="anon-1")):
        assert "caller" not in json.loads(logs.JsonFormatter("scheduler").format(_record("x")))
    outside = json.loads(logs.JsonFormatter("scheduler").format(_record("x")))
    assert "request_id" not in outside
    assert "caller" not in outside


async def test_bound_ids_are_in_each_line_of_their_own_task_only_and_bounded() -> None:
    """What a piece of work binds is in every record it logs, as ``key=value`` text or JSON fields by the same keys,
    and in the tasks it starts; never in another task's records, nor after its block."""

    async def work(name: str, seen: dict[str, str]) -> None:
        with logs.bound(model=name, version=3, request_id="r\n" + "x" * 100_000):
            await asyncio.sleep(0)
            seen[name] = logs.TextFormatter("agent").format(_record("loading"))
            inner = asyncio.create_task(asyncio.sleep(0, result=logs.bound_ids()))
            assert (await inner)["model"] == name

    seen: dict[str, str] = {}
    await asyncio.gather(work("iris", seen), work("wine", seen))
    assert " model=iris version=3 request_id=r\\nxxx" in seen["iris"]
    assert "wine" not in seen["iris"]
    assert len(seen["iris"]) < logs.MAX_FIELD_CHARS + 500
    with logs.bound(pipeline="flow", experiment="trial", server="mlserver", replica=0, run_id="run-1"):
        document = json.loads(logs.JsonFormatter("scheduler").format(_record("changed")))
    assert {key: document[key] for key in ("pipeline", "experiment", "server", "replica", "run_id")} == {
        "pipeline": "flow",
        "experiment": "trial",
        "server": "mlserver",
        "replica": 0,
        "run_id": "run-1",
    }
    assert not set(logs.CONTEXT_KEYS) & set(json.loads(logs.JsonFormatter("scheduler").format(_record("after"))))
