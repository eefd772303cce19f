"""TLS certificates rotated under live connections, without a restart: the real scheduler process (gRPC, mutual
TLS) and an HTTPS server made by the transport factory. New connections see the new certificate (its serial), a
half-written file keeps the last good one (and the server says why), established connections and a long-lived
stream keep working, and after the CA rotates a client certificate from the old CA is refused. A gateway whose
files rotate reaches a scheduler that trusts only the new CA once its routing stream reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import parse_address
from modelplane.transport import TransportSecurity, http_server_ssl, open_channel
from tests.support.processes import start_gateway, start_scheduler, stop_process
from tests.support.tls_material import Authority, TlsFiles, make_tls_files
from tests.support.waiting import wait_for_async

WAIT = 60.0  # seconds: a hang guard for every wait, never an expectation
SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
READY = pb.PipelineVersionState.PipelineStatus.Value("PipelineReady")


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` the way rotation tools do: a new file renamed over the old one."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)


def rotate_server(files: TlsFiles, authority: Authority) -> int:
    """A new server certificate and key from ``authority`` (key first: for a moment they do not match)."""
    cert, key, serial = authority.issue("scheduler", SERVER)
    replace_file(files.server_key, key)
    replace_file(files.server_cert, cert)
    return serial


def handshake(port: int, ca: Path, client: tuple[Path, Path] | None) -> tuple[int, ssl.SSLSocket]:
    """A new TLS connection to 127.0.0.1:``port``: the served certificate's serial, and the open socket."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if client is not None:
        context.load_cert_chain(*client)
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    connection = context.wrap_socket(raw, server_hostname="127.0.0.1")
    served = connection.getpeercert(binary_form=True)
    assert served is not None
    return x509.load_der_x509_certificate(served).serial_number, connection


def served_serial(port: int, ca: Path, client: tuple[Path, Path] | None = None) -> int:
    serial, connection = handshake(port, ca, client)
    connection.close()
    return serial


async def serves(port: int, ca: Path, serial: int, client: tuple[Path, Path] | None = None) -> None:
    async def check() -> bool:
        return await asyncio.to_thread(served_serial, port, ca, client) == serial

    await wait_for_async(check, WAIT, f"new connections get the certificate with serial {serial}")


# -- gRPC: the scheduler --------------------------------------------------------------------------------------


async def scheduler_version(listen: str, security: TransportSecurity) -> str:
    async with open_channel(parse_address(listen), security) as channel:
        answer = await pb_grpc.SchedulerStub(channel).SchedulerStatus(pb.SchedulerStatusRequest(), timeout=10)
    return answer.applicationVersion


async def test_scheduler_certificates_rotate_under_live_connections(tmp_path: Path) -> None:
    first_ca = Authority.new("first CA")
    files = make_tls_files(tmp_path, first_ca)
    scheduler = start_scheduler(
        tmp_path, f"--tls-cert={files.server_cert}", f"--tls-key={files.server_key}", f"--tls-ca={files.ca}"
    )
    port = parse_address(scheduler.listen).port
    # The first CA and a client certificate of it, kept aside: the server's files are rotated below.
    old_ca = tmp_path / "ca1.pem"
    old_ca.write_bytes(first_ca.pem())
    old_pair = (files.client_cert, files.client_key)
    old_client = TransportSecurity(ca_file=old_ca, cert_file=files.client_cert, key_file=files.client_key)
    new_ca = tmp_path / "ca2.pem"
    new_pair = (tmp_path / "client2.pem", tmp_path / "client2-key.pem")
    try:
        async with open_channel(parse_address(scheduler.listen), old_client) as live:
            stub = pb_grpc.SchedulerStub(live)
            stream = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="live"))
            await stub.SchedulerStatus(pb.SchedulerStatusRequest(), timeout=10)  # the live connection is up

            # 1. A new certificate from the same CA: new connections get it.
            serial = await asyncio.to_thread(rotate_server, files, first_ca)
            await serves(port, old_ca, serial, old_pair)

            # 2. A half-written certificate: the last good one stays, and the scheduler says why.
            whole = files.server_cert.read_bytes()
            replace_file(files.server_cert, whole[: len(whole) // 2])
            assert await asyncio.to_thread(served_serial, port, old_ca, old_pair) == serial

            async def said_why() -> bool:
                return "keeping its current TLS certificate" in scheduler.log()

            await wait_for_async(said_why, WAIT, "the scheduler logs why it kept its certificate")

            # 3. The CA rotates: a new CA, a server certificate and a client certificate from it.
            second_ca = Authority.new("second CA")
            new_serial = second_ca.issue_to(tmp_path / "s.pem", tmp_path / "s-key.pem", "scheduler", SERVER)
            second_ca.issue_to(*new_pair, "operator", CLIENT)
            new_ca.write_bytes(second_ca.pem())
            replace_file(files.ca, second_ca.pem())
            replace_file(files.server_key, (tmp_path / "s-key.pem").read_bytes())
            replace_file(files.server_cert, (tmp_path / "s.pem").read_bytes())
            new_client = TransportSecurity(ca_file=new_ca, cert_file=new_pair[0], key_file=new_pair[1])
            await serves(port, new_ca, new_serial, new_pair)
            assert await scheduler_version(scheduler.listen, new_client)
            # A client certificate from the old CA, on a new connection, is refused.
            old_ca_cert = TransportSecurity(ca_file=new_ca, cert_file=old_pair[0], key_file=old_pair[1])
            with pytest.raises(aio.AioRpcError) as refused:
                await scheduler_version(scheduler.listen, old_ca_cert)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            # The live connection, made before all this, still answers, and its stream still streams.
            await stub.SchedulerStatus(pb.SchedulerStatusRequest(), timeout=10)
            async with open_channel(parse_address(scheduler.listen), new_client) as fresh:
                model = pb.Model(
                    meta=pb.MetaData(name="rotated"),
                    modelSpec=pb.ModelSpec(uri="gs://models/iris", requirements=["sklearn"], memoryBytes=1024),
                )
                await pb_grpc.SchedulerStub(fresh).LoadModel(pb.LoadModelRequest(model=model), timeout=10)
            async with asyncio.timeout(WAIT):
                async for status in stream:
                    if status.modelName == "rotated":
                        break
            stream.cancel()
    finally:
        assert stop_process(scheduler.process) == 0
    assert scheduler.log().count("reloaded its TLS files") >= 2


async def gateway_acknowledged(listen: str, security: TransportSecurity, pipeline: str) -> bool:
    """Whether a gateway acknowledged ``pipeline`` (it has a routing stream to the scheduler that works)."""
    async with open_channel(parse_address(listen), security) as channel:
        request = pb.PipelineStatusRequest(name=pipeline)
        [status] = [answer async for answer in pb_grpc.SchedulerStub(channel).PipelineStatus(request, timeout=10)]
    return bool(status.versions[-1].state.pipelineGwStatus == READY)


async def test_the_gateway_reaches_a_scheduler_that_trusts_only_a_new_ca(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls2").mkdir()
    (tmp_path / "scheduler").mkdir()
    files = make_tls_files(tmp_path / "tls", Authority.new("first CA"))
    scheduler_flags = [f"--tls-cert={files.server_cert}", f"--tls-key={files.server_key}", f"--tls-ca={files.ca}"]
    scheduler = start_scheduler(tmp_path / "scheduler", *scheduler_flags)
    client_flags = [f"--tls-cert={files.client_cert}", f"--tls-key={files.client_key}", f"--tls-ca={files.ca}"]
    gateway = start_gateway(tmp_path / "gateway", scheduler.listen, *client_flags)
    operator = TransportSecurity(ca_file=files.ca, cert_file=files.client_cert, key_file=files.client_key)
    try:
        async with open_channel(parse_address(scheduler.listen), operator) as channel:
            await pb_grpc.SchedulerStub(channel).LoadPipeline(pb.LoadPipelineRequest(pipeline=one_step("before")))
        await wait_for_async(
            lambda: gateway_acknowledged(scheduler.listen, operator, "before"), WAIT, "the gateway acknowledged"
        )
        # Every file rotates to a second CA, and the scheduler restarts (on the same ports): the gateway's
        # connection ends, and only what it reads from its files now can reach the scheduler again.
        rotated = make_tls_files(tmp_path / "tls2", Authority.new("second CA"))
        for path in ("ca", "server_cert", "server_key", "client_cert", "client_key"):
            replace_file(getattr(files, path), getattr(rotated, path).read_bytes())
        assert stop_process(scheduler.process) == 0
        scheduler = start_scheduler(
            tmp_path / "scheduler",
            *scheduler_flags,
            f"--listen={scheduler.listen}",
            f"--agent-listen={scheduler.agent_listen}",
        )
        async with open_channel(parse_address(scheduler.listen), operator) as channel:
            await pb_grpc.SchedulerStub(channel).LoadPipeline(pb.LoadPipelineRequest(pipeline=one_step("after")))
        await wait_for_async(
            lambda: gateway_acknowledged(scheduler.listen, operator, "after"), WAIT, "the gateway acknowledged again"
        )
    finally:
        stop_process(gateway.process)
        stop_process(scheduler.process)


def one_step(name: str) -> pb.Pipeline:
    return pb.Pipeline(name=name, steps=[pb.PipelineStep(name="m")], output=pb.PipelineOutput(steps=["m"]))


# -- HTTPS: any HTTP server the transport factory secures (the gateway's REST, the trainer's status API) --------


@contextlib.asynccontextmanager
async def https_server(security: TransportSecurity) -> AsyncIterator[int]:
    """An aiohttp server on 127.0.0.1 with the factory's TLS context; yields its port."""

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=http_server_ssl(security))
    await site.start()
    try:
        server = site._server
        assert server is not None
        yield server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


def get_ok(connection: ssl.SSLSocket) -> bytes:
    connection.sendall(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while not answer.endswith(b"ok"):
        chunk = connection.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


async def test_https_certificates_rotate_under_live_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first_ca = Authority.new("first CA")
    files = make_tls_files(tmp_path, first_ca)
    (tmp_path / "ca1.pem").write_bytes(first_ca.pem())
    old_pair = (tmp_path / "c1.pem", tmp_path / "c1-key.pem")
    first_ca.issue_to(*old_pair, "operator", CLIENT)
    security = TransportSecurity(cert_file=files.server_cert, key_file=files.server_key, ca_file=files.ca)
    async with https_server(security) as port:
        first_serial, live = await asyncio.to_thread(handshake, port, tmp_path / "ca1.pem", old_pair)
        assert b"200 OK" in await asyncio.to_thread(get_ok, live)

        serial = await asyncio.to_thread(rotate_server, files, first_ca)
        assert serial != first_serial
        await serves(port, tmp_path / "ca1.pem", serial, old_pair)

        whole = files.server_cert.read_bytes()
        replace_file(files.server_cert, whole[: len(whole) // 2])
        assert await asyncio.to_thread(served_serial, port, tmp_path / "ca1.pem", old_pair) == serial
        assert "keeping its current TLS certificate" in caplog.text

        second_ca = Authority.new("second CA")
        (tmp_path / "ca2.pem").write_bytes(second_ca.pem())
        new_pair = (tmp_path / "c2.pem", tmp_path / "c2-key.pem")
        second_ca.issue_to(*new_pair, "operator", CLIENT)
        replace_file(files.ca, second_ca.pem())
        new_serial = await asyncio.to_thread(rotate_server, files, second_ca)
        await serves(port, tmp_path / "ca2.pem", new_serial, new_pair)
        # A client certificate of the old CA: refused once the server has read its certificate.
        _serial, refused = await asyncio.to_thread(handshake, port, tmp_path / "ca2.pem", old_pair)
        try:
            answer = await asyncio.to_thread(get_ok, refused)
        except (ssl.SSLError, ConnectionError) as error:
            answer = repr(error).encode()
        refused.close()
        assert b"200 OK" not in answer, answer  # the server ends the connection (an alert, or at once)
        _serial, accepted = await asyncio.to_thread(handshake, port, tmp_path / "ca2.pem", new_pair)
        assert b"200 OK" in await asyncio.to_thread(get_ok, accepted)  # while the new CA's client is served
        accepted.close()

        # The connection made before all this still answers, with the certificate it began with.
        assert b"200 OK" in await asyncio.to_thread(get_ok, live)
        assert x509.load_der_x509_certificate(live.getpeercert(binary_form=True) or b"").serial_number == first_serial
        live.close()
