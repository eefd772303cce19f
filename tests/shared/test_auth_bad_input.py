"""Hypothesis: any authorization header a caller sends to the live scheduler is refused as UNAUTHENTICATED, and the
scheduler serves on; any token or policy file text is either used or refused with AuthFileError."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc
from modelplane.auth.policy import parse_policy
from modelplane.auth.reloading_file import AuthFileError
from modelplane.auth.tokens import parse_token_file
from tests.support.auth_material import token_line
from tests.support.processes import start_scheduler, stop_process

# What HTTP/2 can carry in a header value (gRPC refuses to send anything else).
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300).map(str.strip)


async def _status(listen: str, authorization: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(listen) as channel:
        try:
            await scheduler_pb2_grpc.SchedulerStub(channel).SchedulerStatus(
                pb.SchedulerStatusRequest(), metadata=(("authorization", authorization),), timeout=30
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_any_authorization_header_is_refused_cleanly(tmp_path: Path) -> None:
    tokens, policy = tmp_path / "tokens", tmp_path / "policy.yaml"
    tokens.write_text(token_line("the-real-token", "viewer-1"))
    policy.write_text("identities:\n  viewer-1: [viewer]\n")
    scheduler = start_scheduler(tmp_path, f"--auth-tokens={tokens}", f"--auth-policy={policy}")
    try:

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.one_of(header_values, header_values.map(lambda value: "Bearer " + value)))
        def refused(value: str) -> None:
            assert asyncio.run(_status(scheduler.listen, value)) == grpc.StatusCode.UNAUTHENTICATED

        refused()
        assert asyncio.run(_status(scheduler.listen, "Bearer the-real-token")) == grpc.StatusCode.OK
        assert scheduler.process.poll() is None
    finally:
        assert stop_process(scheduler.process) == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_token_file_is_used_or_refused_with_a_reason(text: str) -> None:
    try:
        entries = parse_token_file(text, "tokens")
    except AuthFileError as error:
        assert str(error).startswith("tokens line ")
    else:
        assert len(entries) <= text.count("\n") + 1


yaml_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def test_a_policy_whose_aliases_explode_is_refused_with_a_reason() -> None:
    lines = ['a0: &a0 "lol"'] + [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    with pytest.raises(AuthFileError, match=r"policy.yaml: not valid YAML: aliases expand"):
        parse_policy("\n".join(lines) + "\nidentities: {}\n", "policy.yaml")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), yaml_like.map(yaml.safe_dump)))
def test_any_policy_file_is_used_or_refused_with_a_reason(text: str) -> None:
    try:
        parse_policy(text, "policy.yaml")
    except AuthFileError as error:
        assert str(error).startswith("policy.yaml")
