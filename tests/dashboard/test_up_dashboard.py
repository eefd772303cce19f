"""The dashboard inside ``modelplane up``: on loopback only, left out with --no-dashboard, and a port in use is an
error that says the way out (after which nothing up started is left running)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from modelplane.addresses import Address
from modelplane.cli import up
from tests.support.modelplane_up import server_processes
from tests.support.processes import run_modelplane


def _settings(*argv: str) -> up.UpSettings:
    return up.parse_settings(up.build_parser(argparse.ArgumentParser()), ["--no-registry", *argv])


def test_the_dashboard_is_on_by_default_on_loopback_and_left_out_when_asked() -> None:
    assert _settings().dashboard_listen == Address("127.0.0.1", 9401)
    assert _settings("--dashboard-listen=127.0.0.1:0").dashboard_listen == Address("127.0.0.1", 0)
    assert _settings("--no-dashboard").dashboard_listen is None


def test_a_dashboard_beyond_loopback_is_refused() -> None:
    refused = run_modelplane("up", "--dashboard-listen", "0.0.0.0:9401")
    assert refused.returncode == 2
    assert "`modelplane up` listens on loopback addresses only" in refused.stderr


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_a_dashboard_port_in_use_stops_up_with_the_way_out(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_modelplane(
            "up",
            f"--state-dir={state_dir}",
            *(f"--{flag}=127.0.0.1:0" for flag in ("listen", "agent-listen", "proxy-http", "proxy-grpc", "gateway")),
            "--no-registry",
            f"--dashboard-listen={address}",
            timeout=300,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on {address}" in result.stderr
    assert "(--dashboard-listen: another address; --no-dashboard: no dashboard)" in result.stderr
    assert "Traceback" not in result.stderr
    assert "modelplane is up" not in result.stdout
    assert not server_processes(state_dir)  # what it had started is stopped
