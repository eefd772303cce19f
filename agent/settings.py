"""Everything the agent process can be told, in one place, with its flags.

Over 400 lines on purpose: one flag table (``build_parser``) and the one parse that checks the flags against each
other into one frozen AgentSettings; split, a flag and the field it fills would live apart."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.artifacts import (
    DEFAULT_CACHE_LIMIT_BYTES,
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_MODEL_BYTES,
    RATIO_EXEMPT_BYTES,
)
from agent.pod_identity import MAX_REPLICA_INDEX, PodNameError, identity_from_pod_name
from agent.server_watch import WatchSettings
from modelplane.addresses import Address
from modelplane.auth.access_check import AuthSettings
from modelplane.auth_flags import (
    add_auth_flags,
    add_client_token_flag,
    auth_settings_from,
    check_plaintext_inference_exposure,
    client_token,
)
from modelplane.config import parse_layered
from modelplane.flag_types import address, bounded_int, byte_size, seconds
from modelplane.kubernetes_api import KubernetesConnection, add_kubernetes_flags, connection_from_flags
from modelplane.process_flags import add_process_flags
from modelplane.secret_inputs import SecretFileError
from modelplane.sizes import format_size
from modelplane.spec.errors import InvalidArgument
from modelplane.spec.names import check_name, is_namespace
from modelplane.spec.server_kinds import DEFAULT_CAPABILITIES, SERVER_KINDS
from modelplane.tracing import add_tracing_flag
from modelplane.transport import TransportError, TransportSecurity
from modelplane.transport_flags import add_tls_flags, security_from

# Where a pod's service account says which namespace the pod is in.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Disk limits for model artifacts: their defaults, and why, are agent/artifacts' own (safety.py, store.py).
DEFAULT_MAX_MODEL_DISK = format_size(DEFAULT_MAX_MODEL_BYTES)
DEFAULT_MAX_CACHE_DISK = format_size(DEFAULT_CACHE_LIMIT_BYTES)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    scheduler: Address
    security: TransportSecurity
    server_name: str
    replica_idx: int
    server_kind: str
    # Either an existing server (its V2 REST URL and gRPC target) or one the agent launches.
    server_url: str | None
    server_grpc: str | None
    launch_server: bool
    memory_bytes: int
    capabilities: frozenset[str]
    overcommit_percent: int
    shared: bool
    # The server's model repository (the agent writes model folders here).
    models_dir: Path
    cache_dir: Path
    secrets_dir: Path | None
    work_dir: Path
    proxy_http: Address
    proxy_grpc: Address
    advertise_host: str
    drain_timeout_seconds: float
    ready_file: Path | None
    log_level: str
    log_json: bool
    # What one model version's artifacts may take on disk, and the artifact cache as a whole.
    max_model_disk_bytes: int = DEFAULT_MAX_MODEL_BYTES
    max_cache_disk_bytes: int = DEFAULT_CACHE_LIMIT_BYTES
    # How many times its own size an archive may expand to when extracted.
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO
    # How the agent watches its server and restarts a launched one (agent/server_watch.py).
    watch: WatchSettings = field(default_factory=WatchSettings)
    # Identities and roles of the inference proxy's callers (modelplane/auth), and the token this agent presents
    # to the scheduler (a file; else MODELPLANE_AUTH_TOKEN; else none, or its client certificate).
    auth: AuthSettings = field(default_factory=AuthSettings)
    token_file: Path | None = None
    # Models' storage secrets read from Kubernetes Secrets in this namespace (--k8s-secrets), through this API.
    kubernetes: KubernetesConnection | None = None
    secrets_namespace: str | None = None
    # OpenTelemetry traces of inference to this OTLP/HTTP endpoint (modelplane/tracing.py); None: off.
    otel_endpoint: str | None = None


def _server_name(text: str) -> str:
    try:
        return check_name(text, "server")
    except InvalidArgument as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--scheduler",
        type=address,
        default="127.0.0.1:9005",
        metavar="HOST:PORT",
        help="the scheduler's agent address (default 127.0.0.1:9005; env MODELPLANE_AGENT_SCHEDULER)",
    )
    parser.add_argument(
        "--server-name",
        type=_server_name,
        help="the server this replica belongs to (default: from --pod-name, else mlserver)",
    )
    parser.add_argument(
        "--replica-idx",
        type=bounded_int(0, MAX_REPLICA_INDEX),
        metavar="N",
        help="this replica's index within its server (default: from --pod-name, else 0)",
    )
    parser.add_argument(
        "--pod-name",
        metavar="NAME-N",
        help="the StatefulSet pod this agent runs in (e.g. --pod-name=$(POD_NAME)): the replica index is its ordinal "
        "N, and the server name NAME unless --server-name is given",
    )
    parser.add_argument("--server-kind", choices=SERVER_KINDS, default="mlserver")
    parser.add_argument(
        "--server-url", metavar="URL", help="V2 REST URL of an existing server, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument("--server-grpc", metavar="HOST:PORT", help="V2 gRPC target of that server")
    parser.add_argument(
        "--launch-server",
        action="store_true",
        help="start a local server of --server-kind (its venv is created on first use)",
    )
    parser.add_argument(
        "--memory",
        type=byte_size(1, what="memory"),
        default="1GiB",
        metavar="SIZE",
        help="memory the server may use for models, e.g. 2GiB (default 1GiB)",
    )
    parser.add_argument(
        "--capabilities",
        metavar="LIST",
        help="comma-separated capabilities (default: sklearn,mlserver or triton,python)",
    )
    parser.add_argument(
        "--overcommit-percent",
        type=bounded_int(0, 1000),
        default=10,
        metavar="PCT",
        help="accept models up to memory x (100+PCT)%%, evicting least-recently-used ones (default 10)",
    )
    parser.add_argument(
        "--dedicated",
        action="store_true",
        help="take only models that name this server (default: shared with unpinned models)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        metavar="DIR",
        help="the server's model repository (default: WORK_DIR/models for a launched server)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, metavar="DIR", help="artifact download cache (default WORK_DIR/cache)"
    )
    parser.add_argument(
        "--max-model-disk",
        type=byte_size(1, what="a disk limit"),
        default=DEFAULT_MAX_MODEL_DISK,
        metavar="SIZE",
        help="most disk one model version's artifacts may take, downloaded or extracted (one file may take all of "
        f"it); a load over it fails (default {DEFAULT_MAX_MODEL_DISK})",
    )
    parser.add_argument(
        "--max-cache-disk",
        type=byte_size(1, what="a disk limit"),
        default=DEFAULT_MAX_CACHE_DISK,
        metavar="SIZE",
        help="most disk the artifact cache may take for all models together; a load that would go over it "
        f"fails (default {DEFAULT_MAX_CACHE_DISK})",
    )
    parser.add_argument(
        "--max-compression-ratio",
        type=bounded_int(1, 1_000_000),
        default=DEFAULT_MAX_COMPRESSION_RATIO,
        metavar="N",
        help="an archive may expand to at most N times its size (a decompression bomb is stopped there; archives "
        f"under {format_size(RATIO_EXEMPT_BYTES)} expanded are exempt) (default {DEFAULT_MAX_COMPRESSION_RATIO})",
    )
    parser.add_argument(
        "--secrets-dir", type=Path, metavar="DIR", help="folder of storage secrets, one file per secret"
    )
    parser.add_argument(
        "--k8s-secrets",
        action="store_true",
        help="read a model's storage secret from the Kubernetes Secret of that name in --k8s-namespace (an rclone "
        "config under one key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; see agent/artifacts/"
        "kubernetes_secrets.py), through the API the --k8s-* flags name, instead of --secrets-dir",
    )
    parser.add_argument(
        "--k8s-namespace",
        metavar="NAMESPACE",
        help="the namespace of those Secrets (default with --k8s-in-cluster: the pod's own)",
    )
    parser.add_argument(
        "--work-dir", type=Path, metavar="DIR", help="the agent's own files (default .modelplane/agent-SERVER-N)"
    )
    parser.add_argument(
        "--proxy-http",
        type=address,
        default="127.0.0.1:9100",
        metavar="HOST:PORT",
        help="inference proxy, V2 REST (default 127.0.0.1:9100; port 0 picks one)",
    )
    parser.add_argument(
        "--proxy-grpc",
        type=address,
        default="127.0.0.1:9500",
        metavar="HOST:PORT",
        help="inference proxy, V2 gRPC (default 127.0.0.1:9500; port 0 picks one)",
    )
    parser.add_argument(
        "--advertise-host",
        metavar="HOST",
        help="host the scheduler tells clients to use for the proxy (default: the proxy's host)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=seconds(86_400),
        default=60.0,
        metavar="SECONDS",
        help="on SIGTERM, how long to wait for the models to serve elsewhere (default 60)",
    )
    parser.add_argument(
        "--server-probe-interval",
        type=seconds(3600),
        default=2.0,
        metavar="SECONDS",
        help="how often to probe the server's liveness (GET /v2/health/live; default 2)",
    )
    parser.add_argument(
        "--server-probe-timeout",
        type=seconds(3600),
        default=5.0,
        metavar="SECONDS",
        help="how long one liveness probe may take (default 5)",
    )
    parser.add_argument(
        "--server-probe-failures",
        type=bounded_int(1, 1000),
        default=3,
        metavar="N",
        help="failed probes in a row after which the server counts as down (default 3); a launched server "
        "that exits counts as down at once",
    )
    parser.add_argument(
        "--server-hung-timeout",
        type=seconds(86_400),
        default=300.0,
        metavar="SECONDS",
        help="how long a launched server that still runs may answer no liveness probe before it is killed as hung "
        "and restarted (default 300). It is reported down after the failed probes, but may only be busy: a model's "
        "load or one long request blocks MLServer (probes that fail while a load or unload is in flight do not count "
        "at all, until this long)",
    )
    parser.add_argument(
        "--server-restart-backoff",
        type=seconds(86_400),
        default=1.0,
        metavar="SECONDS",
        help="wait before restarting a launched server that died; doubled after each failed attempt (default 1)",
    )
    parser.add_argument(
        "--server-restart-backoff-max",
        type=seconds(86_400),
        default=60.0,
        metavar="SECONDS",
        help="the longest wait between restart attempts; the wait starts over once the server has served this "
        "long (default 60)",
    )
    add_kubernetes_flags(parser)
    add_process_flags(parser, section="agent", ready_file_help="write the proxy addresses here once registered")
    add_tracing_flag(parser)
    add_tls_flags(parser, server=False)
    add_auth_flags(parser)
    add_client_token_flag(parser)
    return parser


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> AgentSettings:
    options = parse_layered(parser, "agent", argv, environ)
    if options.launch_server == bool(options.server_url):
        parser.error("give either --server-url (an existing server) or --launch-server (start one here)")
    if options.server_url and not options.models_dir:
        parser.error("--server-url needs --models-dir: the folder the server loads models from")
    if options.server_url and not options.server_url.startswith(("http://", "https://")):
        parser.error(f"--server-url {options.server_url!r} must start with http:// or https://")
    server_name, replica_idx = _identity(parser, options)
    kubernetes, secrets_namespace = _kubernetes_secrets(parser, options)
    # Absolute: a launched server runs in its own working directory.
    work_dir = (options.work_dir or Path(".modelplane") / f"agent-{server_name}-{replica_idx}").absolute()
    capabilities = options.capabilities or DEFAULT_CAPABILITIES[options.server_kind]
    names = frozenset(c.strip() for c in capabilities.split(",") if c.strip())
    if not names:
        parser.error("--capabilities is empty")
    if options.max_model_disk > options.max_cache_disk:
        parser.error(
            f"--max-model-disk ({options.max_model_disk} bytes) is more than --max-cache-disk "
            f"({options.max_cache_disk} bytes): no model that large could be cached"
        )
    settings = AgentSettings(
        scheduler=options.scheduler,
        security=security_from(options),
        server_name=server_name,
        replica_idx=replica_idx,
        server_kind=options.server_kind,
        server_url=options.server_url,
        server_grpc=options.server_grpc,
        launch_server=options.launch_server,
        memory_bytes=options.memory,
        capabilities=names,
        overcommit_percent=options.overcommit_percent,
        shared=not options.dedicated,
        models_dir=options.models_dir or work_dir / "models",
        cache_dir=options.cache_dir or work_dir / "cache",
        secrets_dir=options.secrets_dir,
        work_dir=work_dir,
        proxy_http=options.proxy_http,
        proxy_grpc=options.proxy_grpc,
        advertise_host=options.advertise_host or _advertised(options.proxy_http),
        drain_timeout_seconds=options.drain_timeout,
        watch=WatchSettings(
            probe_interval=options.server_probe_interval,
            probe_timeout=options.server_probe_timeout,
            probe_failures=options.server_probe_failures,
            hung_timeout=options.server_hung_timeout,
            restart_backoff=options.server_restart_backoff,
            restart_backoff_max=max(options.server_restart_backoff, options.server_restart_backoff_max),
        ),
        ready_file=options.ready_file,
        log_level=options.log_level,
        log_json=options.log_json,
        otel_endpoint=options.otel_endpoint,
        max_model_disk_bytes=options.max_model_disk,
        max_cache_disk_bytes=options.max_cache_disk,
        max_compression_ratio=options.max_compression_ratio,
        token_file=options.auth_token_file,
        kubernetes=kubernetes,
        secrets_namespace=secrets_namespace,
    )
    listening = [settings.proxy_http, settings.proxy_grpc]
    try:
        settings.security.validate()
        settings.security.check_plaintext_allowed([settings.scheduler])
        # The proxy serves plaintext (pods are reached by IP: no serving certificate), whatever the agent's TLS to
        # the scheduler: beyond loopback only tokens can authenticate its callers (the gateways present theirs,
        # best a token of an audience of its own, which the scheduler does not accept: it travels in plaintext).
        auth = auth_settings_from(options, listening)
        check_plaintext_inference_exposure(
            listening, auth, insecure=options.insecure, inference_flag=options.auth_inference
        )
        client_token(settings.token_file)  # a token file that cannot be used stops the agent at start
    except TransportError as error:
        parser.error(str(error))
    return dataclasses.replace(settings, auth=auth)


def _kubernetes_secrets(
    parser: argparse.ArgumentParser, options: argparse.Namespace
) -> tuple[KubernetesConnection | None, str | None]:
    """The API and namespace of the Kubernetes Secrets that hold storage secrets, with --k8s-secrets."""
    if not options.k8s_secrets:
        if options.k8s_namespace is not None:
            parser.error("--k8s-namespace is for --k8s-secrets")
        return None, None
    if options.secrets_dir is not None:
        parser.error("give --k8s-secrets or --secrets-dir, not both: a secret name must mean one thing")
    namespace = options.k8s_namespace
    if namespace is None and options.k8s_in_cluster:
        try:
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
        except OSError as error:
            parser.error(f"--k8s-secrets: no --k8s-namespace, and {SERVICE_ACCOUNT_NAMESPACE}: {error.strerror}")
    if namespace is None:
        parser.error("--k8s-secrets needs --k8s-namespace (or --k8s-in-cluster, for the pod's own namespace)")
    if not is_namespace(namespace) or not namespace:
        parser.error(f"--k8s-namespace {namespace[:70]!r} is not a Kubernetes namespace name")
    try:
        connection = connection_from_flags(options)
    except SecretFileError as error:
        parser.error(str(error))
    return connection, namespace


def _identity(parser: argparse.ArgumentParser, options: argparse.Namespace) -> tuple[str, int]:
    """The server name and replica index: given, or from the pod's name (agent/pod_identity.py)."""
    if options.pod_name is None:
        return options.server_name or "mlserver", 0 if options.replica_idx is None else options.replica_idx
    if options.replica_idx is not None:
        parser.error("give --pod-name (the index is its ordinal) or --replica-idx, not both")
    try:
        pod = identity_from_pod_name(options.pod_name)
    except PodNameError as error:
        parser.error(str(error))
    return options.server_name or pod.server_name, pod.replica_idx


def _advertised(address: Address) -> str:
    if address.host in ("0.0.0.0", "::"):  # noqa: S104 - a bind-all address is not reachable as such
        return os.uname().nodename
    return address.host
