"""Read commands over models and servers beyond model_commands.py's: ``model list``, ``model metadata`` (the V2
metadata of a model, through the gateway), ``server list``, and ``--output json|yaml`` for ``model status`` and
``server status`` (whose tables stay model_commands.py's).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.cli.infer_commands import Gateway, InferError, add_gateway_flags, resource_name
from modelplane.cli.model_commands import server_table, state_name
from modelplane.cli.scheduler_session import SUBSCRIBER, Scheduler
from modelplane.command_line import subparsers
from modelplane.output_formats import Record, add_output_flag, as_record, columns, render

MAX_METADATA_BYTES = 4 * 1024 * 1024  # a model's metadata: names, shapes, types of its tensors


def add_inventory_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``model list|metadata`` and ``server list`` beside the groups' other actions; ``--output`` on the read ones."""
    groups = dict(commands.choices)
    model_actions = subparsers(groups["model"])
    add_output_flag(model_actions["status"])
    model_group = _group(groups["model"])
    add_output_flag(model_group.add_parser("list", help="every model: its latest version, state and replicas"))
    metadata = model_group.add_parser(
        "metadata", help="a model's V2 metadata (inputs, outputs, platform), from the gateway"
    )
    metadata.add_argument("name", type=resource_name("model"), help="the model's name")
    add_gateway_flags(metadata, "model")  # as infer's: the gateway's address, TLS, token and headers
    add_output_flag(metadata)
    add_output_flag(subparsers(groups["server"])["status"])
    add_output_flag(_group(groups["server"]).add_parser("list", help="every server and its replicas"))


def _group(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError(f"{parser.prog} has no actions")


async def _models(scheduler: Scheduler, name: str | None) -> list[pb.ModelStatusResponse]:
    request = pb.ModelStatusRequest(subscriberName=SUBSCRIBER, allVersions=True)
    if name:
        request.model.CopyFrom(pb.ModelReference(name=name))
    async with scheduler.stub() as stub:
        return [s async for s in stub.ModelStatus(request, timeout=scheduler.timeout)]


async def model_status_records(scheduler: Scheduler, name: str | None, output: str) -> str:
    """``model status --output json|yaml``: every field of every version the scheduler holds."""
    models = await _models(scheduler, name)
    return render(output, [as_record(m) for m in models], lambda: "")


def _summary(model: pb.ModelStatusResponse) -> Record:
    if not model.versions:
        return {"name": model.modelName, "version": None, "state": "Deleted", "available": 0, "replicas": 0}
    latest = max(model.versions, key=lambda version: version.version)
    state = latest.state
    return {
        "name": model.modelName,
        "version": latest.version,
        "state": state_name(state.state),
        "available": state.availableReplicas,
        "replicas": state.availableReplicas + state.unavailableReplicas,
        "server": latest.serverName,
        "reason": state.reason,
    }


async def model_list(scheduler: Scheduler, output: str) -> str:
    summaries = [_summary(m) for m in await _models(scheduler, None)]
    rows = [
        [
            s["name"],
            f"v{s['version']}" if s["version"] else "-",
            s["state"],
            f"{s['available']}/{s['replicas']}",
            s.get("server") or "-",
            s.get("reason") or "",
        ]
        for s in summaries
    ]
    header = ["MODEL", "VERSION", "STATE", "AVAILABLE", "SERVER", "REASON"]
    return render(output, summaries, lambda: columns(header, rows) if rows else "no models")


async def _servers(scheduler: Scheduler, name: str | None) -> list[pb.ServerStatusResponse]:
    request = pb.ServerStatusRequest(subscriberName=SUBSCRIBER)
    if name:
        request.name = name
    async with scheduler.stub() as stub:
        return [s async for s in stub.ServerStatus(request, timeout=scheduler.timeout)]


async def server_status(scheduler: Scheduler, name: str | None, output: str) -> str:
    servers = await _servers(scheduler, name)
    return render(output, [as_record(s) for s in servers], lambda: server_table(servers))


async def server_list(scheduler: Scheduler, output: str) -> str:
    servers = await _servers(scheduler, None)
    records = [
        {
            "name": s.serverName,
            "availableReplicas": s.availableReplicas,
            "expectedReplicas": s.expectedReplicas,
            "loadedModelReplicas": s.numLoadedModelReplicas,
        }
        for s in servers
    ]
    rows = [
        [s.serverName, f"{s.availableReplicas}/{s.expectedReplicas}", str(s.numLoadedModelReplicas)] for s in servers
    ]
    return render(
        output, records, lambda: columns(["SERVER", "REPLICAS", "LOADED MODELS"], rows) if rows else "no servers"
    )


async def model_metadata(gateway: Gateway, name: str, output: str) -> str:
    """The model's V2 metadata as the gateway serves it (``GET /v2/models/NAME``); InferError for anything else."""
    answered = await gateway.call("GET", f"/v2/models/{name}")
    address = gateway.address
    if len(answered.body) > MAX_METADATA_BYTES:
        raise InferError(f"the gateway at {address} sent more than {MAX_METADATA_BYTES} bytes of metadata")
    try:
        answer: Any = json.loads(answered.body)
    except ValueError:
        answer = None
    if answered.status != 200:
        said = answer.get("error") if isinstance(answer, dict) else None
        if answered.status == 404:
            raise InferError(f"model {name!r} not found at the gateway {address}" + (f": {said}" if said else ""))
        raise InferError(f"the gateway at {address} answered HTTP {answered.status}" + (f": {said}" if said else ""))
    if not isinstance(answer, dict):
        raise InferError(f"the gateway at {address} sent metadata that is not a JSON object")
    return render(output, answer, lambda: _metadata_table(answer))


def _tensors(tensors: Any) -> list[list[str]]:
    rows = []
    for tensor in tensors if isinstance(tensors, list) else []:
        if isinstance(tensor, dict):
            shape = tensor.get("shape")
            shown = "[" + ", ".join(str(d) for d in shape) + "]" if isinstance(shape, list) else "-"
            rows.append([str(tensor.get("name", "-")), str(tensor.get("datatype", "-")), shown])
    return rows


def _metadata_table(metadata: dict[str, Any]) -> str:
    versions = metadata.get("versions")
    lines = [
        f"model     {metadata.get('name', '-')}",
        f"platform  {metadata.get('platform') or '-'}",
        f"versions  {', '.join(str(v) for v in versions) if isinstance(versions, list) and versions else '-'}",
    ]
    for title, key in (("INPUT", "inputs"), ("OUTPUT", "outputs")):
        rows = _tensors(metadata.get(key))
        lines.append("")
        lines.append(columns([title, "DATATYPE", "SHAPE"], rows) if rows else f"no {key}")
    return "\n".join(lines)
