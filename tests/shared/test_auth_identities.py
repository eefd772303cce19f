"""Identities and roles against the real scheduler process: callers named by their client certificate's SANs and by
tokens from the token file; the token file and the policy file changed while it runs; namespace and name-prefix
limits; acknowledgements only from a gateway; the refusal to listen beyond loopback without authentication; the
gateway presenting its token."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc
import pytest
from aiohttp import web
from cryptography import x509

from generated.mlops.chainer import chainer_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc
from modelplane.addresses import parse_address
from modelplane.auth.access_check import AccessCheck, AuthSettings
from modelplane.auth.http_access import protect
from modelplane.auth.policy import parse_policy
from modelplane.auth.reloading_file import AuthFileError
from modelplane.auth.tokens import parse_token_file
from modelplane.transport import TransportSecurity, http_client_ssl, http_server_ssl, open_channel
from tests.support.auth_certificates import new_ca
from tests.support.auth_material import bearer, token_line, write_replacing
from tests.support.processes import SchedulerProcess, run_modelplane, start_gateway, start_scheduler, stop_process
from trainer.service.status_api import build_app as trainer_app

PLAIN = TransportSecurity()


async def _status(scheduler: SchedulerProcess, security: TransportSecurity, token: str | None = None) -> str:
    """SchedulerStatus (viewer) as this caller: "OK", or the refusal's code and details."""
    async with open_channel(parse_address(scheduler.listen), security, token) as channel:
        try:
            await scheduler_pb2_grpc.SchedulerStub(channel).SchedulerStatus(pb.SchedulerStatusRequest(), timeout=30)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
    return "OK"


async def _call(scheduler: SchedulerProcess, token: str, rpc: str, request: object) -> tuple[grpc.StatusCode, str]:
    async with open_channel(parse_address(scheduler.listen), PLAIN, token) as channel:
        try:
            await getattr(scheduler_pb2_grpc.SchedulerStub(channel), rpc)(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_certificate_sans_name_the_caller(tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "ca")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "identities:\n"
        "  spiffe://test.example/viewer: [viewer]\n"
        "  viewer.test.example: [viewer]\n"
        "  ops@test.example: [viewer]\n"
    )
    uri_and_dns = ca.client(
        "uri", [x509.UniformResourceIdentifier("spiffe://test.example/viewer"), x509.DNSName("other.test.example")]
    )
    dns_only = ca.client("dns", [x509.DNSName("viewer.test.example")])
    email_only = ca.client("email", [x509.RFC822Name("ops@test.example")])
    unknown = ca.client("nobody", [x509.UniformResourceIdentifier("spiffe://test.example/nobody")])
    ip_only = ca.client("ip", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])

    (tmp_path / "default").mkdir()
    scheduler = start_scheduler(tmp_path / "default", *ca.server_flags(), f"--auth-policy={policy}")
    try:
        # Default kinds: URI, then DNS.
        assert await _status(scheduler, uri_and_dns) == "OK"
        assert await _status(scheduler, dns_only) == "OK"
        assert await _status(scheduler, email_only) == (
            "UNAUTHENTICATED: the client certificate has no URI or DNS subject alternative name to identify it"
        )
        assert await _status(scheduler, ip_only) == "UNAUTHENTICATED: " + (
            "no credential: present a client certificate or an 'authorization: Bearer' token"
        )
        refused = await _status(scheduler, unknown)
        assert refused.startswith("PERMISSION_DENIED: ")
        assert "needs role viewer, which spiffe://test.example/nobody does not have" in refused
    finally:
        assert stop_process(scheduler.process) == 0

    (tmp_path / "email").mkdir()
    scheduler = start_scheduler(
        tmp_path / "email", *ca.server_flags(), f"--auth-policy={policy}", "--auth-san-kind=email"
    )
    try:
        assert await _status(scheduler, email_only) == "OK"
        assert await _status(scheduler, uri_and_dns) == (
            "UNAUTHENTICATED: the client certificate has no EMAIL subject alternative name to identify it"
        )
    finally:
        assert stop_process(scheduler.process) == 0


async def test_tokens_from_the_file_changed_while_running(tmp_path: Path) -> None:
    tokens, policy = tmp_path / "tokens", tmp_path / "policy.yaml"
    tokens.write_text("# viewers\n" + token_line("first-token", "alice") + token_line("group-token", "bob", "readers"))
    policy.write_text("identities:\n  alice: [viewer]\ngroups:\n  readers: [viewer]\n")
    scheduler = start_scheduler(tmp_path, f"--auth-tokens={tokens}", f"--auth-policy={policy}")
    try:
        assert await _status(scheduler, PLAIN, "first-token") == "OK"
        assert await _status(scheduler, PLAIN, "group-token") == "OK"  # bob, a viewer through his group
        assert await _status(scheduler, PLAIN, "second-token") == "UNAUTHENTICATED: the bearer token is not valid"
        assert (await _status(scheduler, PLAIN)).startswith("UNAUTHENTICATED: no credential")

        write_replacing(tokens, token_line("second-token", "alice"))
        assert await _status(scheduler, PLAIN, "second-token") == "OK"
        assert await _status(scheduler, PLAIN, "first-token") == "UNAUTHENTICATED: the bearer token is not valid"
        assert await _status(scheduler, PLAIN, "group-token") == "UNAUTHENTICATED: the bearer token is not valid"

        # A broken file keeps the last good one in force, and the log says why, naming the line.
        write_replacing(tokens, token_line("third-token", "alice") + "not-a-hash alice\n")
        assert await _status(scheduler, PLAIN, "second-token") == "OK"
        assert await _status(scheduler, PLAIN, "third-token") == "UNAUTHENTICATED: the bearer token is not valid"
        assert f"{tokens} line 2: the first field must be the token's SHA-256" in scheduler.log()
        assert "third-token" not in scheduler.log()

        # So does a file that is gone; once it is back, it is read again.
        tokens.unlink()
        assert await _status(scheduler, PLAIN, "second-token") == "OK"
        assert f"cannot read {tokens}" in scheduler.log()
        write_replacing(tokens, token_line("third-token", "alice"))
        assert await _status(scheduler, PLAIN, "third-token") == "OK"
        assert await _status(scheduler, PLAIN, "second-token") == "UNAUTHENTICATED: the bearer token is not valid"
    finally:
        assert stop_process(scheduler.process) == 0


async def test_policy_changed_while_running_with_namespace_and_prefix_limits(tmp_path: Path) -> None:
    tokens, policy = tmp_path / "tokens", tmp_path / "policy.yaml"
    tokens.write_text(token_line("alice-token", "alice") + token_line("gateway-token", "gw"))
    policy.write_text("identities:\n  alice: [viewer]\n  gw: [gateway]\n")
    scheduler = start_scheduler(tmp_path, f"--auth-tokens={tokens}", f"--auth-policy={policy}")

    def load(name: str, namespace: str) -> pb.LoadModelRequest:
        meta = pb.MetaData(name=name, kubernetesMeta=pb.KubernetesMeta(namespace=namespace))
        return pb.LoadModelRequest(model=pb.Model(meta=meta))

    try:
        code, details = await _call(scheduler, "alice-token", "LoadModel", load("a-iris", "team-a"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "needs role controller or operator, which alice does not have" in details

        write_replacing(
            policy,
            "identities:\n"
            "  alice:\n"
            "    - viewer\n"
            "    - role: operator\n"
            "      namespaces: [team-a]\n"
            "      namePrefixes: [a-]\n"
            "  gw: [gateway]\n",
        )
        # Within the limits: past the access check (the empty model is then refused as invalid input).
        code, details = await _call(scheduler, "alice-token", "LoadModel", load("a-iris", "team-a"))
        assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), details
        code, details = await _call(scheduler, "alice-token", "LoadModel", load("a-iris", "team-b"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "model 'a-iris' in namespace 'team-b'" in details
        assert "operator only for namespaces team-a and names starting a-" in details
        code, details = await _call(scheduler, "alice-token", "LoadModel", load("b-iris", "team-a"))
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        # A request that names no namespace is not within a namespace limit.
        code, details = await _call(scheduler, "alice-token", "UnloadPipeline", pb.UnloadPipelineRequest(name="a-p"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "(no namespace given)" in details

        # Acknowledgements come from gateways only: an operator's is refused, a gateway's goes through.
        for rpc, ack in (
            ("ModelStatusEvent", pb.ModelUpdateStatusMessage()),
            ("PipelineStatusEvent", chainer_pb2.PipelineUpdateStatusMessage()),
        ):
            code, details = await _call(scheduler, "alice-token", rpc, ack)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "needs role gateway, which alice does not have" in details
            code, details = await _call(scheduler, "gateway-token", rpc, ack)
            assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), details

        # A policy that does not parse keeps the last good one in force.
        write_replacing(policy, "identities:\n  alice: [superuser]\n")
        code, details = await _call(scheduler, "alice-token", "LoadModel", load("a-iris", "team-b"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "operator only for namespaces team-a" in details
        assert "identities.alice[0]: unknown role 'superuser'" in scheduler.log()
    finally:
        assert stop_process(scheduler.process) == 0


async def test_the_gateway_presents_its_token_to_the_scheduler(tmp_path: Path) -> None:
    tokens, policy, gateway_token = tmp_path / "tokens", tmp_path / "policy.yaml", tmp_path / "gateway-token"
    tokens.write_text(token_line("the-gateway-token", "gateway-1"))
    policy.write_text("identities:\n  gateway-1: [gateway]\n")
    gateway_token.write_text("the-gateway-token\n")
    scheduler = start_scheduler(tmp_path, f"--auth-tokens={tokens}", f"--auth-policy={policy}")
    try:
        # Ready once its first routing table is in: WatchRoutes, which only a gateway identity may call.
        gateway = start_gateway(tmp_path / "gateway", scheduler.listen, f"--auth-token-file={gateway_token}")
        assert stop_process(gateway.process) == 0
        assert "the-gateway-token" not in gateway.log_path.read_text()
    finally:
        assert stop_process(scheduler.process) == 0


def test_listening_beyond_loopback_needs_authentication(tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "ca")
    cert, key = ca.issue("server", [x509.DNSName("localhost")], server=True)
    # TLS without client certificates or tokens: anyone may call. Refused before anything listens.
    refused = run_modelplane(
        "scheduler",
        "--listen=0.0.0.0:0",
        "--agent-listen=127.0.0.1:0",
        f"--state-dir={tmp_path / 'state'}",
        f"--tls-cert={cert}",
        f"--tls-key={key}",
    )
    assert refused.returncode == 2
    assert "refusing to serve 0.0.0.0:0 beyond loopback without authentication" in refused.stderr
    refused = run_modelplane("gateway", "--listen=0.0.0.0:0", f"--serve-tls-cert={cert}", f"--serve-tls-key={key}")
    assert refused.returncode == 2
    assert "beyond loopback without authentication" in refused.stderr
    refused = run_modelplane(
        "registry",
        "--listen=0.0.0.0:0",
        f"--state-dir={tmp_path / 'registry'}",
        f"--serve-tls-cert={cert}",
        f"--serve-tls-key={key}",
    )
    assert refused.returncode == 2
    assert "beyond loopback without authentication" in refused.stderr
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("t", "someone"))
    refused = run_modelplane("scheduler", f"--auth-tokens={tokens}", f"--state-dir={tmp_path / 'state'}")
    assert refused.returncode == 2
    assert "--auth-tokens needs --auth-policy" in refused.stderr


def test_a_bad_token_or_policy_file_stops_the_scheduler_at_start(tmp_path: Path) -> None:
    tokens, policy = tmp_path / "tokens", tmp_path / "policy.yaml"
    tokens.write_text("# ok\n" + token_line("t", "someone") + token_line("t", "someone-else"))
    policy.write_text("identities: {someone: [viewer]}\n")
    refused = run_modelplane(
        "scheduler", f"--auth-tokens={tokens}", f"--auth-policy={policy}", f"--state-dir={tmp_path / 'state'}"
    )
    assert refused.returncode == 2
    assert f"{tokens} line 3: this token hash appears on an earlier line as well" in refused.stderr


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("abc alice\n", "line 1: the first field must be the token's SHA-256"),
        ("\n# c\n" + "a" * 64 + "\n", "line 3: expected '<sha256-hex> <identity> [group,group...]', got 1 fields"),
        ("a" * 64 + " alice g1,,g2\n", "line 1: group '' must be"),
        ("a" * 64 + " alice g x\n", "got 4 fields"),
    ],
)
def test_token_file_errors_name_the_line(text: str, error: str) -> None:
    with pytest.raises(AuthFileError, match=None) as raised:
        parse_token_file(text, "tokens")
    assert error in str(raised.value)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("identities: [alice]\n", "'identities' must map names to lists of grants"),
        ("identities:\n  alice: viewer\n", "identities.alice: must be a list of grants"),
        ("identities:\n  alice: [{role: viewer, namespace: [a]}]\n", "unknown key(s) namespace"),
        ("identities:\n  alice: [{role: viewer, namespaces: a}]\n", "namespaces must be a list"),
        ("roles: {}\n", "unknown key(s) roles"),
        ("identities:\n  alice: [viewer\n", "line 3: not valid YAML"),
        ("groups:\n  'two words': [viewer]\n", "a name is 1-253 printable characters"),
    ],
)
def test_policy_file_errors_say_where(text: str, error: str) -> None:
    with pytest.raises(AuthFileError) as raised:
        parse_policy(text, "policy.yaml")
    assert error in str(raised.value)


async def test_gateway_inference_check_with_tokens(tmp_path: Path) -> None:
    """The gateway's REST inference endpoints with --auth-inference=on: a token is needed to infer, not to probe."""
    tokens, policy = tmp_path / "tokens", tmp_path / "policy.yaml"
    tokens.write_text(token_line("client-token", "client-1"))
    policy.write_text("identities:\n  client-1: []\n")
    scheduler = start_scheduler(tmp_path)  # no policy: the gateway needs no token to watch routes
    try:
        gateway = start_gateway(
            tmp_path / "gateway",
            scheduler.listen,
            f"--auth-tokens={tokens}",
            f"--auth-policy={policy}",
            "--auth-inference=on",
        )
        try:
            base = f"http://{gateway.listen}"
            async with aiohttp.ClientSession() as session:
                infer = f"{base}/v2/models/iris/infer"
                document = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
                async with session.post(infer, json=document) as response:
                    assert response.status == 401
                    assert response.headers["WWW-Authenticate"] == "Bearer"
                async with session.post(infer, json=document, headers=dict(bearer("wrong"))) as response:
                    assert response.status == 401
                    assert (await response.json())["error"] == "the bearer token is not valid"
                async with session.post(infer, json=document, headers=dict(bearer("client-token"))) as response:
                    assert response.status == 404, await response.text()  # past the check: no such model
                async with session.get(f"{base}/v2/health/live") as response:
                    assert response.status == 200
        finally:
            assert stop_process(gateway.process) == 0
    finally:
        assert stop_process(scheduler.process) == 0


async def test_http_caller_from_the_client_certificate(tmp_path: Path) -> None:
    """The HTTP middleware names a mutual-TLS caller by its certificate's SAN (the trainer's status API)."""
    ca = new_ca(tmp_path / "ca")
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities:\n  spiffe://test.example/dashboard: [viewer]\n")
    cert, key = ca.issue("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], server=True)
    serving = http_server_ssl(TransportSecurity(cert_file=cert, key_file=key, ca_file=ca.ca_file))
    access = AccessCheck(AuthSettings(policy_file=policy))
    runner = web.AppRunner(protect(trainer_app(cast(Any, _NoRuns()), lambda: {}), access), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=serving)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for san, status, said in (
            ("spiffe://test.example/dashboard", 200, None),
            ("spiffe://test.example/intruder", 403, "needs role viewer, which spiffe://test.example/intruder does"),
        ):
            client = ca.client(san.rsplit("/", 1)[1], [x509.UniformResourceIdentifier(san)])
            context = http_client_ssl(client.ca_file, client.cert_file, client.key_file)
            assert context is not None
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"https://127.0.0.1:{port}/runs", ssl=context) as response,
            ):
                body = await response.json()
                assert response.status == status, body
                if said is not None:
                    assert said in body["error"]
    finally:
        await runner.cleanup()


class _NoRuns:
    async def list_runs(self, limit: int = 100) -> list[Any]:
        return []

    async def get(self, run_id: str) -> Any:
        return None


def test_the_command_line_presents_a_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    tokens, policy, token_file = tmp_path / "tokens", tmp_path / "policy.yaml", tmp_path / "my-token"
    tokens.write_text(token_line("cli-token", "carol"))
    policy.write_text("identities:\n  carol: [viewer]\n")
    token_file.write_text("cli-token\n")
    scheduler = start_scheduler(tmp_path, f"--auth-tokens={tokens}", f"--auth-policy={policy}")
    try:
        anonymous = run_modelplane("model", "status", f"--scheduler={scheduler.listen}")
        assert anonymous.returncode == 1
        assert "no credential" in anonymous.stderr
        from_file = run_modelplane(
            "model", "status", f"--scheduler={scheduler.listen}", f"--auth-token-file={token_file}"
        )
        assert from_file.returncode == 0, from_file.stderr
        environment = {**os.environ, "MODELPLANE_AUTH_TOKEN": "cli-token"}
        from_env = run_modelplane("server", "status", f"--scheduler={scheduler.listen}", env=environment)
        assert from_env.returncode == 0, from_env.stderr
        environment = {**os.environ, "MODELPLANE_AUTH_TOKEN": "not-the-token"}
        refused = run_modelplane("status", f"--scheduler={scheduler.listen}", env=environment)
        assert "the bearer token is not valid" in refused.stdout + refused.stderr
    finally:
        assert stop_process(scheduler.process) == 0
