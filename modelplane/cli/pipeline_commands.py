"""``modelplane pipeline load|unload|status|list`` against a running scheduler, like Seldon's ``seldon pipeline``:
``status NAME -w [STATE]`` prints each change until the pipeline reaches STATE (PipelineReady by default), fails,
or the wait is over.
"""

from __future__ import annotations

import argparse

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.cli.infer_commands import add_infer_parser, add_inspect_parser
from modelplane.cli.manifest_commands import apply_one_kind, pipeline_state_name, remove_one
from modelplane.cli.manifest_documents import Kind
from modelplane.cli.model_commands import CommandError
from modelplane.cli.scheduler_session import SUBSCRIBER, Scheduler, follow
from modelplane.flag_types import MAX_WAIT_SECONDS, seconds
from modelplane.output_formats import add_output_flag, as_record, columns, render

PipelineStatus = pb.PipelineVersionState.PipelineStatus
_FAILED = {PipelineStatus.Value("PipelineFailed")}
_GONE = {PipelineStatus.Value("PipelineTerminated"), PipelineStatus.Value("PipelineTerminating")}


def add_pipeline_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser(
        "pipeline", help="load, unload and follow pipelines", description="Manage pipelines (Seldon's Pipeline)."
    )
    actions = group.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    load = actions.add_parser("load", help="load the pipeline(s) of a Pipeline manifest (YAML; -f - reads stdin)")
    load.add_argument("-f", "--file", required=True, metavar="FILE", help="the Pipeline manifest, or - for stdin")
    unload = actions.add_parser("unload", help="unload a pipeline")
    unload.add_argument("name")
    status = actions.add_parser("status", help="a pipeline's status (every pipeline without a name)")
    status.add_argument("name", nargs="?")
    status.add_argument(
        "-w",
        "--wait",
        nargs="?",
        const="PipelineReady",
        choices=list(PipelineStatus.keys()),
        metavar="STATE",
        help="print each change until the pipeline reaches STATE (default PipelineReady)",
    )
    status.add_argument(
        "--wait-timeout",
        type=seconds(MAX_WAIT_SECONDS),
        default=300.0,
        metavar="SECONDS",
        help="how long -w waits (default 300)",
    )
    add_output_flag(status)
    listing = actions.add_parser("list", help="every pipeline and its state")
    add_output_flag(listing)
    add_infer_parser(actions, "pipeline")  # through the gateway, with flags of its own (infer_commands.py)
    add_inspect_parser(actions)


async def load(scheduler: Scheduler, source: str) -> str:
    return await apply_one_kind(scheduler, source, Kind.PIPELINE)


async def unload(scheduler: Scheduler, name: str) -> str:
    return await remove_one(scheduler, Kind.PIPELINE, name)


async def _statuses(scheduler: Scheduler, name: str | None) -> list[pb.PipelineStatusResponse]:
    request = pb.PipelineStatusRequest(subscriberName=SUBSCRIBER)
    if name:
        request.name = name
    async with scheduler.stub() as stub:
        return [s async for s in stub.PipelineStatus(request, timeout=scheduler.timeout)]


def _latest(status: pb.PipelineStatusResponse) -> pb.PipelineWithState | None:
    return max(status.versions, key=lambda version: version.pipeline.version) if status.versions else None


def _row(status: pb.PipelineStatusResponse) -> list[str]:
    latest = _latest(status)
    if latest is None:
        return [status.pipelineName, "-", "Deleted", "-", ""]
    steps = ", ".join(step.name for step in latest.pipeline.steps)
    return [
        status.pipelineName,
        f"v{latest.pipeline.version}",
        pipeline_state_name(latest.state.status),
        "yes" if latest.state.modelsReady else "no",
        latest.state.reason or f"steps: {steps}",
    ]


_HEADER = ["PIPELINE", "VERSION", "STATE", "MODELS READY", "REASON"]


def _table(statuses: list[pb.PipelineStatusResponse]) -> str:
    return columns(_HEADER, [_row(s) for s in statuses]) if statuses else "no pipelines"


async def status(scheduler: Scheduler, name: str | None, output: str) -> str:
    statuses = await _statuses(scheduler, name)
    return render(output, [as_record(s) for s in statuses], lambda: _table(statuses))


async def listing(scheduler: Scheduler, output: str) -> str:
    statuses = await _statuses(scheduler, None)
    records = [{"name": s.pipelineName, "state": _row(s)[2], "version": _row(s)[1]} for s in statuses]
    return render(
        output,
        records,
        lambda: (
            columns(["PIPELINE", "STATE"], [[s.pipelineName, _row(s)[2]] for s in statuses])
            if statuses
            else "no pipelines"
        ),
    )


async def wait(scheduler: Scheduler, name: str, until: str, wait_seconds: float) -> str:
    """Print each change of pipeline ``name`` until it reaches ``until``."""
    target = PipelineStatus.Value(until)

    def settled(update: pb.PipelineStatusResponse) -> str | None:
        latest = _latest(update)
        if latest is None:
            raise CommandError(f"pipeline {name} was unloaded")
        state = latest.state.status
        if state == target:
            return f"pipeline {name} is {until}"
        if state in _FAILED and target not in _FAILED:
            raise CommandError(f"pipeline {name} is {pipeline_state_name(state)}: {latest.state.reason}")
        if state in _GONE and target not in _GONE:
            raise CommandError(f"pipeline {name} is {pipeline_state_name(state)}")
        return None

    async with scheduler.stub() as stub:
        # One-shot first: an unknown pipeline is an error now, not a silent wait.
        request = pb.PipelineStatusRequest(subscriberName=SUBSCRIBER, name=name)
        [current] = [s async for s in stub.PipelineStatus(request, timeout=scheduler.timeout)]
        stream = stub.SubscribePipelineStatus(pb.PipelineSubscriptionRequest(subscriberName=f"{SUBSCRIBER}-watch"))
        return await follow(
            stream,
            first=current,
            name_of=lambda s: s.pipelineName,
            name=name,
            settled=settled,
            show=lambda s: columns(_HEADER, [_row(s)]).splitlines()[-1],
            wait_seconds=wait_seconds,
            what=f"pipeline {name}",
        )
