"""``modelplane up``: the all-in-one local stack in one process.

A scheduler (embedded SQLite state), one agent, a local MLServer (or Triton) the agent launches, and a
gateway (V2 inference for models, experiments and pipelines), and the model registry (its REST API, SQLite state
under DIR/registry, deploying to this scheduler; ``--no-registry`` leaves it out), everything on loopback with
plaintext (never anything else: the addresses are checked). With ``--trainer-config FILE`` also a trainer (training
runs as local processes), configured like ``modelplane trainer`` by that TOML file's ``[trainer]`` table;
Kafka, Redis and S3 are the caller's to run, and what it trains it deploys to this stack's scheduler.

Logs from every part go to stderr, each line naming its part; the inference server's own log is a file whose
path is printed. Ctrl-C (or SIGTERM) stops the gateway, the registry, the trainer and the agent (its models are
unloaded, the server stopped), then the scheduler; a second Ctrl-C skips the waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.server_choice import prepare_local_server
from agent.settings import AgentSettings
from dashboard.settings import DEFAULT_LISTEN as DEFAULT_DASHBOARD_LISTEN
from gateway.settings import GatewaySettings
from modelplane.addresses import Address, AddressError, parse_address
from modelplane.audit.audit_settings import AuditSettings, add_audit_flags, audit_settings_from
from modelplane.config import parse_layered
from modelplane.flag_types import byte_size
from modelplane.spec.server_kinds import DEFAULT_CAPABILITIES
from modelplane.transport import TransportError, TransportSecurity
from registry.settings import DEFAULT_LISTEN as DEFAULT_REGISTRY_LISTEN  # where its client looks by default
from registry.settings import RegistrySettings
from scheduler.settings import SchedulerSettings
from scheduler.state_dir import StateDir

if TYPE_CHECKING:
    from agent.process import ProxyAddresses
    from trainer.settings import TrainerSettings

DEFAULT_STATE_DIR = Path(".modelplane/up")
DEFAULT_GATEWAY_GRPC = Address("127.0.0.1", 9001)  # next to the gateway's REST port


@dataclass(frozen=True, slots=True)
class UpSettings:
    state_dir: Path
    listen: Address
    agent_listen: Address
    proxy_http: Address
    proxy_grpc: Address
    gateway: Address
    server_kind: str
    memory_bytes: int
    ready_file: Path | None
    trainer: TrainerSettings | None = None
    registry: RegistrySettings | None = None  # None: left out (--no-registry)
    dashboard_listen: Address | None = None  # None: left out (--no-dashboard)
    audit: AuditSettings = field(default_factory=AuditSettings)
    gateway_grpc: Address = DEFAULT_GATEWAY_GRPC
    # The scheduler's /metrics; the other parts serve theirs on their own HTTP ports (printed at start).
    metrics_listen: Address = field(default_factory=lambda: Address("127.0.0.1", 0))


def _loopback(text: str) -> Address:
    try:
        address = parse_address(text, allow_port_zero=True)
    except AddressError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not address.is_loopback:
        raise argparse.ArgumentTypeError(f"{text}: `modelplane up` listens on loopback addresses only")
    return address


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"state, logs, the server's models and the artifact cache (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--listen",
        type=_loopback,
        default="127.0.0.1:9004",
        metavar="HOST:PORT",
        help="Scheduler API (default 127.0.0.1:9004)",
    )
    parser.add_argument(
        "--agent-listen",
        type=_loopback,
        default="127.0.0.1:9005",
        metavar="HOST:PORT",
        help="agent service (default 127.0.0.1:9005)",
    )
    parser.add_argument(
        "--proxy-http",
        type=_loopback,
        default="127.0.0.1:9100",
        metavar="HOST:PORT",
        help="the agent's V2 REST inference proxy (default 127.0.0.1:9100)",
    )
    parser.add_argument(
        "--proxy-grpc",
        type=_loopback,
        default="127.0.0.1:9500",
        metavar="HOST:PORT",
        help="the agent's V2 gRPC inference proxy (default 127.0.0.1:9500)",
    )
    parser.add_argument(
        "--gateway",
        type=_loopback,
        default="127.0.0.1:9000",
        metavar="HOST:PORT",
        help="the gateway's V2 REST inference: models, experiments, pipelines (default 127.0.0.1:9000)",
    )
    parser.add_argument(
        "--gateway-grpc",
        type=_loopback,
        default=str(DEFAULT_GATEWAY_GRPC),
        metavar="HOST:PORT",
        help=f"the gateway's V2 gRPC inference (default {DEFAULT_GATEWAY_GRPC})",
    )
    parser.add_argument(
        "--metrics-listen",
        type=_loopback,
        default="127.0.0.1:9006",
        metavar="HOST:PORT",
        help="the scheduler's Prometheus metrics (default 127.0.0.1:9006); the agent, gateway, trainer and registry "
        "serve theirs as /metrics on their own HTTP ports, all printed at start",
    )
    parser.add_argument(
        "--registry-listen",
        type=_loopback,
        default=DEFAULT_REGISTRY_LISTEN,
        metavar="HOST:PORT",
        help=f"the model registry's REST API (default {DEFAULT_REGISTRY_LISTEN}, where `modelplane registry "
        "experiments ...` looks by default)",
    )
    parser.add_argument(
        "--registry-datasets-root",
        type=Path,
        metavar="DIR",
        help="where the registry reads datasets (srcpath) from; nothing outside it is read (default "
        "STATE_DIR/registry/datasets)",
    )
    parser.add_argument("--no-registry", action="store_true", help="leave the model registry out")
    parser.add_argument(
        "--dashboard-listen",
        type=_loopback,
        default=DEFAULT_DASHBOARD_LISTEN,
        metavar="HOST:PORT",
        help=f"the live dashboard's web page (default {DEFAULT_DASHBOARD_LISTEN})",
    )
    parser.add_argument("--no-dashboard", action="store_true", help="leave the dashboard out")
    parser.add_argument("--server-kind", choices=("mlserver", "triton"), default="mlserver")
    parser.add_argument(
        "--memory",
        type=byte_size(),
        default="2GiB",
        metavar="SIZE",
        help="memory for models on the server (default 2GiB)",
    )
    parser.add_argument("--ready-file", type=Path, metavar="FILE", help="write the addresses here as JSON once up")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file ([up] table)")
    parser.add_argument(
        "--trainer-config",
        type=Path,
        metavar="FILE",
        help="also run a trainer, set up like `modelplane trainer` by this TOML file's [trainer] table (and "
        "MODELPLANE_TRAINER_* variables); Kafka, Redis and S3 are yours to run; it deploys to this scheduler",
    )
    add_audit_flags(parser, "the scheduler's state dir, DIR/scheduler")
    return parser


def parse_settings(parser: argparse.ArgumentParser, argv: Sequence[str]) -> UpSettings:
    options = parse_layered(parser, "up", argv)
    trainer = None if options.trainer_config is None else _trainer_settings(parser, options.trainer_config)
    return UpSettings(
        state_dir=options.state_dir,
        listen=options.listen,
        agent_listen=options.agent_listen,
        proxy_http=options.proxy_http,
        proxy_grpc=options.proxy_grpc,
        gateway=options.gateway,
        server_kind=options.server_kind,
        memory_bytes=options.memory,
        ready_file=options.ready_file,
        trainer=trainer,
        registry=None if options.no_registry else _registry_settings(options, trainer),
        dashboard_listen=None if options.no_dashboard else options.dashboard_listen,
        audit=audit_settings_from(parser, options),
        gateway_grpc=options.gateway_grpc,
        metrics_listen=options.metrics_listen,
    )


def _trainer_settings(parser: argparse.ArgumentParser, config: Path) -> TrainerSettings:
    """The embedded trainer's settings, checked now so a mistake is a usage error before anything starts."""
    from trainer.settings import build_parser as build_trainer_parser  # noqa: PLC0415 - only with a trainer
    from trainer.settings import parse_settings as parse_trainer_settings  # noqa: PLC0415

    if not config.is_file():
        parser.error(f"--trainer-config {config}: no such file")
    trainer_parser = build_trainer_parser(argparse.ArgumentParser(prog=f"modelplane up --trainer-config {config}"))
    # The scheduler is this stack's (its address is known once it listens): whatever the file names is replaced,
    # so it is not checked either. A ready file is up's own, even when MODELPLANE_READY_FILE names one.
    settings = parse_trainer_settings(trainer_parser, ["--config", str(config), "--scheduler=127.0.0.1:9004"])
    if not settings.status_listen.is_loopback:
        parser.error(f"--trainer-config {config}: status_listen {settings.status_listen} is not a loopback address")
    return dataclasses.replace(settings, ready_file=None)


def _registry_settings(options: argparse.Namespace, trainer: TrainerSettings | None) -> RegistrySettings:
    from modelplane.cli.up_registry import embedded_settings  # noqa: PLC0415 - SQLAlchemy only with a registry

    return embedded_settings(options.state_dir, options.registry_listen, options.registry_datasets_root, trainer)


def _scheduler_settings(up: UpSettings) -> SchedulerSettings:
    return SchedulerSettings(
        listen=up.listen,
        agent_listen=up.agent_listen,
        metrics_listen=up.metrics_listen,
        state_dir=up.state_dir / "scheduler",
        security=TransportSecurity(),  # plaintext, and loopback only (checked by the parser)
        shutdown_grace_seconds=5.0,
        sync_grace_seconds=5.0,
        audit=up.audit,
    )


def _agent_settings(up: UpSettings, agent_address: Address) -> AgentSettings:
    work_dir = (up.state_dir / "agent").absolute()  # a launched server runs in its own working directory
    return AgentSettings(
        scheduler=agent_address,
        security=TransportSecurity(),
        server_name=up.server_kind,
        replica_idx=0,
        server_kind=up.server_kind,
        server_url=None,
        server_grpc=None,
        launch_server=True,
        memory_bytes=up.memory_bytes,
        capabilities=frozenset(DEFAULT_CAPABILITIES[up.server_kind].split(",")),
        overcommit_percent=10,
        shared=True,
        models_dir=work_dir / up.server_kind / "models",
        cache_dir=work_dir / "cache",
        secrets_dir=None,
        work_dir=work_dir,
        proxy_http=up.proxy_http,
        proxy_grpc=up.proxy_grpc,
        advertise_host=up.proxy_http.host,
        drain_timeout_seconds=5.0,
        ready_file=None,
        log_level="info",
        log_json=False,
    )


def _gateway_settings(up: UpSettings, api: Address) -> GatewaySettings:
    return GatewaySettings(
        scheduler=api,
        security=TransportSecurity(),
        serving=TransportSecurity(),  # loopback only (checked by the parser)
        name="up-gateway",
        listen=up.gateway,
        grpc_listen=up.gateway_grpc,
        max_attempts=3,
        request_timeout_seconds=60.0,
        pipeline_timeout_seconds=120.0,
        kafka_bootstrap="",
        kafka_topic_prefix="seldon",
        kafka_namespace="default",
        kafka_group="modelplane-gateway",
        ready_file=None,
        log_level="info",
        log_json=False,
    )


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def run(up: UpSettings) -> None:
    # Imported here, not at the top: the CLI imports this module for its flags whatever command runs.
    from scheduler import process as scheduler_process  # noqa: PLC0415

    up.state_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    agent_stop, agent_forced = asyncio.Event(), asyncio.Event()
    shutdown = scheduler_process.ShutdownRequest()

    def on_signal() -> None:
        if agent_stop.is_set():
            agent_forced.set()
            shutdown.signal()
            shutdown.signal()
        agent_stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    scheduler_settings = _scheduler_settings(up)
    with StateDir(scheduler_settings.state_dir):
        serving: asyncio.Future[tuple[Address, Address]] = loop.create_future()
        metrics: asyncio.Future[Address] = loop.create_future()
        scheduler_task = asyncio.create_task(
            scheduler_process.serve(scheduler_settings, shutdown, serving, metrics_serving=metrics)
        )
        parts: list[asyncio.Task[None]] = []  # what stops before the scheduler does
        try:
            await _first(serving, scheduler_task)
            api, agents = serving.result()
            _say(
                f"scheduler    {api} (Scheduler API)   {agents} (agents)   state in {scheduler_settings.state_dir}\n"
                "auth         off: everything listens on loopback only, so any local process may call anything"
            )
            proxy = await _start_agent(up, agents, agent_stop, agent_forced, parts)
            gateway, gateway_grpc = await _start_gateway(up, api, agent_stop, parts)
            addresses = {
                "listen": str(api),
                "agent_listen": str(agents),
                "http": str(proxy.http),
                "grpc": str(proxy.grpc),
                "gateway": str(gateway),
                "gateway_grpc": str(gateway_grpc),
            }
            addresses.update(await _start_optional_parts(up, api, agent_stop, agent_forced, parts))
            if up.dashboard_listen is not None:
                addresses["dashboard"] = await _start_dashboard(
                    up, api, gateway, addresses.get("trainer"), agent_stop, parts
                )
            addresses["metrics"] = str(metrics.result())
            _say(
                f"metrics      http://{metrics.result()}/metrics (scheduler)   http://{proxy.http}/metrics (agent)   "
                f"http://{gateway}/metrics (gateway); a trainer's and the registry's on their own ports, /metrics"
            )
            if not agent_stop.is_set():
                if up.ready_file is not None:
                    up.ready_file.write_text(json.dumps(addresses) + "\n")
                _say("modelplane is up; Ctrl-C stops it")
                await _until_stopped(parts, agent_stop)
        finally:
            agent_stop.set()
            # The parts stop first (the agent unloads its models and stops its server), the scheduler last.
            await asyncio.gather(*parts, return_exceptions=True)
            shutdown.signal()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduler_task
    _say("modelplane is down")


async def _start_agent(
    up: UpSettings, agents: Address, stop: asyncio.Event, forced: asyncio.Event, parts: list[asyncio.Task[None]]
) -> ProxyAddresses:
    """The local inference server (its venv made first if missing) and its agent; the proxy's addresses."""
    from agent import process as agent_process  # noqa: PLC0415 - see run()

    _say(f"agent        starting a local {up.server_kind} (its venv is created on first use: about a minute)")
    # Created here rather than inside the agent, so that its progress lines reach this terminal.
    await asyncio.to_thread(prepare_local_server, up.server_kind, lambda line: _say(f"             {line}"))
    registered: asyncio.Future[ProxyAddresses] = asyncio.get_running_loop().create_future()
    agent_settings = _agent_settings(up, agents)
    agent_task = asyncio.create_task(agent_process.run(agent_settings, stop, forced, registered))
    parts.append(agent_task)
    await _first(registered, agent_task)
    proxy = registered.result()
    server_log = agent_settings.work_dir / up.server_kind / f"{up.server_kind}.log"
    _say(f"agent proxy  http://{proxy.http} (V2 REST)   {proxy.grpc} (V2 gRPC)   server log {server_log}")
    return proxy


async def _until_stopped(parts: list[asyncio.Task[None]], stop: asyncio.Event) -> None:
    """Serve until Ctrl-C; a part that ends before that (a bug, a lost resource) stops the whole stack with
    its error, rather than leaving a stack that says it is up and is not."""
    done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        return
    stop.set()
    ended = next(iter(done))
    error = ended.exception()
    if error is not None:
        raise error
    raise RuntimeError(f"{ended.get_name()} stopped by itself; modelplane up stopped the rest")


async def _start_gateway(
    up: UpSettings, api: Address, stop: asyncio.Event, parts: list[asyncio.Task[None]]
) -> tuple[Address, Address]:
    """The gateway's REST and gRPC addresses, once it serves."""
    from gateway import process as gateway_process  # noqa: PLC0415 - see run()

    loop = asyncio.get_running_loop()
    serving: asyncio.Future[Address] = loop.create_future()
    grpc_serving: asyncio.Future[Address] = loop.create_future()
    task = asyncio.create_task(
        gateway_process.run(_gateway_settings(up, api), stop, serving, grpc_serving), name="the gateway"
    )
    parts.append(task)
    await _first(serving, task)
    rest, grpc = serving.result(), grpc_serving.result()  # the gRPC edge is up before the REST one says so
    _say(f"gateway      http://{rest} (V2 REST: /v2/models/NAME/infer, /v2/pipelines/NAME/infer)   {grpc} (V2 gRPC)")
    return rest, grpc


async def _start_optional_parts(
    up: UpSettings, api: Address, stop: asyncio.Event, forced: asyncio.Event, parts: list[asyncio.Task[None]]
) -> dict[str, str]:
    """The registry (unless left out) and the trainer (when configured); their addresses for the ready file."""
    addresses: dict[str, str] = {}
    if up.registry is not None:
        addresses["registry"] = str(await _start_registry(up.registry, api, stop, parts))
    if up.trainer is not None:
        trainer = await _start_trainer(up.trainer, api, stop, forced, parts)
        if trainer is not None:
            addresses["trainer"] = trainer
    return addresses


async def _start_dashboard(  # noqa: PLR0917 - what it shows comes from the parts started before it
    up: UpSettings,
    api: Address,
    gateway: Address,
    trainer: str | None,
    stop: asyncio.Event,
    parts: list[asyncio.Task[None]],
) -> str:
    """The dashboard over this stack's scheduler, its gateway's metrics and its trainer (when there is one)."""
    from dashboard import process as dashboard_process  # noqa: PLC0415 - see run()
    from dashboard.settings import DashboardSettings  # noqa: PLC0415

    if up.dashboard_listen is None:
        raise RuntimeError("the dashboard was left out (--no-dashboard)")
    settings = DashboardSettings(
        scheduler=api,
        security=TransportSecurity(),  # loopback only (checked by the parser)
        listen=up.dashboard_listen,
        gateway_metrics_url=f"http://{gateway}/metrics",
        trainer_url=trainer,
    )
    serving: asyncio.Future[Address] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(dashboard_process.run(settings, stop, serving), name="the dashboard")
    parts.append(task)
    try:
        await _first(serving, task)
    except TransportError as error:  # its port taken (a second `modelplane up`, or a `modelplane dashboard`?)
        raise TransportError(f"{error} (--dashboard-listen: another address; --no-dashboard: no dashboard)") from None
    _say(f"dashboard    http://{serving.result()}/ (live: servers, models, pipelines, experiments, training runs)")
    return str(serving.result())


async def _start_registry(
    settings: RegistrySettings, api: Address, stop: asyncio.Event, parts: list[asyncio.Task[None]]
) -> Address:
    from modelplane.cli import up_registry  # noqa: PLC0415 - see run()

    serving: asyncio.Future[Address] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(up_registry.serve(settings, api, stop, serving), name="the registry")
    parts.append(task)
    try:
        await _first(serving, task)
    except TransportError as error:  # its port taken (a `modelplane registry` of its own on the default one?)
        raise TransportError(f"{error} (--registry-listen: another address; --no-registry: no registry)") from None
    _say(
        f"registry     http://{serving.result()} (REST: /experiments, /openapi.json; modelplane registry --help)   "
        f"datasets from {settings.datasets_root}   state in {settings.state_dir}"
    )
    return serving.result()


async def _start_trainer(
    settings: TrainerSettings,
    api: Address,
    stop: asyncio.Event,
    forced: asyncio.Event,
    parts: list[asyncio.Task[None]],
) -> str | None:
    """Start the embedded trainer, deploying to this stack's scheduler; its status API URL, or None when the stack
    is stopped (Ctrl-C) before the trainer is up (it waits for Redis)."""
    from trainer import process as trainer_process  # noqa: PLC0415 - only with a trainer

    settings = dataclasses.replace(settings, scheduler=api, security=TransportSecurity())
    redis = _without_password(settings.redis_url)
    _say(f"trainer      waiting for Redis at {redis}; events from {settings.training_topic}")
    status_url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        trainer_process.run(settings, stop, forced=forced, status_url=status_url), name="the trainer"
    )
    parts.append(task)
    waiting: list[asyncio.Future[Any]] = [status_url, task]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not status_url.done():
        task.result()  # re-raises what ended it
        if stop.is_set():
            return None
        raise RuntimeError("the trainer stopped before it was up")
    url = status_url.result()
    client = " --tls-ca CA.pem" if url.startswith("https") else ""
    _say(f"trainer      {url} (runs: modelplane training status --trainer {url}{client})")
    return url


def _without_password(url: str) -> str:
    """``url`` with any user and password left out: it is printed."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port is not None else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{netloc}"))


async def _first(awaited: asyncio.Future[Any], task: asyncio.Task[None]) -> None:
    """Wait for ``awaited``; if ``task`` ends first, raise what ended it."""
    await asyncio.wait([awaited, task], return_when=asyncio.FIRST_COMPLETED)
    if not awaited.done():
        task.result()  # re-raises the task's error
        raise RuntimeError("a part of the stack stopped before it was up")
