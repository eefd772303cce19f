"""``modelplane experiment start|stop|status|list`` against a running scheduler, like Seldon's ``seldon experiment``:
``status NAME -w`` prints each change until the experiment is active with its candidates (and mirror) ready.
"""

from __future__ import annotations

import argparse

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.cli.infer_commands import add_infer_parser
from modelplane.cli.manifest_commands import apply_one_kind, experiment_state_word, remove_one
from modelplane.cli.manifest_documents import Kind
from modelplane.cli.scheduler_session import SUBSCRIBER, Scheduler, follow
from modelplane.flag_types import MAX_WAIT_SECONDS, seconds
from modelplane.output_formats import add_output_flag, as_record, columns, render


def add_experiment_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser(
        "experiment",
        help="start, stop and follow experiments (traffic splits and mirrors)",
        description="Manage experiments (Seldon's Experiment).",
    )
    actions = group.add_subparsers(dest="experiment_command", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start the experiment(s) of an Experiment manifest (YAML; -f - is stdin)")
    start.add_argument("-f", "--file", required=True, metavar="FILE", help="the Experiment manifest, or - for stdin")
    stop = actions.add_parser("stop", help="stop an experiment")
    stop.add_argument("name")
    status = actions.add_parser("status", help="an experiment's status (every experiment without a name)")
    status.add_argument("name", nargs="?")
    status.add_argument(
        "-w", "--wait", action="store_true", help="print each change until the experiment is active and ready"
    )
    status.add_argument(
        "--wait-timeout",
        type=seconds(MAX_WAIT_SECONDS),
        default=300.0,
        metavar="SECONDS",
        help="how long -w waits (default 300)",
    )
    add_output_flag(status)
    listing = actions.add_parser("list", help="every experiment and whether it is active")
    add_output_flag(listing)
    add_infer_parser(actions, "experiment")  # through the gateway, with flags of its own (infer_commands.py)


async def start(scheduler: Scheduler, source: str) -> str:
    return await apply_one_kind(scheduler, source, Kind.EXPERIMENT)


async def stop(scheduler: Scheduler, name: str) -> str:
    return await remove_one(scheduler, Kind.EXPERIMENT, name)


async def _statuses(scheduler: Scheduler, name: str | None) -> list[pb.ExperimentStatusResponse]:
    request = pb.ExperimentStatusRequest(subscriberName=SUBSCRIBER)
    if name:
        request.name = name
    async with scheduler.stub() as stub:
        return [s async for s in stub.ExperimentStatus(request, timeout=scheduler.timeout)]


_HEADER = ["EXPERIMENT", "STATE", "ACTIVE", "CANDIDATES READY", "MIRROR READY", "DESCRIPTION"]


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _row(status: pb.ExperimentStatusResponse) -> list[str]:
    return [
        status.experimentName,
        experiment_state_word(status),
        _yes(status.active),
        _yes(status.candidatesReady),
        _yes(status.mirrorReady),
        status.statusDescription,
    ]


async def status(scheduler: Scheduler, name: str | None, output: str) -> str:
    statuses = await _statuses(scheduler, name)
    return render(
        output,
        [as_record(s) for s in statuses],
        lambda: columns(_HEADER, [_row(s) for s in statuses]) if statuses else "no experiments",
    )


async def listing(scheduler: Scheduler, output: str) -> str:
    statuses = await _statuses(scheduler, None)
    records = [{"name": s.experimentName, "state": experiment_state_word(s), "active": s.active} for s in statuses]
    return render(
        output,
        records,
        lambda: (
            columns(["EXPERIMENT", "STATE"], [[s.experimentName, experiment_state_word(s)] for s in statuses])
            if statuses
            else "no experiments"
        ),
    )


async def wait(scheduler: Scheduler, name: str, wait_seconds: float) -> str:
    """Print each change of experiment ``name`` until it is active with its candidates and mirror ready."""

    def settled(update: pb.ExperimentStatusResponse) -> str | None:
        ready = update.active and update.candidatesReady and update.mirrorReady
        return f"experiment {name} is active" if ready else None

    async with scheduler.stub() as stub:
        # One-shot first: an unknown experiment is an error now, not a silent wait.
        request = pb.ExperimentStatusRequest(subscriberName=SUBSCRIBER, name=name)
        [current] = [s async for s in stub.ExperimentStatus(request, timeout=scheduler.timeout)]
        stream = stub.SubscribeExperimentStatus(pb.ExperimentSubscriptionRequest(subscriberName=f"{SUBSCRIBER}-watch"))
        return await follow(
            stream,
            first=current,
            name_of=lambda s: s.experimentName,
            name=name,
            settled=settled,
            show=lambda s: columns(_HEADER, [_row(s)]).splitlines()[-1],
            wait_seconds=wait_seconds,
            what=f"experiment {name}",
        )
