"""Everything ``modelplane status-relay`` can be told, with its flags (also MODELPLANE_STATUS_RELAY_<FLAG>,
MODELPLANE_<FLAG>, or a TOML file's [status-relay] table).

Two connections, two sets of credentials, as for the gateway: the --tls-* flags and --auth-token-file are the
relay's as a client of the scheduler; --serve-tls-* and the --auth-* flags are about the relay's own callers, whom
it checks with the same table of roles as the scheduler (viewer for the status subscriptions).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelplane.addresses import Address
from modelplane.auth.access_check import AuthSettings
from modelplane.auth_flags import (
    add_auth_flags,
    add_client_token_flag,
    auth_settings_from,
    check_authenticated_exposure,
    client_token,
)
from modelplane.config import parse_layered
from modelplane.flag_types import address, bounded_int, peer_address, seconds
from modelplane.kubernetes_api import add_kubernetes_flags
from modelplane.process_flags import add_process_flags
from modelplane.spec import limits
from modelplane.spec.errors import SchedulerError
from modelplane.stream_watchdog import DEFAULT_SUBSCRIBER_LAG_SECONDS
from modelplane.transport import TransportError, TransportSecurity
from modelplane.transport_flags import add_serving_tls_flags, add_tls_flags, security_from, serving_security_from

DEFAULT_LISTEN = "127.0.0.1:9014"
DEFAULT_MAX_SUBSCRIBERS = 10_000
MOST_SUBSCRIBERS = 1_000_000
# Published statuses a subscriber may have waiting, as at the scheduler (scheduler/publishing.py, most_status_keys):
# every model, server status and scaling request, pipeline and experiment within the limits changed before it reads.
MAX_PENDING_KEYS = limits.MAX_MODELS + 2 * limits.MAX_SERVERS + limits.MAX_PIPELINES + limits.MAX_EXPERIMENTS + 1


@dataclass(frozen=True, slots=True)
class RelaySettings:
    scheduler: Address
    security: TransportSecurity  # to the scheduler
    serving: TransportSecurity  # of the relay's own listener
    listen: Address
    name: str = "modelplane-status-relay"  # the subscriber name it gives the scheduler
    max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS
    subscriber_lag_seconds: float = DEFAULT_SUBSCRIBER_LAG_SECONDS
    shutdown_grace_seconds: float = 5.0
    token_file: Path | None = None
    auth: AuthSettings = field(default_factory=AuthSettings)
    ready_file: Path | None = None
    metrics_listen: Address | None = None  # Prometheus /metrics (plain HTTP, or the listener's TLS); None: off
    log_level: str = "info"
    log_json: bool = False


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--scheduler",
        type=peer_address,
        default="127.0.0.1:9004",
        metavar="HOST:PORT",
        help="the scheduler's API address, whose status streams the relay follows (default 127.0.0.1:9004)",
    )
    parser.add_argument(
        "--listen",
        type=address,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where subscribers reach the relay (default {DEFAULT_LISTEN}; port 0 picks one)",
    )
    parser.add_argument(
        "--name",
        default="modelplane-status-relay",
        type=_subscriber_name,
        help="the subscriber name the relay gives the scheduler (default modelplane-status-relay)",
    )
    parser.add_argument(
        "--max-subscribers",
        type=bounded_int(1, MOST_SUBSCRIBERS),
        default=DEFAULT_MAX_SUBSCRIBERS,
        metavar="N",
        help=f"streams served at once, of every kind; more are refused with RESOURCE_EXHAUSTED "
        f"(default {DEFAULT_MAX_SUBSCRIBERS})",
    )
    parser.add_argument(
        "--subscriber-lag",
        type=seconds(3600),
        default=DEFAULT_SUBSCRIBER_LAG_SECONDS,
        metavar="SECONDS",
        help="drop a stream whose client has taken no message for this long while one was waiting; it ends "
        "with RESOURCE_EXHAUSTED and should subscribe again, as at the scheduler "
        f"(default {DEFAULT_SUBSCRIBER_LAG_SECONDS:g})",
    )
    parser.add_argument(
        "--metrics-listen",
        type=address,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics, GET /metrics, here (off unless given; port 0 picks one): per kind of "
        "status whether it is current, statuses held and received, reconnects, subscribers, refusals and drops",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=seconds(600),
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM, how long streams get to end before the relay stops (default 5)",
    )
    add_process_flags(
        parser, section="status-relay", ready_file_help="write the bound address here as JSON once serving"
    )
    add_tls_flags(parser, server=False)
    add_client_token_flag(parser)
    add_serving_tls_flags(parser)
    add_auth_flags(parser)
    add_kubernetes_flags(parser, title="kubernetes API (--auth-token-review)")
    return parser


def _subscriber_name(text: str) -> str:
    try:
        limits.check_text(text, "--name", limits.SUBSCRIBER)
    except SchedulerError as error:  # the limits' own error says what is wrong with it
        raise argparse.ArgumentTypeError(str(error)) from None
    if not text:
        raise argparse.ArgumentTypeError("give the relay a name")
    return text


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> RelaySettings:
    """Parse and check the relay's settings; errors exit with status 2 through ``parser``."""
    options = parse_layered(parser, "status-relay", argv, environ)
    settings = RelaySettings(
        scheduler=options.scheduler,
        security=security_from(options),
        serving=serving_security_from(options),
        listen=options.listen,
        name=options.name,
        max_subscribers=options.max_subscribers,
        subscriber_lag_seconds=options.subscriber_lag,
        shutdown_grace_seconds=options.shutdown_grace,
        token_file=options.auth_token_file,
        ready_file=options.ready_file,
        metrics_listen=options.metrics_listen,
        log_level=options.log_level,
        log_json=options.log_json,
    )
    try:
        settings.security.validate()
        settings.security.check_plaintext_allowed([settings.scheduler])
        settings.serving.validate()
        settings.serving.check_plaintext_allowed([settings.listen])
        auth = auth_settings_from(options, [settings.listen])
        check_authenticated_exposure([settings.listen], settings.serving, auth)
        client_token(settings.token_file)  # a token file that cannot be used stops the relay at start
    except TransportError as error:
        parser.error(str(error))
    return dataclasses.replace(settings, auth=auth)
