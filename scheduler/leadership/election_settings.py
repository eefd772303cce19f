"""The scheduler's leader-election flags: which Lease, who this replica is, the timings, what clients should dial.

Without ``--leader-election-lease`` there is no election: the scheduler serves as the only one, as it always did.
"""

from __future__ import annotations

import argparse
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from modelplane.addresses import Address, AddressError, parse_address
from modelplane.flag_types import bounded_int, seconds
from modelplane.kubernetes_api import KubernetesConnection, add_kubernetes_flags, connection_from_flags
from modelplane.secret_inputs import SecretFileError
from scheduler.leadership.lease_records import (
    DEFAULT_LEASE_DURATION_SECONDS,
    DEFAULT_RENEW_DEADLINE_SECONDS,
    DEFAULT_RETRY_PERIOD_SECONDS,
    MAX_LEASE_DURATION_SECONDS,
    MIN_LEASE_DURATION_SECONDS,
    LeaseTiming,
    LeaseTimingError,
)

# Kubernetes object names: a DNS subdomain (the Lease), a DNS label (its namespace).
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_MAX_IDENTITY_CHARS = 253
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_UNSPECIFIED_HOSTS = {"0.0.0.0", "::", ""}  # noqa: S104 - names the wildcard, binds nothing


@dataclass(frozen=True, slots=True)
class LeaderElectionSettings:
    lease: str  # the Lease's name
    namespace: str
    identity: str  # holderIdentity: unique per running replica (the pod name)
    timing: LeaseTiming
    advertise_host: str  # the host clients should dial to reach this replica when it leads
    kubernetes: KubernetesConnection

    def advertised(self, port: int) -> str:
        return str(Address(self.advertise_host, port))


def add_leader_election_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "leader election",
        "Run several scheduler replicas: one leads (holds a coordination.k8s.io/v1 Lease), the others stand by, "
        "answering UNAVAILABLE with the leader's address and reporting not-ready.",
    )
    group.add_argument(
        "--leader-election-lease",
        metavar="NAME",
        help="elect a leader with this Lease (default: no election; this scheduler is the only one)",
    )
    group.add_argument(
        "--leader-election-namespace",
        metavar="NAMESPACE",
        help="the Lease's namespace (default: the pod's namespace in a cluster, else 'default')",
    )
    group.add_argument(
        "--leader-election-identity",
        metavar="ID",
        help="this replica's holderIdentity, unique among running replicas (default: the host name, the pod name)",
    )
    group.add_argument(
        "--lease-duration",
        type=bounded_int(MIN_LEASE_DURATION_SECONDS, MAX_LEASE_DURATION_SECONDS),
        default=DEFAULT_LEASE_DURATION_SECONDS,
        metavar="SECONDS",
        help="how long a Lease not renewed holds before a standby may take it over "
        f"(whole seconds, default {DEFAULT_LEASE_DURATION_SECONDS})",
    )
    group.add_argument(
        "--renew-deadline",
        type=seconds(MAX_LEASE_DURATION_SECONDS),
        default=DEFAULT_RENEW_DEADLINE_SECONDS,
        metavar="SECONDS",
        help="a leader that could not renew for this long stops leading (and exits); shorter than "
        f"--lease-duration (default {DEFAULT_RENEW_DEADLINE_SECONDS:g})",
    )
    group.add_argument(
        "--retry-period",
        type=seconds(MAX_LEASE_DURATION_SECONDS),
        default=DEFAULT_RETRY_PERIOD_SECONDS,
        metavar="SECONDS",
        help="how often the leader renews and standbys look at the Lease; shorter than --renew-deadline "
        f"(default {DEFAULT_RETRY_PERIOD_SECONDS:g})",
    )
    group.add_argument(
        "--advertise-address",
        metavar="HOST",
        help="the host clients should dial to reach this replica when it leads, named by standbys (default: the "
        "--listen host, or the host name when that is a wildcard; on Kubernetes give the pod IP)",
    )
    add_kubernetes_flags(parser)


def leader_election_from(
    parser: argparse.ArgumentParser, options: argparse.Namespace, listen: Address
) -> LeaderElectionSettings | None:
    """The election the flags ask for, or None; bad values exit with status 2 through ``parser``."""
    lease: str | None = options.leader_election_lease
    if lease is None:
        return None
    if len(lease) > 253 or not _SUBDOMAIN.fullmatch(lease):
        parser.error(f"--leader-election-lease {lease!r} is not a Kubernetes object name (a DNS subdomain)")
    namespace: str = options.leader_election_namespace or _default_namespace()
    if len(namespace) > 63 or not _LABEL.fullmatch(namespace):
        parser.error(f"--leader-election-namespace {namespace!r} is not a Kubernetes namespace name (a DNS label)")
    identity: str = options.leader_election_identity or socket.gethostname()
    if len(identity) > _MAX_IDENTITY_CHARS or not _IDENTITY.fullmatch(identity):
        parser.error(
            f"--leader-election-identity {identity!r}: give up to {_MAX_IDENTITY_CHARS} letters, digits and . _ : -"
        )
    advertise: str = options.advertise_address or (
        listen.host if listen.host not in _UNSPECIFIED_HOSTS else socket.gethostname()
    )
    try:
        parse_address(f"[{advertise}]:1" if ":" in advertise else f"{advertise}:1")
    except AddressError:
        parser.error(f"--advertise-address {advertise!r} is not a host name or IP address")
    try:
        timing = LeaseTiming(options.lease_duration, options.renew_deadline, options.retry_period)
    except LeaseTimingError as error:
        parser.error(str(error))
    try:
        connection = connection_from_flags(options)
    except SecretFileError as error:
        parser.error(str(error))
    return LeaderElectionSettings(lease, namespace, identity, timing, advertise, connection)


def _default_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:  # not in a pod
        return "default"
