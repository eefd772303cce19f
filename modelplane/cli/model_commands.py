"""Client commands against a running scheduler: ``model load|unload|status`` and ``server status`` (``model infer``
goes to the gateway: modelplane/cli/infer_commands.py).

Every command takes ``--scheduler HOST:PORT`` (default 127.0.0.1:9004, or MODELPLANE_SCHEDULER) and
says plainly when the scheduler cannot be reached, the input is invalid, or the model is unknown or
not yet available.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.cli.infer_commands import add_infer_parser
from modelplane.cli.manifests import MAX_MANIFEST_BYTES, ManifestError, parse_model_manifest
from modelplane.command_line import EXIT_FAILURE, EXIT_USAGE
from modelplane.flag_types import MAX_WAIT_SECONDS, seconds
from modelplane.transport import TransportSecurity, open_channel

ModelState = pb.ModelStatus.ModelState
FAILED_STATES = {ModelState.Value("ModelFailed"), ModelState.Value("ScheduleFailed")}


class CommandError(Exception):
    """A failure to report as ``modelplane: error: ...``, with exit status 1 (the work failed) or 2 (bad input)."""

    def __init__(self, message: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def state_name(value: int) -> str:
    return ModelState.Name(value)  # type: ignore[arg-type]


# The scheduler's answers whose details are a sentence for the user already ("model 'nosuch' not found", "model
# name 'A_B' must be ..."): said as they are, with no gRPC code in front (scheduler/status_codes.py writes them).
_SAID_AS_IS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Bad input, whoever noticed it: the command's exit status 2 (main.py's docstring).
_BAD_INPUT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})


def describe_rpc_error(address: Address, error: grpc.aio.AioRpcError) -> str:
    """A failed call in words: the one place every client command turns a gRPC error into its message."""
    details = error.details() or ""
    code = error.code()
    # gRPC's own words when no connection could be made (as opposed to the scheduler answering UNAVAILABLE).
    no_connection = ("failed to connect", "connection refused", "connections to all backends failing", "dns resolution")
    unreachable = code == grpc.StatusCode.DEADLINE_EXCEEDED or (
        code == grpc.StatusCode.UNAVAILABLE and any(words in details.lower() for words in no_connection)
    )
    if unreachable:
        return f"cannot reach the scheduler at {address}: is `modelplane scheduler` running there? ({details})"
    if code in _SAID_AS_IS and details:
        return details
    said = {
        grpc.StatusCode.UNAUTHENTICATED: f"the scheduler at {address} did not accept the credentials",
        grpc.StatusCode.PERMISSION_DENIED: f"the scheduler at {address} does not permit this",
        grpc.StatusCode.RESOURCE_EXHAUSTED: f"the scheduler at {address} is at a limit",
        grpc.StatusCode.UNAVAILABLE: f"the scheduler at {address} is not serving yet",
        grpc.StatusCode.CANCELLED: f"the call to the scheduler at {address} was cancelled",
        grpc.StatusCode.UNIMPLEMENTED: f"the scheduler at {address} does not offer this call",
    }.get(code, f"the scheduler at {address} failed ({code.name.lower().replace('_', ' ')})")
    return f"{said}: {details}" if details else said


def rpc_exit_status(error: grpc.aio.AioRpcError) -> int:
    """2 when the scheduler refused the input itself (a bad name, a value out of range), else 1."""
    return EXIT_USAGE if error.code() in _BAD_INPUT else EXIT_FAILURE


def _status_rows(status: pb.ModelStatusResponse) -> list[str]:
    rows = []
    for version in status.versions:
        state = version.state
        replicas = ", ".join(
            f"{index}:{pb.ModelReplicaStatus.ModelReplicaState.Name(r.state)}"
            for index, r in sorted(version.modelReplicaState.items())
        )
        reason = f"  ({state.reason})" if state.reason else ""
        rows.append(
            f"{status.modelName:<24} v{version.version:<4} {state_name(state.state):<17} "
            f"{state.availableReplicas}/{state.availableReplicas + state.unavailableReplicas} available  "
            f"server={version.serverName or '-'}  replicas=[{replicas}]{reason}"
        )
    if not status.versions:
        rows.append(f"{status.modelName:<24} (deleted)")
    return rows


STDIN = "-"  # as a manifest's path: read standard input


def manifest_label(source: str) -> str:
    """How a manifest's source is named in a message."""
    return "standard input" if source == STDIN else source


def read_manifest_text(source: str) -> str:
    """The text of the manifest file ``source`` (``-``: standard input): at most 1 MiB, UTF-8; anything wrong with
    it is bad input (exit status 2). One byte more than the limit is read, so ``-f /dev/zero`` costs nothing."""
    try:
        if source == STDIN:
            raw = sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
        else:
            with open(source, "rb") as file:
                raw = file.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise CommandError(f"cannot read {manifest_label(source)}: {error.strerror or error}", EXIT_USAGE) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CommandError(f"{manifest_label(source)}: the manifest is larger than 1 MiB", EXIT_USAGE)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CommandError(
            f"cannot read {manifest_label(source)}: it is not UTF-8 text (byte {error.start} is "
            f"{raw[error.start]:#04x})",
            EXIT_USAGE,
        ) from None


def read_manifest(manifest: Path) -> pb.Model:
    """The Model a manifest file (``-``: standard input) describes; anything wrong with it is bad input (exit
    status 2)."""
    text = read_manifest_text(str(manifest))
    try:
        return parse_model_manifest(text)
    except ManifestError as error:
        raise CommandError(f"{manifest_label(str(manifest))}: {error}", EXIT_USAGE) from None


async def load(
    scheduler: Address, security: TransportSecurity, manifest: Path, timeout: float, *, token: str | None = None
) -> str:
    model = await asyncio.to_thread(read_manifest, manifest)
    async with open_channel(scheduler, security, token) as channel:
        await pb_grpc.SchedulerStub(channel).LoadModel(pb.LoadModelRequest(model=model), timeout=timeout)
    return f"model {model.meta.name} accepted; follow it with: modelplane model status {model.meta.name} --watch"


async def unload(
    scheduler: Address, security: TransportSecurity, name: str, timeout: float, *, token: str | None = None
) -> str:
    async with open_channel(scheduler, security, token) as channel:
        request = pb.UnloadModelRequest(model=pb.ModelReference(name=name))
        await pb_grpc.SchedulerStub(channel).UnloadModel(request, timeout=timeout)
    return f"model {name} is being unloaded"


async def status(
    scheduler: Address, security: TransportSecurity, name: str | None, timeout: float, *, token: str | None = None
) -> str:
    async with open_channel(scheduler, security, token) as channel:
        request = pb.ModelStatusRequest(subscriberName="modelplane-cli", allVersions=True)
        if name:
            request.model.CopyFrom(pb.ModelReference(name=name))
        answers = [s async for s in pb_grpc.SchedulerStub(channel).ModelStatus(request, timeout=timeout)]
    rows = [row for answer in answers for row in _status_rows(answer)]
    return "\n".join(rows) if rows else "no models"


async def watch(
    scheduler: Address, security: TransportSecurity, name: str, until: str, timeout: float, *, token: str | None = None
) -> str:
    """Print each change of ``name`` until it reaches ``until`` (or fails, or the time is up)."""
    from modelplane.cli.scheduler_session import follow  # noqa: PLC0415 - it imports this module (CommandError)

    target = ModelState.Value(until)

    def settled(update: pb.ModelStatusResponse) -> str | None:
        latest = update.versions[-1].state if update.versions else None
        if latest is not None and latest.state == target:
            return f"model {name} is {until}"
        if latest is not None and latest.state in FAILED_STATES and target not in FAILED_STATES:
            raise CommandError(f"model {name} is {state_name(latest.state)}: {latest.reason}")
        if not update.versions and update.deleted:
            raise CommandError(f"model {name} was deleted")
        return None

    async with open_channel(scheduler, security, token) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        # One-shot first: an unknown model is an error now, not a silent wait.
        [current] = [
            s async for s in stub.ModelStatus(pb.ModelStatusRequest(model=pb.ModelReference(name=name)), timeout=10)
        ]
        stream = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="modelplane-cli-watch"))
        return await follow(
            stream,
            first=current,
            name_of=lambda update: update.modelName,
            name=name,
            settled=settled,
            show=lambda update: "\n".join(_status_rows(update)),
            wait_seconds=timeout,
            what=f"model {name}",
            goal=f"reach {until}",
        )


async def server_status(
    scheduler: Address,
    security: TransportSecurity,
    timeout: float,
    *,
    token: str | None = None,
    name: str | None = None,
) -> str:
    async with open_channel(scheduler, security, token) as channel:
        request = pb.ServerStatusRequest(subscriberName="modelplane-cli")
        if name:
            request.name = name
        servers = [s async for s in pb_grpc.SchedulerStub(channel).ServerStatus(request, timeout=timeout)]
    return server_table(servers)


def server_table(servers: list[pb.ServerStatusResponse]) -> str:
    rows = []
    for server in servers:
        rows.append(
            f"{server.serverName:<20} replicas {server.availableReplicas}/{server.expectedReplicas}  "
            f"loaded model replicas {server.numLoadedModelReplicas}"
        )
        for replica in server.resources:
            rows.append(
                f"  replica {replica.replicaIdx:<3} memory {replica.availableMemoryBytes}/{replica.totalMemoryBytes} "
                f"bytes free  models {replica.numLoadedModels}  over-commit {replica.overCommitPercentage}%"
            )
    return "\n".join(rows) if rows else "no servers"


def add_model_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = commands.add_parser("model", help="load, unload, watch and query models", description="Manage models.")
    model_commands = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    load_parser = model_commands.add_parser("load", help="load a model from a Model manifest (YAML)")
    load_parser.add_argument(
        "-f", "--file", type=Path, required=True, metavar="FILE", help="the Model manifest, or - for stdin"
    )
    unload_parser = model_commands.add_parser("unload", help="unload a model")
    unload_parser.add_argument("name")
    status_parser = model_commands.add_parser("status", help="a model's status (all models without a name)")
    status_parser.add_argument("name", nargs="?")
    status_parser.add_argument("--watch", action="store_true", help="print changes until --until is reached")
    status_parser.add_argument(
        "--until",
        default="ModelAvailable",
        choices=list(ModelState.keys()),
        help="the state --watch waits for (default ModelAvailable)",
    )
    status_parser.add_argument(
        "--wait-timeout",
        type=seconds(MAX_WAIT_SECONDS),
        default=300.0,
        metavar="SECONDS",
        help="how long --watch waits (default 300)",
    )
    add_infer_parser(model_commands, "model")
    server = commands.add_parser("server", help="server status", description="Inspect servers.")
    server_commands = server.add_subparsers(dest="server_command", metavar="ACTION", required=True)
    server_status_parser = server_commands.add_parser(
        "status", help="a server's replicas, memory and models (all without a name)"
    )
    server_status_parser.add_argument("name", nargs="?")


def print_result(text: str) -> None:
    sys.stdout.write(text + "\n")
