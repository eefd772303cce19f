"""The scheduler's status messages as the page's views: plain JSON-ready dicts, every text one line and cut, every
list bounded (a status carries what a client sent the scheduler, which bounds it only by its own limits)."""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor

from dashboard.board_state import JsonView
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.bounded_text import cut, one_line

MAX_TEXT_CHARS = 512  # a reason, a description, a name
MAX_LIST_ITEMS = 64  # replicas of a server or model, steps of a pipeline, candidates of an experiment
MAX_INPUTS_PER_STEP = 32

_MODEL_STATE = pb.ModelStatus.ModelState
_REPLICA_STATE = pb.ModelReplicaStatus.ModelReplicaState
_PIPELINE_STATE = pb.PipelineVersionState.PipelineStatus


def text(value: str) -> str:
    return cut(one_line(value), MAX_TEXT_CHARS)


def _enum_name(value: int, enum: EnumDescriptor) -> str:
    """The enum value's name; a number this build does not know (a newer scheduler's) said as such."""
    known = enum.values_by_number.get(value)
    return known.name if known is not None else f"unknown ({value})"


def server_view(status: pb.ServerStatusResponse) -> JsonView:
    return {
        "name": text(status.serverName),
        "expectedReplicas": status.expectedReplicas,
        "availableReplicas": status.availableReplicas,
        "loadedModelReplicas": status.numLoadedModelReplicas,
        "replicas": [
            {
                "index": replica.replicaIdx,
                "totalMemoryBytes": replica.totalMemoryBytes,
                "availableMemoryBytes": replica.availableMemoryBytes,
                "loadedModels": replica.numLoadedModels,
                "overcommitPercent": replica.overCommitPercentage,
            }
            for replica in sorted(status.resources, key=lambda r: r.replicaIdx)[:MAX_LIST_ITEMS]
        ],
    }


def model_view(status: pb.ModelStatusResponse) -> JsonView | None:
    """The latest version's view; None for a deleted model (or one with no version left)."""
    if status.deleted or not status.versions:
        return None
    latest = max(status.versions, key=lambda v: v.version)
    replicas = sorted(latest.modelReplicaState.items())[:MAX_LIST_ITEMS]
    return {
        "name": text(status.modelName),
        "version": latest.version,
        "server": text(latest.serverName),
        "state": _enum_name(latest.state.state, _MODEL_STATE.DESCRIPTOR),
        "reason": text(latest.state.reason),
        "availableReplicas": latest.state.availableReplicas,
        "unavailableReplicas": latest.state.unavailableReplicas,
        "replicas": [
            {
                "index": index,
                "state": _enum_name(replica.state, _REPLICA_STATE.DESCRIPTOR),
                "reason": text(replica.reason),
            }
            for index, replica in replicas
        ],
    }


def _step_name(reference: str) -> str:
    """The step (or ``pipeline`` input) a reference such as ``m.outputs.t`` or ``p.inputs`` comes from."""
    return text(reference.split(".", 1)[0])


def pipeline_view(status: pb.PipelineStatusResponse) -> JsonView | None:
    """The latest version: its state and its graph (each step's inputs by step name); None once it is gone."""
    if not status.versions:
        return None
    latest = max(status.versions, key=lambda v: v.state.pipelineVersion)
    state = _enum_name(latest.state.status, _PIPELINE_STATE.DESCRIPTOR)
    if latest.state.status == _PIPELINE_STATE.PipelineTerminated:
        return None
    pipeline = latest.pipeline
    steps = [
        {
            "name": text(step.name),
            "inputs": sorted({_step_name(ref) for ref in [*step.inputs, *step.triggers][:MAX_INPUTS_PER_STEP]}),
        }
        for step in pipeline.steps[:MAX_LIST_ITEMS]
    ]
    return {
        "name": text(status.pipelineName),
        "version": latest.state.pipelineVersion,
        "state": state,
        "reason": text(latest.state.reason),
        "modelsReady": latest.state.modelsReady,
        "steps": steps,
        "outputs": sorted({_step_name(ref) for ref in pipeline.output.steps[:MAX_INPUTS_PER_STEP]}),
    }


def experiment_view(status: pb.ExperimentStatusResponse) -> JsonView:
    return {
        "name": text(status.experimentName),
        "active": status.active,
        "candidatesReady": status.candidatesReady,
        "mirrorReady": status.mirrorReady,
        "description": text(status.statusDescription),
    }


def experiment_spec_view(experiment: pb.Experiment) -> JsonView:
    """What an experiment routes: its candidates with their weights, its default, its mirror."""
    return {
        "name": text(experiment.name),
        "resourceType": "pipeline" if experiment.resourceType == pb.PIPELINE else "model",
        "default": text(experiment.default) if experiment.HasField("default") else "",
        "candidates": [
            {"name": text(candidate.name), "weight": candidate.weight}
            for candidate in experiment.candidates[:MAX_LIST_ITEMS]
        ],
        "mirror": (
            {"name": text(experiment.mirror.name), "percent": experiment.mirror.percent}
            if experiment.HasField("mirror")
            else None
        ),
    }
