"""Who may call an agent's inference proxy when it listens beyond loopback.

The proxy serves plaintext (the agent has no serving certificate: pods are reached by IP), whatever the agent
uses to reach the scheduler. Its --tls-* flags are the agent's client credentials to the scheduler and say
nothing about its own callers, so the proxy counts as authenticated only when it checks inference callers' tokens
(--auth-tokens or --auth-token-review, with --auth-policy; --auth-inference auto turns the check on beyond
loopback). Otherwise the operator says plainly that anyone may call it: --auth-inference=off, or --insecure
(plaintext to the scheduler as well). An agent using TLS to the scheduler can do either.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.settings import AgentSettings, build_parser, parse_settings
from tests.support.auth_material import token_line
from tests.support.tls_material import TlsFiles, make_tls_files

BASE = ("--server-url=http://127.0.0.1:1", "--models-dir=/tmp/models", "--scheduler=scheduler.example:9005")
BEYOND_LOOPBACK = ("--proxy-http=0.0.0.0:9100", "--proxy-grpc=0.0.0.0:9500")


def settings(*argv: str) -> AgentSettings:
    return parse_settings(build_parser(argparse.ArgumentParser(prog="modelplane agent")), [*BASE, *argv], {})


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        settings(*argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def tls(tmp_path: Path) -> tuple[str, ...]:
    files: TlsFiles = make_tls_files(tmp_path)
    return (f"--tls-cert={files.client_cert}", f"--tls-key={files.client_key}", f"--tls-ca={files.ca}")


@pytest.fixture
def tokens_and_policy(tmp_path: Path) -> tuple[str, ...]:
    tokens, policy = tmp_path / "tokens", tmp_path / "policy.yaml"
    tokens.write_text(token_line("gateway-token", "the-gateway"))
    policy.write_text("identities:\n  the-gateway: [gateway]\n")
    return (f"--auth-tokens={tokens}", f"--auth-policy={policy}")


def test_tls_to_the_scheduler_and_a_proxy_that_checks_its_callers_tokens(
    tls: tuple[str, ...], tokens_and_policy: tuple[str, ...]
) -> None:
    agent = settings(*tls, *BEYOND_LOOPBACK, *tokens_and_policy)
    assert agent.security.uses_tls
    assert not agent.security.insecure
    # The token file authenticates the proxy's callers only if the proxy asks for tokens: auto means on here.
    assert agent.auth.inference_check, "a proxy beyond loopback with tokens and a policy admits anonymous callers"


def test_tls_to_the_scheduler_and_a_proxy_open_to_anyone_when_said_so(tls: tuple[str, ...]) -> None:
    agent = settings(*tls, *BEYOND_LOOPBACK, "--auth-inference=off")
    assert agent.security.uses_tls
    assert not agent.auth.inference_check


def test_a_proxy_beyond_loopback_that_cannot_name_its_callers_is_refused(
    capsys: pytest.CaptureFixture[str], tls: tuple[str, ...], tokens_and_policy: tuple[str, ...]
) -> None:
    said = refusal(capsys, *tls, *BEYOND_LOOPBACK)
    assert "refusing to serve 0.0.0.0:9100, 0.0.0.0:9500 beyond loopback without authentication" in said
    assert "--auth-inference=off" in said  # the way open to an agent with TLS, named
    # Tokens and a policy, but the check turned off: the tokens would authenticate no one.
    assert not settings(*tls, *BEYOND_LOOPBACK, *tokens_and_policy, "--auth-inference=off").auth.inference_check


def test_the_inference_check_needs_a_way_to_authenticate(
    capsys: pytest.CaptureFixture[str], tls: tuple[str, ...], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities: {}\n")
    said = refusal(capsys, *tls, "--auth-inference=on", f"--auth-policy={policy}")
    assert "--auth-inference=on needs a way to authenticate inference callers" in said


def test_on_loopback_the_proxy_needs_nothing(tls: tuple[str, ...], tokens_and_policy: tuple[str, ...]) -> None:
    assert not settings(*tls).auth.inference_check
    assert not settings(*tls, *tokens_and_policy).auth.inference_check  # auto: off on loopback
    assert settings(*tls, *tokens_and_policy, "--auth-inference=on").auth.inference_check


def test_insecure_still_opens_a_plaintext_agent(capsys: pytest.CaptureFixture[str]) -> None:
    agent = settings("--insecure", *BEYOND_LOOPBACK)
    assert agent.security.insecure
    assert not agent.auth.inference_check
    assert "--insecure cannot be combined with TLS certificate options" in refusal(
        capsys, "--insecure", "--tls-ca=/dev/null", *BEYOND_LOOPBACK
    )
