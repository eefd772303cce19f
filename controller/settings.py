"""Everything the controller process can be told, in one place, with its flags
(also MODELPLANE_CONTROLLER_<FLAG>, MODELPLANE_<FLAG>, or a TOML file's [controller] table)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.agent_flags import DEFAULT_DRAIN_TIMEOUT_SECONDS, add_agent_flags, agent_defaults_from
from controller.servers.agent_container import AgentDefaults
from modelplane.addresses import Address
from modelplane.auth_flags import add_client_token_flag, client_token
from modelplane.config import LayeredAppend, parse_layered
from modelplane.flag_types import address, peer_address
from modelplane.kubernetes_api import KubernetesConnection, add_kubernetes_flags, connection_from_flags
from modelplane.process_flags import add_process_flags
from modelplane.secret_inputs import SecretFileError
from modelplane.spec.errors import InvalidArgument
from modelplane.spec.names import check_name
from modelplane.transport import TransportError, TransportSecurity
from modelplane.transport_flags import add_serving_tls_flags, add_tls_flags, security_from, serving_security_from

DEFAULT_SCHEDULER = "127.0.0.1:9004"
MAX_NAMESPACES = 100


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    scheduler: Address
    security: TransportSecurity  # to the scheduler
    kubernetes: KubernetesConnection
    namespaces: tuple[str, ...]  # empty: every namespace
    name: str  # the subscriber name the scheduler sees
    health_listen: Address | None  # GET /healthz and /readyz; None: no listener
    serving: TransportSecurity  # of the health listener
    ready_file: Path | None
    log_level: str
    log_json: bool
    # The token presented to the scheduler (a file; else MODELPLANE_AUTH_TOKEN; else none, or the client certificate).
    token_file: Path | None = None
    # What Server pods get where their ServerConfig says nothing (controller/agent_flags.py).
    agent: AgentDefaults = field(default_factory=AgentDefaults)
    scale_down_drain_timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS


def _namespace(text: str) -> str:
    """A Kubernetes namespace name: an RFC 1123 label, which is what check_name accepts."""
    try:
        return check_name(text, "namespace")
    except InvalidArgument as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--scheduler",
        type=peer_address,
        default=DEFAULT_SCHEDULER,
        metavar="HOST:PORT",
        help=f"the scheduler's API address (default {DEFAULT_SCHEDULER}; env MODELPLANE_CONTROLLER_SCHEDULER)",
    )
    parser.add_argument(
        "--namespace",
        type=_namespace,
        action=LayeredAppend,
        default=None,
        metavar="NS",
        help="watch the resources of this namespace; repeat for more (default: every namespace)",
    )
    parser.add_argument(
        "--name",
        help="this controller's name in the scheduler's logs and subscriptions (default controller-HOSTNAME-PID)",
    )
    parser.add_argument(
        "--health-listen",
        type=address,
        metavar="HOST:PORT",
        help="serve GET /healthz (alive) and /readyz (watching and connected) here (default: off)",
    )
    add_agent_flags(parser)
    add_process_flags(parser, section="controller", ready_file_help="write this file once the first lists are in")
    add_kubernetes_flags(parser)
    add_tls_flags(parser, server=False)
    add_serving_tls_flags(parser)
    add_client_token_flag(parser)
    return parser


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> ControllerSettings:
    options = parse_layered(parser, "controller", argv, environ)
    namespaces = tuple(dict.fromkeys(options.namespace or ()))
    if len(namespaces) > MAX_NAMESPACES:
        parser.error(f"at most {MAX_NAMESPACES} --namespace flags (or none: every namespace)")
    try:
        kubernetes = connection_from_flags(options)
    except SecretFileError as error:
        parser.error(str(error))
    settings = ControllerSettings(
        scheduler=options.scheduler,
        security=security_from(options),
        kubernetes=kubernetes,
        namespaces=namespaces,
        name=options.name or f"controller-{os.uname().nodename}-{os.getpid()}",
        health_listen=options.health_listen,
        serving=serving_security_from(options),
        ready_file=options.ready_file,
        log_level=options.log_level,
        log_json=options.log_json,
        token_file=options.auth_token_file,
        agent=agent_defaults_from(options),
        scale_down_drain_timeout_seconds=options.scale_down_drain_timeout,
    )
    try:
        settings.security.validate()
        settings.security.check_plaintext_allowed([settings.scheduler])
        if settings.health_listen is not None:
            settings.serving.validate()
            settings.serving.check_plaintext_allowed([settings.health_listen])
        client_token(settings.token_file)  # a token file that cannot be used stops the controller at start
    except TransportError as error:
        parser.error(str(error))
    return settings
