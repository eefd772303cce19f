"""An agent in a StatefulSet pod takes its replica index (and server name) from the pod's name; a name it cannot
use stops it at start with a clear message."""

from __future__ import annotations

import argparse
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.pod_identity import PodIdentity, PodNameError, identity_from_pod_name
from agent.settings import AgentSettings, build_parser, parse_settings
from tests.support.processes import MODELPLANE

BASE = ("--server-url=http://127.0.0.1:1", "--models-dir=/tmp/models")


def settings(*argv: str) -> AgentSettings:
    return parse_settings(build_parser(argparse.ArgumentParser(prog="modelplane agent")), [*BASE, *argv], {})


@pytest.mark.parametrize(
    ("pod_name", "identity"),
    [
        ("mlserver-0", PodIdentity("mlserver", 0)),
        ("iris-servers-3", PodIdentity("iris-servers", 3)),
        ("triton-2-9999", PodIdentity("triton-2", 9999)),
    ],
)
def test_the_ordinal_is_the_replica_index_and_the_rest_the_server(pod_name: str, identity: PodIdentity) -> None:
    assert identity_from_pod_name(pod_name) == identity


@pytest.mark.parametrize(
    ("pod_name", "message"),
    [
        ("mlserver", "does not end in a StatefulSet ordinal"),
        ("mlserver-", "does not end in a StatefulSet ordinal"),
        ("mlserver-01", "does not end in a StatefulSet ordinal"),
        ("mlserver-10000", "above 9999"),
        ("mlserver-99999999999999999999999", "above 9999"),
        ("-3", "does not end in a StatefulSet ordinal"),
        ("Ml_Server-3", "server name"),
        ("$(POD_NAME)", "left unexpanded"),
        ("", "1 to 253"),
    ],
)
def test_a_pod_name_without_a_usable_ordinal_is_refused(pod_name: str, message: str) -> None:
    with pytest.raises(PodNameError, match=message):
        identity_from_pod_name(pod_name)


@given(st.text(max_size=300))
def test_any_pod_name_gives_an_identity_or_a_pod_name_error(pod_name: str) -> None:
    try:
        identity = identity_from_pod_name(pod_name)
    except PodNameError:
        return
    assert pod_name == f"{identity.server_name}-{identity.replica_idx}"
    assert 0 <= identity.replica_idx <= 9999


def test_the_settings_take_server_and_replica_from_the_pod_name() -> None:
    from_pod = settings("--pod-name=iris-servers-2")
    assert (from_pod.server_name, from_pod.replica_idx) == ("iris-servers", 2)
    named = settings("--pod-name=sts-name-4", "--server-name=iris-servers")
    assert (named.server_name, named.replica_idx) == ("iris-servers", 4)
    plain = settings()
    assert (plain.server_name, plain.replica_idx) == ("mlserver", 0)


def test_the_settings_refuse_a_pod_name_beside_a_replica_index(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings("--pod-name=mlserver-1", "--replica-idx=1")
    assert "--pod-name (the index is its ordinal) or --replica-idx, not both" in capsys.readouterr().err


def test_an_agent_started_with_a_bad_pod_name_exits_at_once_saying_why() -> None:
    done = subprocess.run(
        [*MODELPLANE, "agent", *BASE, "--pod-name=mlserver"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--pod-name 'mlserver' does not end in a StatefulSet ordinal: expected NAME-N" in done.stderr
