"""TLS and mutual TLS through the one transport factory, against the real scheduler process."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import grpc
import pytest

from generated.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from modelplane.addresses import Address, parse_address
from modelplane.transport import TransportError, TransportSecurity, bind, http_server_ssl, new_server, open_channel
from tests.support.processes import run_modelplane, start_scheduler, stop_process
from tests.support.tls_material import TlsFiles, make_tls_files


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path)


async def _status(address: str, security: TransportSecurity) -> str:
    async with open_channel(parse_address(address), security) as channel:
        response = await scheduler_pb2_grpc.SchedulerStub(channel).SchedulerStatus(
            scheduler_pb2.SchedulerStatusRequest(), timeout=5
        )
    return response.applicationVersion


async def test_tls(tmp_path: Path, tls: TlsFiles) -> None:
    scheduler = start_scheduler(tmp_path, f"--tls-cert={tls.server_cert}", f"--tls-key={tls.server_key}")
    try:
        assert await _status(scheduler.listen, TransportSecurity(ca_file=tls.ca))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _status(scheduler.listen, TransportSecurity())  # plaintext client against a TLS server
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        # Its metrics listener is TLS too: HTTPS with the CA answers, plain HTTP does not.
        metrics_url = f"{scheduler.metrics_listen}/metrics"
        verified = ssl.create_default_context(cafile=str(tls.ca))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://{metrics_url}", ssl=verified) as response:
                assert response.status == 200
                assert "modelplane_scheduler_models" in await response.text()
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://{metrics_url}") as response:
                    await response.read()
    finally:
        assert stop_process(scheduler.process) == 0


async def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, tls: TlsFiles) -> None:
    scheduler = start_scheduler(
        tmp_path, f"--tls-cert={tls.server_cert}", f"--tls-key={tls.server_key}", f"--tls-ca={tls.ca}"
    )
    try:
        with_cert = TransportSecurity(ca_file=tls.ca, cert_file=tls.client_cert, key_file=tls.client_key)
        assert await _status(scheduler.listen, with_cert)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _status(scheduler.listen, TransportSecurity(ca_file=tls.ca))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        status = run_modelplane(
            "status",
            f"--scheduler={scheduler.listen}",
            f"--tls-ca={tls.ca}",
            f"--tls-cert={tls.client_cert}",
            f"--tls-key={tls.client_key}",
        )
        assert status.returncode == 0, status.stderr
        assert "health:   SERVING" in status.stdout
    finally:
        assert stop_process(scheduler.process) == 0


@pytest.mark.parametrize(
    ("security", "message"),
    [
        (TransportSecurity(insecure=True, ca_file=Path("/x")), "cannot be combined"),
        (TransportSecurity(cert_file=Path("/x")), "must be given together"),
        (TransportSecurity(ca_file=Path("/no/such/ca.pem")), "does not exist"),
    ],
)
def test_inconsistent_settings(security: TransportSecurity, message: str) -> None:
    with pytest.raises(TransportError, match=message):
        security.validate()


async def test_a_server_with_a_ca_and_no_certificate_refuses_to_start(tls: TlsFiles) -> None:
    # Serving plaintext when client certificates were asked for would be the worst reading of these flags.
    security = TransportSecurity(ca_file=tls.ca)
    with pytest.raises(TransportError, match="needs its own certificate and key"):
        http_server_ssl(security)
    with pytest.raises(TransportError, match="needs its own certificate and key"):
        bind(new_server(), Address("127.0.0.1", 0), security)
    assert http_server_ssl(TransportSecurity(cert_file=tls.server_cert, key_file=tls.server_key)) is not None


def test_missing_certificate_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_modelplane(
        "scheduler", f"--state-dir={tmp_path}", f"--tls-cert={tmp_path / 'no.pem'}", f"--tls-key={tmp_path / 'no.pem'}"
    )
    assert result.returncode == 2
    assert "does not exist or is not a file" in result.stderr
