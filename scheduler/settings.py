"""Everything the scheduler process can be told, in one place, with its flags."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelplane.addresses import Address
from modelplane.audit.audit_settings import AuditSettings, add_audit_flags, audit_settings_from
from modelplane.auth.access_check import AuthSettings
from modelplane.auth_flags import add_auth_flags, auth_settings_from, check_authenticated_exposure
from modelplane.config import parse_layered
from modelplane.flag_types import address, seconds
from modelplane.process_flags import add_process_flags
from modelplane.stream_watchdog import DEFAULT_SUBSCRIBER_LAG_SECONDS
from modelplane.transport import TransportError, TransportSecurity
from modelplane.transport_flags import add_tls_flags, security_from
from scheduler.leadership.election_settings import (
    LeaderElectionSettings,
    add_leader_election_flags,
    leader_election_from,
)

DEFAULT_LISTEN = "127.0.0.1:9004"
DEFAULT_AGENT_LISTEN = "127.0.0.1:9005"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9006"
DEFAULT_STATE_DIR = ".modelplane/state"


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    listen: Address
    agent_listen: Address
    state_dir: Path
    security: TransportSecurity
    # Prometheus' /metrics (plain HTTP, no credentials: metric labels carry names only, never a secret). The flag's
    # default is DEFAULT_METRICS_LISTEN; settings made in code (tests, embedders) get a free loopback port.
    metrics_listen: Address = field(default_factory=lambda: Address("127.0.0.1", 0))
    # How long in-flight RPCs may take to finish after SIGTERM/SIGINT before they are cancelled.
    shutdown_grace_seconds: float = 10.0
    # A file to write the bound addresses to once the scheduler serves (for tools and tests that
    # start it on port 0).
    ready_file: Path | None = None
    log_level: str = "info"
    log_json: bool = False
    # After a restart, how long to wait for known agents to reconnect before placing models.
    sync_grace_seconds: float = 10.0
    # How often agents and the scheduler exchange heartbeats; three missed ones end a session.
    heartbeat_seconds: float = 5.0
    # Ask the controller to remove server replicas that have held no model for this long.
    scale_down_idle_seconds: float = 300.0
    # Forget a stopped experiment (its status no longer answers) this long after its stop.
    stopped_experiment_ttl_seconds: float = 86_400.0
    # Drop a server stream (status subscriptions, WatchRoutes, status lists) whose client has taken no message
    # for this long while one was waiting: it ends with RESOURCE_EXHAUSTED and should subscribe again.
    subscriber_lag_seconds: float = DEFAULT_SUBSCRIBER_LAG_SECONDS
    # Identities and roles of the callers of both listeners (modelplane/auth).
    auth: AuthSettings = field(default_factory=AuthSettings)
    # Where every accepted or refused mutation is recorded (default: audit.log in the state dir).
    audit: AuditSettings = field(default_factory=AuditSettings)
    # Several replicas, one leading (scheduler/leadership/); None: this scheduler is the only one.
    leader_election: LeaderElectionSettings | None = None
    # Set by the elected process, not a flag: this leader's term starts from an empty store, so what agents hold of
    # models not known yet waits for the controller's re-send (CoreSettings.hold_unknown_models).
    hold_unknown_models: bool = False


positive_seconds = seconds(3600)


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--listen",
        type=address,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"Scheduler API address for clients and controllers (default {DEFAULT_LISTEN}; port 0 picks one)",
    )
    parser.add_argument(
        "--agent-listen",
        type=address,
        default=DEFAULT_AGENT_LISTEN,
        metavar="HOST:PORT",
        help=f"address agents connect to (default {DEFAULT_AGENT_LISTEN}; port 0 picks one)",
    )
    parser.add_argument(
        "--metrics-listen",
        type=address,
        default=DEFAULT_METRICS_LISTEN,
        metavar="HOST:PORT",
        help=f"Prometheus metrics, GET /metrics over plain HTTP (default {DEFAULT_METRICS_LISTEN}; port 0 picks one)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"where durable state is kept (default {DEFAULT_STATE_DIR}); created if missing",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long in-flight calls may run after SIGTERM before they are cancelled (default 10)",
    )
    parser.add_argument(
        "--sync-grace",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="after a restart, how long to wait for known agents to reconnect before placing models, counted again "
        "from each one's return while they keep coming back, three times this at most (default 10)",
    )
    parser.add_argument(
        "--heartbeat",
        type=positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="agent session heartbeat interval; three missed heartbeats end a session (default 5)",
    )
    parser.add_argument(
        "--scale-down-idle",
        type=positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="ask to scale a server down once replicas have held no model this long (default 300)",
    )
    parser.add_argument(
        "--stopped-experiment-ttl",
        type=positive_seconds,
        default=86_400.0,
        metavar="SECONDS",
        help="forget a stopped experiment this long after its stop; until then its status answers 'stopped' "
        "(Seldon's --deleted-resource-ttl; default 86400, a day)",
    )
    parser.add_argument(
        "--subscriber-lag",
        type=positive_seconds,
        default=DEFAULT_SUBSCRIBER_LAG_SECONDS,
        metavar="SECONDS",
        help="drop a status or routes stream whose client has taken no message for this long while one was "
        "waiting; it ends with RESOURCE_EXHAUSTED and should subscribe again "
        f"(default {DEFAULT_SUBSCRIBER_LAG_SECONDS:g})",
    )
    add_process_flags(
        parser, section="scheduler", ready_file_help="write the bound addresses here as JSON once serving"
    )
    add_tls_flags(parser, server=True)
    add_auth_flags(parser)
    add_audit_flags(parser)
    add_leader_election_flags(parser)
    return parser


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> SchedulerSettings:
    """Parse and check the scheduler's settings; errors exit with status 2 through ``parser``."""
    options = parse_layered(parser, "scheduler", argv, environ)
    settings = SchedulerSettings(
        listen=options.listen,
        agent_listen=options.agent_listen,
        metrics_listen=options.metrics_listen,
        state_dir=options.state_dir,
        security=security_from(options),
        shutdown_grace_seconds=options.shutdown_grace,
        ready_file=options.ready_file,
        log_level=options.log_level,
        log_json=options.log_json,
        sync_grace_seconds=options.sync_grace,
        heartbeat_seconds=options.heartbeat,
        scale_down_idle_seconds=options.scale_down_idle,
        stopped_experiment_ttl_seconds=options.stopped_experiment_ttl,
        subscriber_lag_seconds=options.subscriber_lag,
        audit=audit_settings_from(parser, options),
        leader_election=leader_election_from(parser, options, options.listen),
    )
    if settings.listen == settings.agent_listen and settings.listen.port != 0:
        parser.error(f"--listen and --agent-listen are both {settings.listen}: give them different ports")
    listening = [settings.listen, settings.agent_listen]
    try:
        settings.security.validate()
        settings.security.check_plaintext_allowed(listening)
        auth = auth_settings_from(options, listening)
        check_authenticated_exposure(listening, settings.security, auth)
    except TransportError as error:
        parser.error(str(error))
    return dataclasses.replace(settings, auth=auth)
