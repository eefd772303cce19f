"""Everything ``modelplane dashboard`` can be told, with its flags (also MODELPLANE_DASHBOARD_<FLAG>,
MODELPLANE_<FLAG>, or a TOML file's [dashboard] table)."""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelplane.addresses import Address
from modelplane.auth_flags import add_client_token_flag
from modelplane.config import parse_layered
from modelplane.flag_types import address, peer_address, seconds
from modelplane.process_flags import add_process_flags
from modelplane.transport import TransportSecurity
from modelplane.transport_flags import add_tls_flags, security_from

DEFAULT_LISTEN = "127.0.0.1:9401"
MAX_URL_CHARS = 2048


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    scheduler: Address
    security: TransportSecurity  # to the scheduler (and its CA and client certificate for https:// sources)
    listen: Address
    gateway_metrics_url: str | None = None
    trainer_url: str | None = None
    poll_seconds: float = 3.0
    token_file: Path | None = None
    ready_file: Path | None = None
    log_level: str = "info"
    log_json: bool = False


def http_url(text: str) -> str:
    """An http:// or https:// URL with a host, of a bounded length."""
    if len(text) > MAX_URL_CHARS:
        raise argparse.ArgumentTypeError(f"a URL of at most {MAX_URL_CHARS} characters, please")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL with a host")
    return text


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--scheduler",
        type=peer_address,
        default="127.0.0.1:9004",
        metavar="HOST:PORT",
        help="the scheduler's API address, whose status streams the page shows (default 127.0.0.1:9004)",
    )
    parser.add_argument(
        "--gateway-metrics",
        type=http_url,
        metavar="URL",
        help="a gateway's /metrics (e.g. http://127.0.0.1:9000/metrics): each experiment route's share of traffic",
    )
    parser.add_argument(
        "--trainer",
        type=http_url,
        metavar="URL",
        help="the trainer's run status API (e.g. http://127.0.0.1:9600): training runs and their metrics",
    )
    parser.add_argument(
        "--listen",
        type=address,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the page is served (default {DEFAULT_LISTEN}); loopback only unless --listen-beyond-loopback",
    )
    parser.add_argument(
        "--listen-beyond-loopback",
        action="store_true",
        help="serve the page on a non-loopback address: it has no login, so anyone who reaches it sees every "
        "model, server, pipeline and experiment (put it behind a proxy that authenticates)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=seconds(300.0),
        default=3.0,
        metavar="SECONDS",
        help="how often the gateway's metrics and the trainer's runs are read (default 3)",
    )
    add_tls_flags(parser, server=False)
    add_client_token_flag(parser, "the scheduler and the trainer")
    add_process_flags(parser, section="dashboard", ready_file_help="write the page's URL here as JSON once it serves")
    return parser


def parse_settings(parser: argparse.ArgumentParser, argv: Sequence[str]) -> DashboardSettings:
    options = parse_layered(parser, "dashboard", argv)
    listen: Address = options.listen
    if not listen.is_loopback and not options.listen_beyond_loopback:
        parser.error(
            f"--listen {listen}: not a loopback address; the page has no login (--listen-beyond-loopback to serve it "
            "there anyway)"
        )
    return DashboardSettings(
        scheduler=options.scheduler,
        security=security_from(options),
        listen=listen,
        gateway_metrics_url=options.gateway_metrics,
        trainer_url=options.trainer,
        poll_seconds=options.poll_seconds,
        token_file=options.auth_token_file,
        ready_file=options.ready_file,
        log_level=options.log_level,
        log_json=options.log_json,
    )
