"""The Scheduler API's wire contract, pinned: Seldon-generated clients depend on every name and number.

`buf breaking` guards changes between commits; this pins the contract itself, so even the first
version of a change that renames or renumbers something fails here.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor

from generated.mlops.chainer import chainer_pb2
from generated.mlops.scheduler import scheduler_pb2
from generated.mlops.training.v1 import training_pb2

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


# The training messages of seeds/000 keep the seed's field names and numbers.
SEED_TRAINING_FIELDS = {
    "ModelTrainingEvent": {"design_schema": 1, "dataset_artifact_url": 2},
    "ModelTrainingStatus": {"design_schema_id": 1, "status": 2, "errors": 3},
    "InferenceStoreMessage": {"model_id": 1, "dataset_artifact_url": 2},
    "ModelDesignSchema": {
        "design_token": 1,
        "producer_token": 2,
        "algorithm": 3,
        "version": 4,
        "metadata": 5,
        "input": 6,
        "output": 7,
        "hyper_parameter": 8,
        "preprocessor": 9,
        "postprocessor": 10,
        "criteria": 11,
        "model_framework": 12,
        "dataset_token": 13,
        "loss_criteria": 14,
        "learning_function": 15,
        "eval_criteria": 16,
        "output_store": 17,
    },
    "ModelAlgorithms": {"algorithm_token": 1, "classification": 10},
    "ClassificationModels": {"binary": 1},
    "BinaryClassificationModels": {"logistic_regression": 1},
    "LogisticRegression": {"hyper_parameters": 1, "parameters": 2},
    "LogisticRegressionParameter": {"classes_": 1, "coef_": 2, "intercept_": 3, "n_features_in_": 4, "n_iter_": 5},
    "ModelDesignInputSchema": {
        "input_type": 1,
        "dataset_framework": 2,
        "multivariate": 10,
        "time_series": 11,
        "image": 12,
    },
    "ModelDatasetFramework": {"dataset_framework_type": 1, "framework_dataset_name": 2, "dataset_version": 3},
    "ModelDesignMultivariateInputSchema": {"design_input": 2},
    "ModelDesignOutputSchema": {"design_output_type": 1, "classification_schema": 10, "regression_schema": 11},
    "ModelDesignClassificationOutputSchema": {"binary": 1, "multi_class": 10},
    "ModelDesignBinaryClassificationOutputSchema": {"positive": 1, "negative": 2, "target_variable": 3},
    "ModelDesignMultiClassClassificationOutputSchema": {"class_dictionary": 1},
    "ModelDesignRegressionOutputSchema": {"label_schema": 1, "inference_schema": 2},
    "ModelHyperParameter": {"design_token": 1, "algorithm_token": 2, "hyper_parameter": 3},
    "HyperParamater": {"str": 1, "bl": 2, "flt": 3, "i32": 4, "fvector": 5, "svector": 6},
    "PreprocessorExpression": {"expression": 1, "output": 2, "constants": 3},
    "Primitive": {
        "float_data": 1,
        "double_data": 2,
        "uint32_data": 3,
        "sint32_data": 4,
        "uint64_data": 5,
        "sint64_data": 6,
        "string_data": 7,
        "boolean_data": 8,
        "list_data": 9,
    },
    "ExpressionProgram": {"program": 1, "initialization": 2, "dependency": 3, "topological_order": 4},
    "ModelAssembly": {"model_framework": 1, "dependencies": 2, "compute_dependencies": 3, "deployment_rpc": 4},
    "ModelFramework": {"framework_type": 1, "framework_version": 2, "framework_algorithm_name": 3},
    "ModelCPUCompute": {"cpu_type": 1, "no_of_cores": 2, "ram": 3},
    "ModelTrainingOutputStore": {"model_store": 1, "inference_store": 2},
}


@pytest.mark.parametrize(("message", "fields"), sorted(SEED_TRAINING_FIELDS.items()))
def test_training_messages_keep_the_seeds_numbers(message: str, fields: dict[str, int]) -> None:
    descriptor = training_pb2.DESCRIPTOR.message_types_by_name[message]
    assert {name: descriptor.fields_by_name[name].number for name in fields} == fields


def test_training_enums_keep_the_seeds_values() -> None:
    assert training_pb2.ModelInputType.Value("MODEL_INPUT_IMAGE") == 2700
    assert training_pb2.ModelOutputType.Value("OUTPUT_TYPE_ANNOTATION") == 12
    assert training_pb2.ModelFrameworkType.Value("MODEL_FRAMEWORK_CORNAC") == 10
    assert training_pb2.ModelDatasetFrameworkType.Value("DATASET_FRAMEWORK_HUGGINGFACE") == 3
