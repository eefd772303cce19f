"""Artifact downloads that take a while say how far they are: progress lines at info, with the model being loaded,
the source (never its credentials), bytes so far of the total and files done of files, then one line with the size
and the time taken; a quick download says nothing. Against real SeaweedFS (S3) and a real local http server, with
the progress interval set to 0 (a line at every chunk but the last) so no test waits on the clock."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.artifacts import ArtifactSource, ArtifactStore
from modelplane import logs
from tests.support.http_stand_ins import serving
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, S3Server

# The session's SeaweedFS (the s3_server fixture), shared with the other modules that use it.
pytest_plugins = ["tests.support.real_components"]

MIB = 1 << 20


class _AgentLines(logging.Handler):
    """Each record as the agent's text log writes it, formatted when it is emitted: the log context (the model) is
    read then, in the thread that logged it, as the agent's own handler reads it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logs.TextFormatter("agent"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def artifact_log_lines() -> Iterator[list[str]]:
    handler = _AgentLines()
    logger = logging.getLogger("agent.artifacts")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def make_store(tmp_path: Path, progress_every_seconds: float = 0.0) -> ArtifactStore:
    return ArtifactStore(
        tmp_path / "cache", environ={}, timeout_seconds=60, progress_every_seconds=progress_every_seconds
    )


def field(line: str, name: str) -> int:
    found = re.search(rf" {name}=([0-9]+)(?: |$)", line)
    assert found is not None, f"no {name}= in {line}"
    return int(found.group(1))


def progress_and_final(lines: list[str]) -> tuple[list[str], list[str]]:
    return [line for line in lines if "downloading" in line], [line for line in lines if "downloaded" in line]


def check_progress(
    lines: list[str],
    *,
    model: str,
    total: int,
    files: int | None,
    secrets: tuple[str, ...],
    total_known: bool = True,
) -> None:
    progress, final = progress_and_final(lines)
    assert len(progress) >= 3, lines
    assert len(final) == 1, lines
    done = [field(line, "bytes") for line in progress]
    assert all(before < after for before, after in itertools.pairwise(done)), done
    assert done[0] > 0, done
    assert done[-1] <= total, done
    if total_known:
        assert done[-1] < total, done  # the line that would say 100% is the final one
        assert {field(line, "total_bytes") for line in progress} == {total}, progress
    else:
        assert not any("total_bytes=" in line for line in progress), progress
    assert field(final[0], "bytes") == total, final
    assert re.search(r" seconds=[0-9.]+", final[0]), final
    if files is not None:
        files_done = [field(line, "files_done") for line in progress]
        assert files_done == sorted(files_done), progress
        assert {field(line, "files") for line in progress} == {files}, progress
        assert field(final[0], "files") == files, final
    for line in [*progress, *final]:
        assert f" model={model}" in line, line
        assert line.split()[1] == "info", line
        for secret in secrets:
            assert secret not in line, line


async def test_a_long_s3_download_logs_its_progress_and_a_quick_one_nothing(
    s3_server: S3Server, tmp_path: Path
) -> None:
    objects = {
        "big/1/model.bin": os.urandom(2 * MIB + 17),
        "big/1/weights/part.bin": os.urandom(MIB + MIB // 2),
        "big/1/model-settings.json": b'{"name": "big"}',
    }
    bucket = s3_server.new_bucket(objects | {"small/1/model.bin": b"tiny"})
    store = make_store(tmp_path)
    with artifact_log_lines() as lines, logs.bound(model="big-model", version=1):
        await store.fetch(ArtifactSource(f"s3://{bucket}/big", storage_rclone_config=s3_server.rclone_json()))
    check_progress(
        lines,
        model="big-model",
        total=sum(len(data) for data in objects.values()),
        files=len(objects),
        secrets=(SECRET_KEY, ACCESS_KEY),
    )
    assert all(f"source=s3://{bucket}/big" in line for line in lines if "download" in line), lines

    with artifact_log_lines() as lines, logs.bound(model="small-model"):
        await store.fetch(ArtifactSource(f"s3://{bucket}/small", storage_rclone_config=s3_server.rclone_json()))
    assert progress_and_final(lines) == ([], []), lines


@pytest.fixture
async def http_base() -> AsyncIterator[str]:
    files = {"/big/model.bin": os.urandom(3 * MIB + 5), "/small/model.bin": b"tiny"}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=files[request.path], content_type="application/octet-stream")

    async def chunked(request: web.Request) -> web.StreamResponse:
        """A body of 2 MiB in parts, without a Content-Length: its total is unknown until it ends."""
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(8):
            await response.write(os.urandom(MIB // 4))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/chunked/model.bin", chunked)
    app.router.add_get("/{tail:.*}", handle)
    async with serving(app) as base:
        yield base


async def test_a_long_http_download_logs_its_progress_without_credentials_and_a_quick_one_nothing(
    http_base: str, tmp_path: Path
) -> None:
    secret_url = http_base.replace("http://", "http://user:hunter2@") + "{path}?token=SIGNATURE"
    store = make_store(tmp_path)
    with artifact_log_lines() as lines, logs.bound(model="big-model"):
        await store.fetch(ArtifactSource(secret_url.format(path="/big/model.bin")))
    check_progress(lines, model="big-model", total=3 * MIB + 5, files=None, secrets=("hunter2", "SIGNATURE"))
    assert all("source=http://***@127.0.0.1:" in line for line in lines if "download" in line), lines

    with artifact_log_lines() as lines, logs.bound(model="small-model"):
        await store.fetch(ArtifactSource(secret_url.format(path="/small/model.bin")))
    assert progress_and_final(lines) == ([], []), lines


async def test_an_http_download_of_unknown_length_logs_bytes_without_a_total(http_base: str, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with artifact_log_lines() as lines, logs.bound(model="streamed"):
        await store.fetch(ArtifactSource(f"{http_base}/chunked/model.bin"))
    check_progress(lines, model="streamed", total=2 * MIB, files=None, secrets=(), total_known=False)
