"""The Scheduler API's wire contract, pinned: Seldon-generated clients depend on every name and number.

`buf breaking` guards changes between commits; this pins the contract itself, so even the first
version of a change that renames or renumbers something fails here.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor

from generated.mlops.chainer import chainer_pb2
from generated.mlops.scheduler import scheduler_pb2

# (rpc, request, response, server streaming)
SCHEDULER_RPCS = [
    ("ServerNotify", "ServerNotifyRequest", "ServerNotifyResponse", False),
    ("LoadModel", "LoadModelRequest", "LoadModelResponse", False),
    ("UnloadModel", "UnloadModelRequest", "UnloadModelResponse", False),
    ("LoadPipeline", "LoadPipelineRequest", "LoadPipelineResponse", False),
    ("UnloadPipeline", "UnloadPipelineRequest", "UnloadPipelineResponse", False),
    ("StartExperiment", "StartExperimentRequest", "StartExperimentResponse", False),
    ("StopExperiment", "StopExperimentRequest", "StopExperimentResponse", False),
    ("ServerStatus", "ServerStatusRequest", "ServerStatusResponse", True),
    ("ModelStatus", "ModelStatusRequest", "ModelStatusResponse", True),
    ("PipelineStatus", "PipelineStatusRequest", "PipelineStatusResponse", True),
    ("ExperimentStatus", "ExperimentStatusRequest", "ExperimentStatusResponse", True),
    ("SchedulerStatus", "SchedulerStatusRequest", "SchedulerStatusResponse", False),
    ("SubscribeServerStatus", "ServerSubscriptionRequest", "ServerStatusResponse", True),
    ("SubscribeModelStatus", "ModelSubscriptionRequest", "ModelStatusResponse", True),
    ("SubscribeExperimentStatus", "ExperimentSubscriptionRequest", "ExperimentStatusResponse", True),
    ("SubscribePipelineStatus", "PipelineSubscriptionRequest", "PipelineStatusResponse", True),
    ("PipelineStatusEvent", "PipelineUpdateStatusMessage", "PipelineUpdateStatusResponse", False),
    ("ModelStatusEvent", "ModelUpdateStatusMessage", "ModelUpdateStatusResponse", False),
    ("SubscribeControlPlane", "ControlPlaneSubscriptionRequest", "ControlPlaneResponse", True),
]


def test_scheduler_service_rpcs() -> None:
    service = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"]
    assert service.full_name == "seldon.mlops.scheduler.Scheduler"
    actual = [
        (m.name, m.input_type.name, m.output_type.name, m.server_streaming)
        for m in service.methods
        if not m.client_streaming
    ]
    assert actual == SCHEDULER_RPCS
    assert len(service.methods) == len(SCHEDULER_RPCS)


@pytest.mark.parametrize(
    ("message", "field", "number", "type_"),
    [
        (scheduler_pb2.Model, "modelSpec", 2, FieldDescriptor.TYPE_MESSAGE),
        (scheduler_pb2.ModelSpec, "modelRuntimeInfo", 9, FieldDescriptor.TYPE_MESSAGE),
        (scheduler_pb2.ModelSpec, "llm", 10, FieldDescriptor.TYPE_MESSAGE),
        (scheduler_pb2.ModelSpec, "memoryBytes", 5, FieldDescriptor.TYPE_UINT64),
        (scheduler_pb2.ModelVersionStatus, "modelReplicaState", 5, FieldDescriptor.TYPE_MESSAGE),
        (scheduler_pb2.ServerStatusResponse, "type", 7, FieldDescriptor.TYPE_ENUM),
        (scheduler_pb2.ServerNotify, "minReplicas", 5, FieldDescriptor.TYPE_UINT32),
        (scheduler_pb2.KubernetesMeta, "generation", 2, FieldDescriptor.TYPE_INT64),
        (scheduler_pb2.Pipeline, "maxStepRevisits", 10, FieldDescriptor.TYPE_UINT32),
        (chainer_pb2.PipelineUpdateMessage, "stream", 11, FieldDescriptor.TYPE_STRING),
        (chainer_pb2.PipelineUpdateMessage, "updates", 5, FieldDescriptor.TYPE_MESSAGE),
        (chainer_pb2.PipelineUpdateStatusMessage, "reason", 3, FieldDescriptor.TYPE_STRING),
    ],
)
def test_field_numbers_and_types(message: type, field: str, number: int, type_: int) -> None:
    descriptor = message.DESCRIPTOR.fields_by_name[field]  # type: ignore[attr-defined]
    assert (descriptor.number, descriptor.type) == (number, type_)


def test_chainer_operation_values_match_seldon() -> None:
    ops = chainer_pb2.PipelineUpdateMessage.PipelineOperation
    assert [(ops.Name(v), v) for v in ops.values()] == [
        ("Unknown", 0),
        ("Create", 1),
        ("Delete", 2),
        ("Rebalance", 3),
        ("Ready", 4),
    ]


def test_seldon_shaped_step_update_still_parses() -> None:
    """A pipeline gateway that sends Seldon's step layout (messages in 1-3, enums in 4-5) must not break
    the whole acknowledgement: the fields land, at worst, as unknown content of our step message."""
    seldon_like_step = (
        b"\x0a\x05\x0a\x01p\x12\x00"  # 1: a message (topic: pipelineName="p", topicName="")
        b"\x1a\x03\x0a\x01s"  # 3: a message (sink)
        b"\x20\x01"  # 4: enum INNER
    )
    update = b"\x08\x01\x12\x01p\x18\x02" + b"\x2a" + bytes([len(seldon_like_step)]) + seldon_like_step
    ack = b"\x0a" + bytes([len(update)]) + update + b"\x10\x01"
    parsed = chainer_pb2.PipelineUpdateStatusMessage.FromString(ack)
    assert parsed.success
    assert parsed.update.pipeline == "p"
    assert parsed.update.version == 2
    assert parsed.update.op == chainer_pb2.PipelineUpdateMessage.Create
    assert len(parsed.update.updates) == 1
