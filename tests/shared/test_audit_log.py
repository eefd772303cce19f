"""The audit log library (modelplane/audit): lines bounded and whole, rotation that never loses or splits a line,
a line cut short that spoils only itself, and a reader that reports whatever is not a record and reads on."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelplane.audit import AuditLog, AuditLogError, AuditRecord, Resource, RotatingFile, StdoutLines, audit_record
from modelplane.audit.audit_log import rotated_path
from modelplane.audit.audit_reader import MAX_LINE_BYTES, BadLine, log_files, read_log
from modelplane.audit.audit_record import MAX_MESSAGE_CHARS, MAX_NAME_CHARS
from modelplane.auth.caller import ANONYMOUS, Caller, CredentialKind
from tests.support.processes import run_modelplane
from tests.support.waiting import wait_for

ALICE = Caller(
    identity="spiffe://example.org/ci",
    credential=CredentialKind.TOKEN,
    roles=frozenset({"operator", "viewer"}),
    peer="ipv4:127.0.0.1:50000",
)


def record(number: int, *, name: str = "iris", message: str = "", caller: Caller = ALICE) -> AuditRecord:
    return audit_record(
        caller,
        "/seldon.mlops.scheduler.Scheduler/LoadModel",
        Resource("model", name, "seldon-mesh"),
        "OK" if not message else "INVALID_ARGUMENT",
        message,
        version_before=number,
        version_after=number + 1,
    )


def records_in(path: Path) -> tuple[list[AuditRecord], list[BadLine]]:
    good: list[AuditRecord] = []
    bad: list[BadLine] = []
    for item in read_log(path):
        (bad if isinstance(item, BadLine) else good).append(item)  # type: ignore[arg-type]
    return good, bad


def test_a_record_is_one_bounded_line_without_the_request(tmp_path: Path) -> None:
    flood = "x" * 1_000_000
    caller = Caller(
        identity="evil\nforged line " + flood,
        credential=CredentialKind.CERTIFICATE,
        roles=frozenset(f"role{i}\r\n" for i in range(1000)),
        peer="ipv6:[::1]:1\n",
        request_id="r\x00" + flood,
    )
    line = audit_record(
        caller, "/x/LoadModel", Resource("model\n", flood + "\n{}", flood), "OK\n", "two\nlines\u2028" + flood
    ).to_line()
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert len(line) < 8 * 1024  # every field bounded, whatever the caller and the request held
    document = json.loads(line)
    assert len(document["resource"]["name"]) == MAX_NAME_CHARS
    assert len(document["message"]) == MAX_MESSAGE_CHARS
    assert document["message"].startswith("two lines ")
    assert document["identity"].startswith("evil forged line ")
    assert len(document["roles"]) == 32
    assert AuditRecord.from_document(document).to_line() == line  # read back as written


def test_lines_survive_reopening_and_a_line_cut_short_spoils_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = RotatingFile(path)
    first.append_many([record(1).to_line()])
    first.close()
    with path.open("ab") as torn:  # a write cut short by a full disk, or a machine that died mid-write
        torn.write(record(2).to_line()[:40])
    second = RotatingFile(path)
    second.append_many([record(3).to_line()])
    second.close()
    good, bad = records_in(path)
    assert [r.version_before for r in good] == [1, 3]
    assert [(b.line_number, b.reason) for b in bad] == [(2, "not JSON")]


def test_rotation_keeps_every_line_whole_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    max_bytes = 2000
    sink = RotatingFile(path, max_bytes=max_bytes, keep=1000)
    rng = random.Random(7)  # noqa: S311 - line lengths, not secrets
    written = [record(n, message="m" * rng.randrange(0, 1000)) for n in range(400)]
    for line in written:
        sink.append_many([line.to_line()])
    sink.close()
    files = log_files(path)
    assert len(files) > 50  # it did rotate, many times
    assert files[-1] == path
    assert files[0] == rotated_path(path, len(files) - 1)
    for file in files:
        content = file.read_bytes()
        assert content.endswith(b"\n")  # no line split between files
        assert len(content) <= max_bytes
    good, bad = records_in(path)
    assert bad == []
    assert good == written


def test_rotation_drops_only_the_oldest_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = RotatingFile(path, max_bytes=1000, keep=3)
    written = [record(n) for n in range(100)]
    for line in written:
        sink.append_many([line.to_line()])
    sink.close()
    assert log_files(path) == [rotated_path(path, 3), rotated_path(path, 2), rotated_path(path, 1), path]
    good, bad = records_in(path)
    assert bad == []
    assert good == written[-len(good) :]  # what is left is the newest lines, whole and in order


def test_a_line_longer_than_a_file_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = RotatingFile(path, max_bytes=100, keep=5)
    lines = [record(n) for n in range(3)]
    for line in lines:
        sink.append_many([line.to_line()])
    sink.close()
    assert [len(file.read_bytes().splitlines()) for file in log_files(path)] == [1, 1, 1]
    assert records_in(path) == (lines, [])


def test_concurrent_records_are_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(RotatingFile(path, max_bytes=50_000, keep=100))
    lines = [record(n, name=f"model-{n}", message="x" * (n % 300)) for n in range(300)]

    async def record_all() -> None:
        await asyncio.gather(*(audit.record(line) for line in lines))

    asyncio.run(record_all())
    threads = [threading.Thread(target=asyncio.run, args=(audit.record(record(1000 + i)),)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit.close()
    good, bad = records_in(path)
    assert bad == []
    assert sorted(r.version_before or 0 for r in good) == sorted([*range(300), *range(1000, 1020)])


class HeldSink:
    """A file sink whose first write waits until the test lets it go, recording how lines were grouped."""

    def __init__(self, path: Path) -> None:
        self.file = RotatingFile(path)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.groups: list[int] = []

    def append_many(self, lines: Sequence[bytes]) -> None:
        self.entered.set()
        assert self.release.wait(20), "the test never released the sink"
        self.groups.append(len(lines))
        self.file.append_many(lines)

    def close(self) -> None:
        self.file.close()


async def test_lines_recorded_while_one_is_written_share_the_next_fsync(tmp_path: Path) -> None:
    sink = HeldSink(tmp_path / "audit.log")
    audit = AuditLog(sink)
    try:
        first = asyncio.create_task(audit.record(record(0)))
        await wait_for(sink.entered.is_set, what="the first write to begin")
        rest = [asyncio.create_task(audit.record(record(n))) for n in range(1, 51)]
        await wait_for(lambda: audit._queue.qsize() == 50, what="50 lines to wait for the writer")
        assert not any(task.done() for task in [first, *rest])  # nothing is acknowledged before its fsync
        sink.release.set()
        await asyncio.gather(first, *rest)
    finally:
        sink.release.set()
        audit.close()
    assert sink.groups == [1, 50]
    assert sink.file.fsyncs == 2
    assert [line.version_before for line in records_in(tmp_path / "audit.log")[0]] == list(range(51))


def test_record_refusal_is_what_an_access_check_calls(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(RotatingFile(path))
    intruder = Caller(identity="spiffe://example.org/viewer", credential=CredentialKind.CERTIFICATE, peer="p")
    asyncio.run(
        audit.record_refusal(
            intruder, "/seldon.mlops.scheduler.Scheduler/UnloadModel", Resource("model", "iris"), "PERMISSION_DENIED",
            "the operator role is missing",
        )
    )  # fmt: skip
    audit.close()
    [line] = records_in(path)[0]
    assert (line.identity, line.credential, line.code, line.method) == (
        "spiffe://example.org/viewer",
        "certificate",
        "PERMISSION_DENIED",
        "UnloadModel",
    )
    assert line.request_id == intruder.request_id
    assert (line.version_before, line.version_after) == (None, None)


def test_stdout_lines_go_to_the_descriptor(tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        audit = AuditLog(StdoutLines(fd))
        asyncio.run(audit.record(record(1, caller=ANONYMOUS)))
    finally:
        os.close(fd)
    assert [r.identity for r in records_in(out)[0]] == [""]


def test_an_unwritable_log_is_an_error_that_says_where(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(AuditLogError, match="cannot"):
        RotatingFile(blocked / "audit.log")  # its folder is a file


# ------------------------------------------------------------------------------------------------ the reader


GARBAGE = [
    b"",
    b"   ",
    b"{}",
    b"null",
    b"[]",
    b'"text"',
    b"\xff\xfe\x00binary",
    b"[" * 100_000,  # nesting deep enough to break a recursive parser
    b'{"time": "yesterday"}',
    b"x" * (MAX_LINE_BYTES + 10),
    b'{"version_before": ' + b"9" * 5000 + b"}",  # more digits than Python converts
]


def _with_time(document: dict[str, object], time: object) -> bytes:
    return json.dumps({**document, "time": time}).encode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.integers(0, 1000).map(lambda n: ("record", n)),
            st.binary(max_size=300).map(lambda garbage: ("garbage", garbage)),
            st.sampled_from(GARBAGE).map(lambda garbage: ("garbage", garbage)),
            st.text(max_size=30).map(lambda time: ("garbage", _with_time(record(0).to_document(), time))),
            st.dictionaries(st.sampled_from(list(record(0).to_document())), st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                max_leaves=5,
            )).map(lambda document: ("garbage", json.dumps({**record(0).to_document(), **document}).encode())),
        ),
        max_size=30,
    )
)  # fmt: skip
def test_the_reader_reads_every_record_among_any_garbage(tmp_path: Path, lines: list[tuple[str, object]]) -> None:
    path = tmp_path / "garbage.log"
    written: list[AuditRecord] = []
    with path.open("wb") as file:
        for kind, content in lines:
            if kind == "record":
                assert isinstance(content, int)
                written.append(record(content))
                file.write(written[-1].to_line())
            else:
                assert isinstance(content, bytes)
                file.write(content.replace(b"\n", b" ") + b"\n")
    read = list(read_log(path))  # never raises, whatever the file holds
    good = [item for item in read if isinstance(item, AuditRecord)]
    # A garbage line may happen to be a valid record (a dictionary that changed nothing, or a valid ISO time):
    # every record written is read back, in order, among whatever else parsed.
    remaining = iter(good)
    assert all(any(candidate == expected for candidate in remaining) for expected in written)
    for item in read:
        if isinstance(item, BadLine):
            assert item.path == path
            assert item.line_number >= 1
            assert item.reason


def test_the_reader_orders_rotated_files_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for number, name in [(0, "audit.log"), (1, "audit.log.1"), (2, "audit.log.2"), (10, "audit.log.10")]:
        line = audit_record(ALICE, "/x/LoadModel", None, "OK", "", now=base - timedelta(hours=number)).to_line()
        (tmp_path / name).write_bytes(line)
    (tmp_path / "audit.log.x").write_text("not a rotated file")
    (tmp_path / "audit.log.01").write_text("not one either")
    times = [r.time for r in records_in(path)[0]]
    assert times == sorted(times)
    assert len(times) == 4


# ------------------------------------------------------------------------------------------------ modelplane audit


def test_modelplane_audit_reports_bad_lines_and_reads_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    rotated = rotated_path(path, 1)
    rotated.write_bytes(record(1).to_line() + b"\x1b[31mnot a record\n")
    path.write_bytes(b"x" * (MAX_LINE_BYTES + 5) + b"\n" + record(2, name="evil\x1b[2Jname").to_line() + b'{"cut')
    result = run_modelplane("audit", f"--audit-log={path}")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 3
    assert "seldon-mesh/model/iris" in rows[1]
    assert "\x1b" not in result.stdout  # what the file holds is shown on one printable line
    assert result.stderr.splitlines() == [
        f"modelplane audit: {rotated}:2: not JSON",
        f"modelplane audit: {path}:1: longer than {MAX_LINE_BYTES} bytes",
        f"modelplane audit: {path}:3: not JSON (cut short)",
    ]


def test_modelplane_audit_without_a_log_or_with_a_bad_time_says_so(tmp_path: Path) -> None:
    missing = run_modelplane("audit", f"--audit-log={tmp_path / 'none.log'}")
    assert missing.returncode == 1
    assert "no audit log at" in missing.stderr
    (tmp_path / "audit.log").write_bytes(record(1).to_line())
    bad_time = run_modelplane("audit", f"--audit-log={tmp_path / 'audit.log'}", "--since=last tuesday")
    assert bad_time.returncode == 2
    assert "is not a time" in bad_time.stderr
