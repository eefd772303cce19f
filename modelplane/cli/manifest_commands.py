"""``modelplane load|unload|status -f FILE``: a manifest of any of the five kinds, several documents to a file,
applied in order (manifest_documents.py says which call each kind makes, and the order); ``-f -`` reads stdin.

The whole file is read and checked before the first call (bad input: exit status 2, nothing applied). A call the
scheduler refuses stops the command there (exit status 1, or 2 for input it refused); what was applied before is
printed. Unloading, a resource the scheduler does not hold is said and passed over: unloading is idempotent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.cli.manifest_documents import Kind, Resource, load_order, parse_resources, unload_order
from modelplane.cli.manifests import ManifestError
from modelplane.cli.model_commands import (
    CommandError,
    describe_rpc_error,
    read_manifest_text,
    rpc_exit_status,
    state_name,
)
from modelplane.cli.model_commands import manifest_label as label
from modelplane.cli.scheduler_session import SUBSCRIBER, Scheduler
from modelplane.command_line import EXIT_USAGE
from modelplane.output_formats import Record, as_record, columns, render

NOT_APPLIED = (
    "a ServerConfig is a pod template for Kubernetes (apply it with kubectl); the Scheduler API has no call for it"
)


def read_resources(source: str, only: Kind | None = None) -> list[Resource]:
    """The checked resources of the manifest ``source`` (a path, or ``-``); with ``only``, every document must be of
    that kind. CommandError with exit status 2 for anything wrong with the file."""
    text = read_manifest_text(source)
    try:
        resources = parse_resources(text)
    except ManifestError as error:
        raise CommandError(f"{label(source)}: {error}", EXIT_USAGE) from None
    if only is not None:
        for resource in resources:
            if resource.kind is not only:
                raise CommandError(
                    f"{label(source)}: document {resource.document} is {_a(resource.kind.resource)}, not "
                    f"{_a(only.resource)}; `modelplane load -f` takes every kind",
                    EXIT_USAGE,
                )
    return resources


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "AEIOU" else f"a {kind}"


def _not_known(error: aio.AioRpcError) -> bool:
    """The scheduler's ways of saying it holds nothing of a name (Seldon's FAILED_PRECONDITION ``... not found``,
    or NOT_FOUND)."""
    return error.code() == grpc.StatusCode.NOT_FOUND or (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not found" in (error.details() or "")
    )


async def apply(stub: pb_grpc.SchedulerAsyncStub, resource: Resource, timeout: float) -> str:
    """Make the call that loads ``resource``; the line that says so."""
    message = resource.message
    word = resource.kind.word
    if isinstance(message, pb.Model):
        await stub.LoadModel(pb.LoadModelRequest(model=message), timeout=timeout)
        return f"model {resource.name} accepted"
    if isinstance(message, pb.Pipeline):
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=message), timeout=timeout)
        return f"pipeline {resource.name} accepted"
    if isinstance(message, pb.Experiment):
        await stub.StartExperiment(pb.StartExperimentRequest(experiment=message), timeout=timeout)
        return f"experiment {resource.name} started"
    if isinstance(message, pb.ServerNotify):
        await stub.ServerNotify(pb.ServerNotifyRequest(servers=[message]), timeout=timeout)
        return f"server {resource.name} expects {message.expectedReplicas} replica(s)"
    return f"{word} {resource.name} not applied: {NOT_APPLIED}"


async def remove(stub: pb_grpc.SchedulerAsyncStub, kind: Kind, name: str, timeout: float) -> str:
    """Make the call that unloads ``kind`` ``name``; the line that says so. Raises AioRpcError when the scheduler
    does not hold it (the caller decides whether that is an error)."""
    if kind is Kind.MODEL:
        await stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name=name)), timeout=timeout)
        return f"model {name} is being unloaded"
    if kind is Kind.PIPELINE:
        await stub.UnloadPipeline(pb.UnloadPipelineRequest(name=name), timeout=timeout)
        return f"pipeline {name} is being unloaded"
    if kind is Kind.EXPERIMENT:
        await stub.StopExperiment(pb.StopExperimentRequest(name=name), timeout=timeout)
        return f"experiment {name} stopped"
    if kind is Kind.SERVER:
        # Asked first: ServerNotify of a name the scheduler does not know would make it known.
        [_status] = [s async for s in stub.ServerStatus(_server_request(name), timeout=timeout)]
        notify = pb.ServerNotify(name=name, expectedReplicas=0, shared=True)
        await stub.ServerNotify(pb.ServerNotifyRequest(servers=[notify]), timeout=timeout)
        return f"server {name} expects 0 replicas"
    return f"server config {name} not applied: {NOT_APPLIED}"


async def apply_one_kind(scheduler: Scheduler, source: str, kind: Kind) -> str:
    """``pipeline load`` and ``experiment start``: every resource of the manifest, all of ``kind``, applied in the
    file's order, each line saying how to follow it."""
    resources = await asyncio.to_thread(read_resources, source, kind)
    async with scheduler.stub() as stub:
        lines = [await apply(stub, resource, scheduler.timeout) for resource in resources]
    return "\n".join(
        f"{line}; follow it with: modelplane {kind.word} status {resource.name} -w"
        for line, resource in zip(lines, resources, strict=True)
    )


async def remove_one(scheduler: Scheduler, kind: Kind, name: str) -> str:
    """``pipeline unload`` and ``experiment stop``."""
    async with scheduler.stub() as stub:
        return await remove(stub, kind, name, scheduler.timeout)


def _server_request(name: str) -> pb.ServerStatusRequest:
    return pb.ServerStatusRequest(subscriberName=SUBSCRIBER, name=name)


async def load(scheduler: Scheduler, source: str) -> str:
    resources = await asyncio.to_thread(read_resources, source)
    return await _each(scheduler, load_order(resources), unloading=False)


async def unload(scheduler: Scheduler, source: str) -> str:
    resources = await asyncio.to_thread(read_resources, source)
    return await _each(scheduler, unload_order(resources), unloading=True)


async def _each(scheduler: Scheduler, resources: list[Resource], *, unloading: bool) -> str:
    done: list[str] = []
    async with scheduler.stub() as stub:
        for resource in resources:
            try:
                if unloading:
                    done.append(await remove(stub, resource.kind, resource.name, scheduler.timeout))
                else:
                    done.append(await apply(stub, resource, scheduler.timeout))
            except aio.AioRpcError as error:
                if unloading and _not_known(error):
                    done.append(f"{resource.kind.word} {resource.name} was not loaded")
                    continue
                said = describe_rpc_error(scheduler.address, error)
                if done:
                    print("\n".join(done), flush=True)
                raise CommandError(
                    f"{resource.kind.word} {resource.name}: {said}"
                    + (f" (stopped there: the {len(done)} line(s) above were done)" if done else ""),
                    rpc_exit_status(error),
                ) from None
    return "\n".join(done) if done else f"nothing to {'unload' if unloading else 'load'}"


@dataclass(frozen=True, slots=True)
class ResourceState:
    kind: Kind
    name: str
    state: str  # one word: the scheduler's state name, or NotLoaded
    detail: str
    record: Record | None  # the scheduler's status message, as a record


async def state_of(stub: pb_grpc.SchedulerAsyncStub, resource: Resource, timeout: float) -> ResourceState:
    kind, name = resource.kind, resource.name
    try:
        if kind is Kind.MODEL:
            request = pb.ModelStatusRequest(subscriberName=SUBSCRIBER, model=pb.ModelReference(name=name))
            [model] = [s async for s in stub.ModelStatus(request, timeout=timeout)]
            return _model_state(model)
        if kind is Kind.PIPELINE:
            [pipeline] = [
                s
                async for s in stub.PipelineStatus(
                    pb.PipelineStatusRequest(subscriberName=SUBSCRIBER, name=name), timeout=timeout
                )
            ]
            return _pipeline_state(pipeline)
        if kind is Kind.EXPERIMENT:
            [experiment] = [
                s
                async for s in stub.ExperimentStatus(
                    pb.ExperimentStatusRequest(subscriberName=SUBSCRIBER, name=name), timeout=timeout
                )
            ]
            return _experiment_state(experiment)
        if kind is Kind.SERVER:
            [server] = [s async for s in stub.ServerStatus(_server_request(name), timeout=timeout)]
            detail = f"{server.availableReplicas}/{server.expectedReplicas} replicas available"
            ready = server.expectedReplicas > 0 and server.availableReplicas >= server.expectedReplicas
            return ResourceState(kind, name, "Ready" if ready else "NotReady", detail, as_record(server))
    except aio.AioRpcError as error:
        if _not_known(error):
            return ResourceState(kind, name, "NotLoaded", "the scheduler does not hold it", None)
        raise
    return ResourceState(kind, name, "NotApplied", NOT_APPLIED, None)


def _model_state(status: pb.ModelStatusResponse) -> ResourceState:
    record = as_record(status)
    if not status.versions:
        return ResourceState(Kind.MODEL, status.modelName, "Deleted", "", record)
    latest = max(status.versions, key=lambda version: version.version).state
    total = latest.availableReplicas + latest.unavailableReplicas
    detail = f"{latest.availableReplicas}/{total} replicas available" + (f"; {latest.reason}" if latest.reason else "")
    return ResourceState(Kind.MODEL, status.modelName, state_name(latest.state), detail, record)


def pipeline_state_name(value: int) -> str:
    return pb.PipelineVersionState.PipelineStatus.Name(value)  # type: ignore[arg-type]


def _pipeline_state(status: pb.PipelineStatusResponse) -> ResourceState:
    record = as_record(status)
    if not status.versions:
        return ResourceState(Kind.PIPELINE, status.pipelineName, "Deleted", "", record)
    latest = max(status.versions, key=lambda version: version.pipeline.version).state
    return ResourceState(Kind.PIPELINE, status.pipelineName, pipeline_state_name(latest.status), latest.reason, record)


def experiment_state_word(status: pb.ExperimentStatusResponse) -> str:
    if not status.active:
        return "Inactive"
    if not status.candidatesReady:
        return "CandidatesNotReady"
    return "MirrorNotReady" if not status.mirrorReady else "Active"


def _experiment_state(status: pb.ExperimentStatusResponse) -> ResourceState:
    word = experiment_state_word(status)
    return ResourceState(Kind.EXPERIMENT, status.experimentName, word, status.statusDescription, as_record(status))


async def status(scheduler: Scheduler, source: str, output: str) -> str:
    resources = load_order(await asyncio.to_thread(read_resources, source))
    async with scheduler.stub() as stub:
        states = [await state_of(stub, resource, scheduler.timeout) for resource in resources]
    records = [
        {"kind": s.kind.resource, "name": s.name, "state": s.state, "detail": s.detail, "status": s.record}
        for s in states
    ]
    return render(
        output,
        records,
        lambda: columns(
            ["KIND", "NAME", "STATE", "DETAIL"], [[s.kind.resource, s.name, s.state, s.detail] for s in states]
        ),
    )
