"""The ``modelplane`` command: one entry point, one subcommand per process or client action.

Exit status: 0 on success, 1 when the work itself failed (e.g. a scheduler that cannot be reached,
a port in use, a model that failed), 2 for bad input: command line, configuration, a manifest, or a
request the scheduler refused as INVALID_ARGUMENT (or, for ``infer``, the gateway as malformed: 400, 413).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc

from modelplane import __version__, logs, tracing
from modelplane.addresses import Address
from modelplane.audit import AuditLogError
from modelplane.auth_flags import add_client_token_flag, client_token
from modelplane.command_line import EXIT_USAGE, fail, subparsers
from modelplane.config import parse_layered
from modelplane.flag_types import MAX_CALL_SECONDS, peer_address, seconds
from modelplane.kubernetes_api import KubernetesConfigError
from modelplane.transport import TransportError, TransportSecurity
from modelplane.transport_flags import add_tls_flags, security_from
from scheduler.leadership.leadership_state import LeadershipLost
from scheduler.state_dir import StateDirError

DEFAULT_SCHEDULER = "127.0.0.1:9004"
# Commands with actions (``modelplane model load``): their flags live on the action's parser.
GROUPS = ("model", "server", "pipeline", "experiment")


def add_client_flags(parser: argparse.ArgumentParser, section: str) -> None:
    """Flags of every command that talks to a running scheduler's API."""
    parser.add_argument(
        "--scheduler",
        type=peer_address,
        default=DEFAULT_SCHEDULER,
        metavar="HOST:PORT",
        help=f"the scheduler's API address (default {DEFAULT_SCHEDULER}; env MODELPLANE_SCHEDULER)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds(MAX_CALL_SECONDS),
        default=10.0,
        metavar="SECONDS",
        help="per-call deadline (default 10)",
    )
    parser.add_argument("--config", metavar="FILE", help=f"TOML settings file ([{section}] table)")
    add_tls_flags(parser, server=False)
    add_client_token_flag(parser)


# Each long-running process's flags are added to its command's parser only when that command runs (or its help is
# asked), and a process's command builds no client command's parser: building them imports the other processes'
# settings and the clients' modules, and with them their packages (aiohttp, minio...), which a scheduler would
# otherwise load too: ~0.3 s of CPU before it restores anything (bench/README.md, "Restart after kill -9").
# tests/cli/test_command_imports.py pins what the scheduler's command loads.
def _scheduler_flags(parser: argparse.ArgumentParser) -> None:
    from scheduler.settings import build_parser  # noqa: PLC0415 - see above

    build_parser(parser)


def _agent_flags(parser: argparse.ArgumentParser) -> None:
    from agent.settings import build_parser  # noqa: PLC0415 - see _scheduler_flags

    build_parser(parser)


def _up_flags(parser: argparse.ArgumentParser) -> None:
    from modelplane.cli import up  # noqa: PLC0415 - see _scheduler_flags

    up.build_parser(parser)


def _gateway_flags(parser: argparse.ArgumentParser) -> None:
    from gateway.settings import build_parser  # noqa: PLC0415 - see _scheduler_flags

    build_parser(parser)


def _controller_flags(parser: argparse.ArgumentParser) -> None:
    from controller.settings import build_parser  # noqa: PLC0415 - see _scheduler_flags

    build_parser(parser)


def _registry_flags(parser: argparse.ArgumentParser) -> None:
    from registry.settings import build_parser  # noqa: PLC0415 - see _scheduler_flags

    build_parser(parser)


def _dashboard_flags(parser: argparse.ArgumentParser) -> None:
    from dashboard.settings import build_parser  # noqa: PLC0415 - see _scheduler_flags

    build_parser(parser)


def _status_relay_flags(parser: argparse.ArgumentParser) -> None:
    from status_relay.settings import build_parser  # noqa: PLC0415 - see _scheduler_flags

    build_parser(parser)


PROCESS_FLAGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "scheduler": _scheduler_flags,
    "agent": _agent_flags,
    "up": _up_flags,
    "gateway": _gateway_flags,
    "controller": _controller_flags,
    "registry": _registry_flags,
    "dashboard": _dashboard_flags,
    "status-relay": _status_relay_flags,
}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; of the long-running processes, only ``command``'s with its flags; when ``command`` is a
    long-running process, only the processes' parsers (see above)."""
    parser = argparse.ArgumentParser(
        prog="modelplane",
        description="modelplane: a control plane for machine-learning models (Seldon Core v2 scheduler API).",
    )
    parser.add_argument("--version", action="version", version=f"modelplane {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("version", help="print the version", description="Print modelplane's version.")
    commands.add_parser(
        "scheduler",
        help="run the scheduler (the Scheduler API server)",
        description="Run the scheduler: the Seldon Core v2 Scheduler API on --listen and the agent "
        "service on --agent-listen. Every flag can also be set as MODELPLANE_<FLAG> or in a "
        "TOML file given with --config.",
    )
    commands.add_parser(
        "agent",
        help="run an agent for one inference-server replica",
        description="Run an agent: it registers one MLServer or Triton replica with the scheduler, loads "
        "and unloads models on it, and serves an inference proxy in front of it.",
    )
    commands.add_parser(
        "up",
        help="run the all-in-one local stack: scheduler, agent, a local MLServer and a gateway",
        description="Run scheduler, agent and a local inference server in one process, on loopback.",
    )
    commands.add_parser(
        "gateway",
        help="run a gateway (V2 inference routing, experiments, pipelines)",
        description="Run a gateway: V2 REST/gRPC inference routed to the replicas that serve each model, "
        "experiments' traffic split and mirror, pipelines, and Kafka topics, from the routing table the "
        "scheduler streams. Stateless: run as many as you like.",
    )
    commands.add_parser(
        "controller",
        help="run the Kubernetes controller (Seldon's Model, Pipeline, Experiment, Server resources)",
        description="Run the controller: it watches Seldon's custom resources (mlops.seldon.io/v1alpha1) in "
        "the Kubernetes API, sends them to the scheduler, and writes their status back.",
    )
    commands.add_parser(
        "dashboard",
        help="serve a live, read-only web page of the scheduler's servers, models, pipelines and experiments",
        description="Serve a read-only web page (on loopback by default) that shows a scheduler's servers and their "
        "memory, models, pipelines as graphs, experiments with their live traffic share (--gateway-metrics) and "
        "training runs (--trainer), kept live over the scheduler's status streams.",
    )
    commands.add_parser(
        "status-relay",
        help="serve the scheduler's status subscriptions to many subscribers from one subscription each",
        description="Run a status relay: it holds one SubscribeModelStatus, SubscribeServerStatus, "
        "SubscribePipelineStatus and SubscribeExperimentStatus stream to the scheduler (--scheduler) and serves "
        "the same RPCs, wire-compatible, to many subscribers on --listen: the scheduler pays one delivery per "
        "status whatever their number. Subscribers get the relay's snapshot, then the changes; when the relay "
        "loses the scheduler, their streams end with UNAVAILABLE and new ones are refused until it has a fresh "
        "snapshot. Every other Scheduler RPC answers UNIMPLEMENTED: call the scheduler for those.",
    )
    if command not in PROCESS_FLAGS:
        from trainer.commands import add_trainer_commands  # noqa: PLC0415 - see _scheduler_flags

        add_trainer_commands(commands)
    registry = commands.add_parser(
        "registry",
        help="run the model registry (experiments, splits, models: a REST API)",
        description="Run the registry: seed 002's REST API of experiments, splits and models on --listen, "
        "/openapi.json describing it, kept in SQLite in --state-dir or in PostgreSQL (--database).",
    )
    if command == "registry":  # the client commands, shown in its help only
        from modelplane.cli import registry_client  # noqa: PLC0415 - see _scheduler_flags

        registry.epilog = registry_client.EPILOG
    if command in PROCESS_FLAGS:
        PROCESS_FLAGS[command](subparsers(parser)[command])
        return parser
    from modelplane.cli import audit_command, model_commands  # noqa: PLC0415 - see _scheduler_flags

    status = commands.add_parser(
        "status",
        help="show a running scheduler's version, health and services",
        description="Ask a running scheduler for its version, health, services, models and servers.",
    )
    add_client_flags(status, "status")
    audit_command.build_parser(
        commands.add_parser(
            "audit",
            help="read a scheduler's audit log: who changed what, and what came of it",
            description="Read a scheduler's audit log (one line per accepted or refused mutation) and its rotated "
            "files, oldest first, filtered by identity, resource, RPC, result and time.",
        )
    )
    model_commands.add_model_commands(commands)
    from modelplane.cli import infer_commands, resource_commands  # noqa: PLC0415 - see _scheduler_flags

    resource_commands.add_resource_commands(commands)  # the pipeline and experiment groups, their infer included
    for command_name in resource_commands.TOP_LEVEL:
        add_client_flags(_subparser(parser, command_name), command_name)
    for group in GROUPS:
        for name, action in subparsers(_subparser(parser, group)).items():
            if (group, name) not in infer_commands.COMMANDS:  # they talk to a gateway: flags of their own
                add_client_flags(action, group)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return subparsers(parser)[name]


def _run_scheduler(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from scheduler.settings import parse_settings  # noqa: PLC0415 - see _scheduler_flags

    settings = parse_settings(parser, argv)
    logs.configure("scheduler", settings.log_level, json_output=settings.log_json)
    from scheduler import process  # noqa: PLC0415 - see _run_agent

    try:
        asyncio.run(process.run(settings))
    except (StateDirError, KubernetesConfigError) as error:
        return fail(str(error), EXIT_USAGE)
    except (TransportError, AuditLogError, LeadershipLost) as error:
        return fail(str(error))
    return 0


def _run_agent(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from agent.settings import parse_settings  # noqa: PLC0415 - see _scheduler_flags

    settings = parse_settings(parser, argv)
    logs.configure("agent", settings.log_level, json_output=settings.log_json)
    try:
        tracing.configure("agent", settings.otel_endpoint)
    except tracing.TracingUnavailableError as error:
        return fail(str(error), EXIT_USAGE)
    # Each process imports only its own code: a gateway need not carry the agent's or trainer's libraries.
    from agent import process as agent_process  # noqa: PLC0415

    try:
        asyncio.run(agent_process.run(settings))
    except (TransportError, OSError, RuntimeError, KubernetesConfigError) as error:
        return fail(str(error))
    return 0


def _run_gateway(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from gateway.settings import parse_settings  # noqa: PLC0415 - see _scheduler_flags

    settings = parse_settings(parser, argv)
    logs.configure("gateway", settings.log_level, json_output=settings.log_json)
    try:
        tracing.configure("gateway", settings.otel_endpoint)
    except tracing.TracingUnavailableError as error:
        return fail(str(error), EXIT_USAGE)
    from gateway import process as gateway_process  # noqa: PLC0415 - see _run_agent

    try:
        asyncio.run(gateway_process.run(settings))
    except (TransportError, OSError, RuntimeError) as error:
        return fail(str(error))
    return 0


def _run_controller(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from controller.settings import parse_settings  # noqa: PLC0415 - see _scheduler_flags

    settings = parse_settings(parser, argv)
    logs.configure("controller", settings.log_level, json_output=settings.log_json)
    from controller import process as controller_process  # noqa: PLC0415 - see _run_agent
    from modelplane.kubernetes_api import KubernetesConfigError  # noqa: PLC0415 - loads the kubernetes client

    try:
        asyncio.run(controller_process.run(settings))
    except KubernetesConfigError as error:
        return fail(str(error), EXIT_USAGE)
    except (TransportError, OSError, RuntimeError) as error:
        return fail(str(error))
    return 0


def _run_registry(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from registry.settings import parse_settings  # noqa: PLC0415 - see _scheduler_flags

    settings = parse_settings(parser, argv)
    logs.configure("registry", settings.log_level, json_output=settings.log_json)
    from modelplane.cli.registry_ports import serve_registry  # noqa: PLC0415 - see _run_agent

    try:
        asyncio.run(serve_registry(settings))
    except (TransportError, OSError, RuntimeError) as error:
        return fail(str(error))
    return 0


def _run_dashboard(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from dashboard.settings import parse_settings  # noqa: PLC0415 - see _scheduler_flags

    settings = parse_settings(parser, argv)
    logs.configure("dashboard", settings.log_level, json_output=settings.log_json)
    from dashboard import process as dashboard_process  # noqa: PLC0415 - see _run_agent

    try:
        asyncio.run(dashboard_process.run(settings))
    except (TransportError, OSError, RuntimeError) as error:
        return fail(str(error))
    return 0


def _run_status_relay(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from status_relay.settings import parse_settings  # noqa: PLC0415 - see _scheduler_flags

    settings = parse_settings(parser, argv)
    logs.configure("status-relay", settings.log_level, json_output=settings.log_json)
    from status_relay import process as relay_process  # noqa: PLC0415 - see _run_agent

    try:
        asyncio.run(relay_process.run(settings))
    except (TransportError, OSError, RuntimeError) as error:
        return fail(str(error))
    return 0


def _run_up(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from modelplane.cli import up  # noqa: PLC0415 - see _scheduler_flags

    settings = up.parse_settings(parser, argv)
    logs.configure("up")
    try:
        asyncio.run(up.run(settings))
    except StateDirError as error:
        return fail(str(error), EXIT_USAGE)
    except (TransportError, OSError, RuntimeError) as error:
        return fail(str(error))
    return 0


def _client(parser: argparse.ArgumentParser, section: str, argv: Sequence[str], action: str | None) -> int:
    from modelplane.cli import model_commands  # noqa: PLC0415 - see _scheduler_flags

    options = parse_layered(parser, section, argv)
    if section == "model" and action == "status" and options.watch and not options.name:
        parser.error("--watch needs a model name")
    from modelplane.cli import resource_commands  # noqa: PLC0415 - see _scheduler_flags

    problem = resource_commands.usage_problem(section, action, options)
    if problem is not None:
        parser.error(problem)
    address: Address = options.scheduler
    security = security_from(options)
    try:
        presented = client_token(options.auth_token_file)
        token = presented.current() if presented is not None else None  # one command: one read
        print(asyncio.run(_client_job(section, action, options, address, security, token=token)()))
    except TransportError as error:
        return fail(str(error), EXIT_USAGE)
    except model_commands.CommandError as error:
        return fail(str(error), error.exit_status)
    except grpc.aio.AioRpcError as error:
        # In words, and bad input (2) when the scheduler refused the input itself (a bad name, a value out of range).
        return fail(model_commands.describe_rpc_error(address, error), model_commands.rpc_exit_status(error))
    return 0


def _client_job(
    section: str,
    action: str | None,
    options: argparse.Namespace,
    address: Address,
    security: TransportSecurity,
    *,
    token: str | None,
) -> Callable[[], Coroutine[Any, Any, str]]:
    from modelplane.cli import model_commands, resource_commands  # noqa: PLC0415 - see _scheduler_flags

    added = resource_commands.job(section, action, options, address, security, token=token)
    if added is not None:
        return added
    timeout: float = options.timeout
    if section == "model" and action == "status" and options.watch:
        return lambda: model_commands.watch(
            address, security, options.name, options.until, options.wait_timeout, token=token
        )
    jobs: dict[tuple[str, str | None], Callable[[], Coroutine[Any, Any, str]]] = {
        ("status", None): lambda: _render_status(address, security, timeout, token),
        ("server", "status"): lambda: model_commands.server_status(address, security, timeout, token=token),
        ("model", "load"): lambda: model_commands.load(address, security, options.file, timeout, token=token),
        ("model", "unload"): lambda: model_commands.unload(address, security, options.name, timeout, token=token),
        ("model", "status"): lambda: model_commands.status(address, security, options.name, timeout, token=token),
    }
    return jobs[(section, action)]


async def _render_status(address: Address, security: TransportSecurity, timeout: float, token: str | None) -> str:
    from modelplane.cli import status_command  # noqa: PLC0415 - see _scheduler_flags

    report = await status_command.fetch_report(address, security, timeout, token=token)
    return report.render()


# The long-running processes, each run from its own parser and arguments.
PROCESSES: dict[str, Callable[[argparse.ArgumentParser, Sequence[str]], int]] = {
    "scheduler": _run_scheduler,
    "agent": _run_agent,
    "up": _run_up,
    "gateway": _run_gateway,
    "controller": _run_controller,
    "registry": _run_registry,
    "dashboard": _run_dashboard,
    "status-relay": _run_status_relay,
}


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per command
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(argv[0] if argv else None)
    commands = subparsers(parser)
    if not argv or argv[0] not in commands:
        parser.parse_args(argv)  # prints help, the version, or the usage error (exit 2)
        return EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command == "version":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(f"modelplane {__version__}")
        return 0
    if command == "registry" and rest:
        from modelplane.cli import registry_client  # noqa: PLC0415 - see _scheduler_flags

        if rest[0] in registry_client.GROUPS:
            return registry_client.run(rest)  # a client command; flags first is the serving command, as before
    if command in PROCESSES:
        return PROCESSES[command](commands[command], rest)
    if command in ("status", "load", "unload"):
        return _client(commands[command], command, rest, None)
    if command == "audit":
        from modelplane.cli import audit_command  # noqa: PLC0415 - see _scheduler_flags

        return audit_command.run(commands[command], rest)
    from trainer.commands import TRAINER_COMMANDS, run_trainer_command  # noqa: PLC0415 - see _scheduler_flags

    if command in TRAINER_COMMANDS:
        return run_trainer_command(commands[command], command, rest)
    actions = subparsers(commands[command])
    if not rest or rest[0] not in actions:
        commands[command].parse_args(rest)  # usage error or help
        return EXIT_USAGE
    from modelplane.cli import infer_commands  # noqa: PLC0415 - see _scheduler_flags

    if (command, rest[0]) in infer_commands.COMMANDS:
        return infer_commands.run(actions[rest[0]], command, rest[0], rest[1:])
    return _client(actions[rest[0]], command, rest[1:], rest[0])


if __name__ == "__main__":
    sys.exit(main())
