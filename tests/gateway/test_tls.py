"""The gateway's listeners under TLS and mutual TLS, and its refusal to serve plaintext off loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from generated.inference.v2 import grpc_predict_v2_pb2 as v2_pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from modelplane.transport import http_client_ssl
from tests.support.processes import SchedulerProcess, run_modelplane, start_gateway, start_scheduler, stop_process
from tests.support.tls_material import TlsFiles, make_tls_files


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    folder = tmp_path / "tls"
    folder.mkdir()
    return make_tls_files(folder)


@pytest.fixture
def plain_scheduler(tmp_path: Path) -> Iterator[SchedulerProcess]:
    (tmp_path / "scheduler").mkdir()
    running = start_scheduler(tmp_path / "scheduler")
    try:
        yield running
    finally:
        stop_process(running.process)


def client_context(tls: TlsFiles, *, with_certificate: bool) -> ssl.SSLContext:
    """What `modelplane training status` uses for HTTPS (modelplane.transport.http_client_ssl)."""
    context = http_client_ssl(tls.ca, tls.client_cert if with_certificate else None, tls.client_key)
    assert context is not None
    return context


async def live(url: str, context: ssl.SSLContext | None) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"{url}/v2/health/live", ssl=context if context is not None else False) as response,
    ):
        return response.status


async def test_tls_listeners_serve_https_and_grpc_over_tls(
    tmp_path: Path, tls: TlsFiles, plain_scheduler: SchedulerProcess
) -> None:
    gateway = await asyncio.to_thread(
        start_gateway,
        tmp_path / "gateway",
        plain_scheduler.listen,
        "--grpc-listen=127.0.0.1:0",
        f"--serve-tls-cert={tls.server_cert}",
        f"--serve-tls-key={tls.server_key}",
    )
    try:
        https = f"https://{gateway.listen}"
        assert await live(https, client_context(tls, with_certificate=False)) == 200
        with pytest.raises(aiohttp.ClientError):
            await live(f"http://{gateway.listen}", None)  # plaintext to a TLS listener gets no answer
        assert gateway.grpc_listen is not None
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
        async with grpc.aio.secure_channel(gateway.grpc_listen, credentials) as channel:
            reply = await v2_grpc.GRPCInferenceServiceStub(channel).ServerLive(v2_pb.ServerLiveRequest(), timeout=10)
        assert reply.live
    finally:
        stop_process(gateway.process)


async def test_mutual_tls_requires_a_client_certificate(
    tmp_path: Path, tls: TlsFiles, plain_scheduler: SchedulerProcess
) -> None:
    gateway = await asyncio.to_thread(
        start_gateway,
        tmp_path / "gateway",
        plain_scheduler.listen,
        f"--serve-tls-cert={tls.server_cert}",
        f"--serve-tls-key={tls.server_key}",
        f"--serve-tls-ca={tls.ca}",
    )
    try:
        https = f"https://{gateway.listen}"
        assert await live(https, client_context(tls, with_certificate=True)) == 200
        with pytest.raises(aiohttp.ClientError):
            await live(https, client_context(tls, with_certificate=False))
    finally:
        stop_process(gateway.process)


def test_plaintext_off_loopback_is_refused_without_insecure() -> None:
    done = run_modelplane("gateway", "--scheduler=127.0.0.1:9", "--listen=0.0.0.0:0")
    assert done.returncode == 2
    assert "refusing plaintext" in done.stderr
    assert "0.0.0.0:0" in done.stderr
