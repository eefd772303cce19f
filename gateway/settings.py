"""Everything the gateway process can be told, in one place, with its flags
(also MODELPLANE_GATEWAY_<FLAG>, MODELPLANE_<FLAG>, or a TOML file's [gateway] table)."""

from __future__ import annotations

import argparse
import dataclasses
import os
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
from modelplane.flag_types import address, seconds
from modelplane.kubernetes_api import add_kubernetes_flags
from modelplane.process_flags import add_process_flags
from modelplane.tracing import add_tracing_flag
from modelplane.transport import TransportError, TransportSecurity
from modelplane.transport_flags import add_serving_tls_flags, add_tls_flags, security_from, serving_security_from
from modelplane.whole_numbers import parse_whole_number


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    scheduler: Address
    security: TransportSecurity  # to the scheduler
    serving: TransportSecurity  # of the REST and gRPC listeners
    name: str
    listen: Address
    grpc_listen: Address | None
    max_attempts: int
    request_timeout_seconds: float
    pipeline_timeout_seconds: float
    # Kafka: off unless bootstrap servers are given.
    kafka_bootstrap: str
    kafka_topic_prefix: str
    kafka_namespace: str
    kafka_group: str
    ready_file: Path | None
    log_level: str
    log_json: bool
    # Identities and roles of the REST and gRPC listeners' callers (modelplane/auth), and the token this gateway
    # presents to the scheduler (a file; else MODELPLANE_AUTH_TOKEN; else none, or its client certificate).
    auth: AuthSettings = field(default_factory=AuthSettings)
    token_file: Path | None = None
    # The token this gateway presents to the agents' inference proxies (None: none). Its own file, not the
    # scheduler's token: the proxies are plaintext, and a token of an audience only agents accept cannot be
    # replayed against the scheduler by whoever reads the pod network.
    agent_token_file: Path | None = None
    # OpenTelemetry traces of inference to this OTLP/HTTP endpoint (modelplane/tracing.py); None: off.
    otel_endpoint: str | None = None


def _attempts(text: str) -> int:
    number = parse_whole_number(text)
    if number is None or not 1 <= number <= 10:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 10")
    return number


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--scheduler",
        type=address,
        default="127.0.0.1:9004",
        metavar="HOST:PORT",
        help="the scheduler's API address, which also serves the routing table (default 127.0.0.1:9004)",
    )
    parser.add_argument(
        "--name",
        help="this gateway's name (default gateway-HOSTNAME-PID): in the scheduler's logs, and what its experiment "
        "acknowledgements are filed under, so each replica needs its own",
    )
    parser.add_argument(
        "--listen",
        type=address,
        default="127.0.0.1:9000",
        metavar="HOST:PORT",
        help="V2 REST inference (default 127.0.0.1:9000; port 0 picks one)",
    )
    parser.add_argument("--grpc-listen", type=address, metavar="HOST:PORT", help="V2 gRPC inference (default: off)")
    parser.add_argument(
        "--max-attempts",
        type=_attempts,
        default=3,
        metavar="N",
        help="replicas tried per request before giving up (default 3)",
    )
    parser.add_argument(
        "--request-timeout",
        type=seconds(3600),
        default=60.0,
        metavar="SECONDS",
        help="per call to a replica (default 60)",
    )
    parser.add_argument(
        "--pipeline-timeout",
        type=seconds(3600),
        default=120.0,
        metavar="SECONDS",
        help="per pipeline request, all steps together (default 120)",
    )
    parser.add_argument(
        "--kafka", default="", metavar="HOST:PORT[,...]", help="Kafka bootstrap servers (default: no Kafka)"
    )
    parser.add_argument("--kafka-topic-prefix", default="seldon", help="topic prefix (default seldon, as Seldon's)")
    parser.add_argument("--kafka-namespace", default="default", help="namespace part of topic names")
    parser.add_argument("--kafka-group", default="modelplane-gateway", help="consumer group all gateways share")
    add_process_flags(parser, section="gateway", ready_file_help="write the listen addresses here once serving")
    add_tracing_flag(parser)
    add_tls_flags(parser, server=False)
    add_serving_tls_flags(parser)
    add_auth_flags(parser)
    add_kubernetes_flags(parser, title="kubernetes API (--auth-token-review)")
    add_client_token_flag(parser)
    parser.add_argument(
        "--agent-token-file",
        type=Path,
        metavar="FILE",
        help="a bearer token to present to the agents' inference proxies, for agents that check their callers "
        "(--auth-inference); read again when the file changes. They are plaintext: give a token only they accept "
        "(a ServiceAccount token projected for their audience), not the one the scheduler accepts",
    )
    return parser


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> GatewaySettings:
    options = parse_layered(parser, "gateway", argv, environ)
    settings = GatewaySettings(
        scheduler=options.scheduler,
        security=security_from(options),
        serving=serving_security_from(options),
        name=options.name or f"gateway-{os.uname().nodename}-{os.getpid()}",
        listen=options.listen,
        grpc_listen=options.grpc_listen,
        max_attempts=options.max_attempts,
        request_timeout_seconds=options.request_timeout,
        pipeline_timeout_seconds=options.pipeline_timeout,
        kafka_bootstrap=options.kafka,
        kafka_topic_prefix=options.kafka_topic_prefix,
        kafka_namespace=options.kafka_namespace,
        kafka_group=options.kafka_group,
        ready_file=options.ready_file,
        log_level=options.log_level,
        log_json=options.log_json,
        otel_endpoint=options.otel_endpoint,
        token_file=options.auth_token_file,
        agent_token_file=options.agent_token_file,
    )
    try:
        settings.security.validate()
        settings.security.check_plaintext_allowed([settings.scheduler])
        settings.serving.validate()
        listeners = [settings.listen, *([settings.grpc_listen] if settings.grpc_listen else [])]
        settings.serving.check_plaintext_allowed(listeners)
        auth = auth_settings_from(options, listeners)
        check_authenticated_exposure(listeners, settings.serving, auth)
        client_token(settings.token_file)  # a token file that cannot be used stops the gateway at start
        if settings.agent_token_file is not None:
            client_token(settings.agent_token_file)
    except TransportError as error:
        parser.error(str(error))
    return dataclasses.replace(settings, auth=auth)
