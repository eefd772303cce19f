"""The session's SeaweedFS (tests/support/real_components.py), which the e2e tests stop and start again: every later
S3 test needs it back on the same endpoint with the same data, whatever took one of its ports while it was stopped."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.real_components import S3Server, SeaweedFS

pytest_plugins = ["tests.support.real_components"]
pytestmark = pytest.mark.timeout(300)  # a hang guard only


def _flag_ports(seaweedfs: SeaweedFS) -> dict[str, int]:
    """Each ``-X.port...=N`` flag of its command and N (0 turns a server off)."""
    ports: dict[str, int] = {}
    for argument in seaweedfs.command:
        match = re.fullmatch(r"-([\w.]*port[\w.]*)=(\d+)", argument)
        if match is not None and int(match.group(2)) != 0:
            ports[match.group(1)] = int(match.group(2))
    return ports


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on."""
    listing = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in listing.splitlines() if f"pid={pid}," in line}


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_seaweedfs_listens_only_below_the_ephemeral_range(s3_server: S3Server) -> None:
    """A port in the kernel's ephemeral range can become any outgoing connection's source port while SeaweedFS
    is stopped; then it cannot start again. Every port it listens on is one the harness picked, below that range."""
    assert s3_server.seaweedfs is not None
    assert s3_server.seaweedfs.process is not None
    listening = _listening_ports(s3_server.seaweedfs.process.pid)
    assert listening, "ss shows no listening port for SeaweedFS"
    low = _ephemeral_low()
    assert {port for port in listening if port >= low} == set(), (sorted(listening), low)
    assert listening <= set(_flag_ports(s3_server.seaweedfs).values()), sorted(listening)


def test_while_seaweedfs_is_stopped_its_ports_refuse_connections_and_cannot_be_picked(s3_server: S3Server) -> None:
    """Stopped, it looks stopped (connections refused), and a port picker that probes by binding (free_ports, as
    every harness here does) finds its ports in use, so nothing started meanwhile takes them."""
    assert s3_server.seaweedfs is not None
    ports = _flag_ports(s3_server.seaweedfs)
    with s3_server.stopped():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports["s3.port"]), timeout=10).close()
        for port in ports.values():
            with socket.socket() as picker, pytest.raises(OSError, match="Address already in use"):
                picker.bind(("127.0.0.1", port))
    assert s3_server.client.bucket_exists("not-there") is False  # back


def test_seaweedfs_starts_again_when_one_of_its_ports_was_taken_while_it_was_stopped(s3_server: S3Server) -> None:
    """A server that binds with SO_REUSEADDR (as most do) and listens can still take a port the harness holds:
    SeaweedFS starts again on another port for that one, on the same S3 endpoint, with the same data."""
    assert s3_server.seaweedfs is not None
    bucket = s3_server.new_bucket({"kept.bin": b"still here"})
    endpoint = s3_server.endpoint
    master = _flag_ports(s3_server.seaweedfs)["master.port"]
    with contextlib.ExitStack() as squatting:
        with s3_server.stopped():
            squatter = squatting.enter_context(socket.socket())
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", master))
            squatter.listen()
        assert s3_server.endpoint == endpoint
        response = s3_server.client.get_object(bucket, "kept.bin")
        try:
            assert response.read() == b"still here"
        finally:
            response.close()
            response.release_conn()
        assert _flag_ports(s3_server.seaweedfs)["master.port"] != master
