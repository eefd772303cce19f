"""Kubernetes ServiceAccount tokens as identities: a real scheduler started with --auth-token-review asks the (fake)
API server about the tokens its token file does not know, with the audience it was given, and gives the accounts
the policy's roles; every serving command takes the flag with its --k8s-* flags, and counts it as a way to
authenticate beyond loopback. Clients present a token file as it is at each call: the kubelet rotates projected
tokens about hourly, and a channel or an agent session lives longer than that."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent import settings as agent_settings
from gateway import settings as gateway_settings
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc
from modelplane.addresses import parse_address
from modelplane.auth.client_token import ClientToken
from modelplane.auth_flags import client_token
from modelplane.transport import TransportSecurity, open_channel
from scheduler import settings as scheduler_settings
from tests.support.auth_material import token_line, write_replacing
from tests.support.fake_kubernetes_api import FakeKubernetesApi
from tests.support.processes import SchedulerProcess, start_scheduler, stop_process
from tests.support.tls_material import make_tls_files
from trainer import settings as trainer_settings

CONTROLLER = "system:serviceaccount:modelplane:modelplane-controller"
CONTROLLER_TOKEN = "projected-token-of-the-controller"  # noqa: S105 - a test token
OPS_TOKEN = "projected-token-of-someone-in-ops"  # noqa: S105 - a test token
STRANGER_TOKEN = "projected-token-of-an-account-without-roles"  # noqa: S105 - a test token
AGENT_AUDIENCE_TOKEN = "projected-token-for-the-agents-only"  # noqa: S105 - a test token
AUDIENCE = "modelplane-scheduler"


@pytest.fixture
async def api() -> AsyncIterator[FakeKubernetesApi]:
    fake = FakeKubernetesApi()
    for token, user in (
        (CONTROLLER_TOKEN, {"username": CONTROLLER, "groups": ["system:serviceaccounts:modelplane"]}),
        (OPS_TOKEN, {"username": "system:serviceaccount:ops:dashboard", "groups": ["system:serviceaccounts:ops"]}),
        (STRANGER_TOKEN, {"username": "system:serviceaccount:default:default"}),
        (AGENT_AUDIENCE_TOKEN, {"username": "system:serviceaccount:modelplane:modelplane-gateway"}),
    ):
        fake.token_reviews[token] = {"authenticated": True, "user": user}
        fake.token_audiences[token] = [AUDIENCE]
    fake.token_audiences[AGENT_AUDIENCE_TOKEN] = ["modelplane-agent"]
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def _status(scheduler: SchedulerProcess, token: ClientToken | str | None) -> str:
    """SchedulerStatus (viewer) as this caller: "OK", or the refusal's code and details."""
    async with open_channel(parse_address(scheduler.listen), TransportSecurity(), token) as channel:
        return await _status_on(channel)


async def _status_on(channel: grpc.aio.Channel) -> str:
    try:
        await scheduler_pb2_grpc.SchedulerStub(channel).SchedulerStatus(pb.SchedulerStatusRequest(), timeout=30)
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}: {error.details()}"
    return "OK"


async def test_the_scheduler_names_service_accounts_by_token_review(api: FakeKubernetesApi, tmp_path: Path) -> None:
    tokens, policy = tmp_path / "tokens", tmp_path / "policy.yaml"
    tokens.write_text(token_line("ci-token", "ci"))
    policy.write_text(
        f"identities:\n  {CONTROLLER}: [controller, viewer]\n  ci: [viewer]\n"
        "groups:\n  system:serviceaccounts:ops: [viewer]\n"
    )
    scheduler = start_scheduler(
        tmp_path,
        f"--auth-tokens={tokens}",
        "--auth-token-review",
        f"--auth-token-audience={AUDIENCE}",
        f"--k8s-api={api.url}",
        f"--auth-policy={policy}",
    )
    try:
        assert await _status(scheduler, CONTROLLER_TOKEN) == "OK"
        [review] = api.requests_for("POST", "/tokenreviews")
        assert review.body["spec"] == {"token": CONTROLLER_TOKEN, "audiences": [AUDIENCE]}
        assert await _status(scheduler, OPS_TOKEN) == "OK", "a role given to the account's group"
        assert await _status(scheduler, "ci-token") == "OK"
        assert len(api.requests_for("POST", "/tokenreviews")) == 2, "the token file's token needs no review"
        assert await _status(scheduler, CONTROLLER_TOKEN) == "OK"
        assert len(api.requests_for("POST", "/tokenreviews")) == 2, "a reviewed token is remembered a while"

        assert await _status(scheduler, STRANGER_TOKEN) == (
            "PERMISSION_DENIED: /seldon.mlops.scheduler.Scheduler/SchedulerStatus needs role viewer, which "
            "system:serviceaccount:default:default does not have"
        )
        assert await _status(scheduler, "forged") == "UNAUTHENTICATED: the bearer token is not valid"
        assert await _status(scheduler, AGENT_AUDIENCE_TOKEN) == "UNAUTHENTICATED: the bearer token is not valid", (
            "a token issued for the agents is no good here"
        )
        api.inject_error("POST", "/tokenreviews", 503, "ServiceUnavailable")
        fresh = "a-token-asked-while-the-api-server-is-down"
        api.token_reviews[fresh] = api.token_reviews[CONTROLLER_TOKEN]
        api.token_audiences[fresh] = [AUDIENCE]
        assert await _status(scheduler, fresh) == "UNAUTHENTICATED: the bearer token is not valid", "fails closed"
        assert await _status(scheduler, fresh) == "OK", "and asks again once the API server answers"
        assert await _status(scheduler, None) == (
            "UNAUTHENTICATED: no credential: present a client certificate or an 'authorization: Bearer' token"
        )
    finally:
        assert stop_process(scheduler.process) == 0


async def test_a_channel_presents_the_token_file_as_it_is_at_each_call(tmp_path: Path) -> None:
    """The kubelet replaces a projected token file before the token expires; the API server then refuses the old
    one. A long-lived channel (the controller's, an agent's sessions) must send the new token from then on."""
    tokens, policy, presented = tmp_path / "tokens", tmp_path / "policy.yaml", tmp_path / "token"
    tokens.write_text(token_line("first-hour", "controller"))
    policy.write_text("identities:\n  controller: [viewer]\n")
    presented.write_text("first-hour\n")
    scheduler = start_scheduler(tmp_path, f"--auth-tokens={tokens}", f"--auth-policy={policy}")
    try:
        token = client_token(presented)
        async with open_channel(parse_address(scheduler.listen), TransportSecurity(), token) as channel:
            assert await _status_on(channel) == "OK"
            # Rotated: the server knows only the new token, the file holds only the new token.
            write_replacing(tokens, token_line("second-hour", "controller"))
            write_replacing(presented, "second-hour\n")
            assert await _status_on(channel) == "OK", "the channel still sent the token it was opened with"
            # A file being replaced (gone for a moment, or empty) keeps the last good token in use.
            presented.unlink()
            assert await _status_on(channel) == "OK"
            presented.write_text("")
            assert await _status_on(channel) == "OK"
            write_replacing(presented, "third-hour\n")
            assert await _status_on(channel) == "UNAUTHENTICATED: the bearer token is not valid"
    finally:
        assert stop_process(scheduler.process) == 0


def test_a_token_file_that_changes_is_read_again_and_a_broken_one_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    token = ClientToken.from_file(path)
    assert token.current() == "one"
    write_replacing(path, "two words\n")
    with caplog.at_level(logging.WARNING):
        assert token.current() == "one"
        assert token.current() == "one"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"the token in the token file {path} is not one printable word of at most 4096 characters; presenting the "
        "last token until the file changes again"
    ], "logged once per change, never the token"
    write_replacing(path, "three\n")
    assert token.current() == "three"
    assert "three" not in repr(token)
    assert client_token(None, {"MODELPLANE_AUTH_TOKEN": "from-env"}).current() == "from-env"  # type: ignore[union-attr]
    assert client_token(None, {}) is None


Parse = Callable[[argparse.ArgumentParser, Sequence[str], Mapping[str, str]], Any]
Build = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
SERVING: dict[str, tuple[Build, Parse, tuple[str, ...]]] = {
    "scheduler": (scheduler_settings.build_parser, scheduler_settings.parse_settings, ()),
    "agent": (
        agent_settings.build_parser,
        agent_settings.parse_settings,
        ("--server-url=http://127.0.0.1:1", "--models-dir=/tmp/models"),
    ),
    "gateway": (gateway_settings.build_parser, gateway_settings.parse_settings, ()),
    "trainer": (trainer_settings.build_parser, trainer_settings.parse_settings, ()),
}


def _parse(command: str, *argv: str) -> Any:
    build, parse, base = SERVING[command]
    return parse(build(argparse.ArgumentParser(prog=f"modelplane {command}")), [*base, *argv], {})


@pytest.mark.parametrize("command", sorted(SERVING))
def test_every_serving_command_takes_token_review_with_its_kubernetes_flags(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities: {}\n")
    review = ("--auth-token-review", "--k8s-in-cluster", "--auth-token-audience=modelplane,other")
    auth = _parse(command, *review, f"--auth-policy={policy}").auth
    assert auth.token_review is not None
    assert auth.token_review.connection.in_cluster
    assert auth.token_review.audiences == ("modelplane", "other")
    for argv, said in (
        (review, "--auth-token-review needs --auth-policy"),
        (("--auth-token-audience=x",), "--auth-token-audience is for --auth-token-review"),
        (("--auth-token-review", "--auth-token-audience=a b", f"--auth-policy={policy}"), "is not an audience"),
    ):
        with pytest.raises(SystemExit):
            _parse(command, *argv)
        assert said in capsys.readouterr().err


@pytest.mark.parametrize("command", ["scheduler", "gateway"])
def test_token_review_is_a_way_to_authenticate_beyond_loopback(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = make_tls_files(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities: {}\n")
    if command == "scheduler":
        argv: tuple[str, ...] = ("--listen=0.0.0.0:9004", f"--tls-cert={files.server_cert}")
        argv += (f"--tls-key={files.server_key}", f"--state-dir={tmp_path / 'state'}")
    else:
        argv = ("--listen=0.0.0.0:9000", f"--serve-tls-cert={files.server_cert}", f"--serve-tls-key={files.server_key}")
    with pytest.raises(SystemExit):
        _parse(command, *argv)
    assert "beyond loopback without authentication" in capsys.readouterr().err
    settings = _parse(command, *argv, "--auth-token-review", "--k8s-in-cluster", f"--auth-policy={policy}")
    assert settings.auth.token_review is not None
