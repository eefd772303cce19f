"""The scheduler's leader-election flags: without --leader-election-lease nothing changes; bad values exit 2 with
a message that says what is wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from scheduler.settings import SchedulerSettings, build_parser, parse_settings


def parse(tmp_path: Path, *argv: str) -> SchedulerSettings:
    return parse_settings(build_parser(argparse.ArgumentParser()), [f"--state-dir={tmp_path}", *argv], environ={})


def test_without_a_lease_there_is_no_election(tmp_path: Path) -> None:
    settings = parse(tmp_path)
    assert settings.leader_election is None


def test_the_election_flags(tmp_path: Path) -> None:
    settings = parse(
        tmp_path,
        "--leader-election-lease=modelplane-scheduler",
        "--leader-election-namespace=mlops",
        "--leader-election-identity=scheduler-1",
        "--lease-duration=20",
        "--renew-deadline=12.5",
        "--retry-period=1",
        "--advertise-address=10.0.0.7",
        "--listen=127.0.0.1:9004",
        "--k8s-api=https://kubernetes.default.svc",
    )
    election = settings.leader_election
    assert election is not None
    assert (election.lease, election.namespace, election.identity) == ("modelplane-scheduler", "mlops", "scheduler-1")
    assert election.timing.lease_duration_seconds == 20
    assert (election.timing.renew_deadline_seconds, election.timing.retry_period_seconds) == (12.5, 1.0)
    assert election.advertised(9004) == "10.0.0.7:9004"
    assert election.kubernetes.host == "https://kubernetes.default.svc"


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--renew-deadline=15"], "must be shorter than the lease duration"),
        (["--retry-period=10"], "retry period 10s must be"),
        (["--lease-duration=0"], "is not a whole number from 1 to 3600"),
        (["--lease-duration=1.5"], "is not a whole number"),
        (["--leader-election-lease=Not_A_Name"], "is not a Kubernetes object name"),
        (["--leader-election-namespace=a.b"], "is not a Kubernetes namespace name"),
        (["--leader-election-identity=has space"], "--leader-election-identity 'has space'"),
        (["--advertise-address=bad host"], "--advertise-address 'bad host' is not a host name"),
        (["--k8s-token-file=/nonexistent/token"], "--k8s-token-file"),
    ],
)
def test_bad_election_flags_exit_2_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(tmp_path, "--leader-election-lease=scheduler", *flags)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
