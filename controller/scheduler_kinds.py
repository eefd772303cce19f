"""The per-kind parts of the Model, Pipeline and Experiment reconcilers (controller/scheduler_resources.py): which
RPCs load and unload each, which stream reports its status, and what a status message says.

What a status says, per kind:
- Model: the latest version's state (ModelAvailable is ready; every other state is not, with the state's name as
  the reason and the scheduler's reason as the message), its available and total replicas, and the generation
  the scheduler holds (the version's kubernetesMeta). Unloaded: the model is deleted and no version is left, or
  every version is terminated.
- Pipeline: the latest version's status (PipelineReady is ready). Unloaded once UnloadPipeline is accepted (the
  scheduler ends the pipeline's versions itself; nothing of the resource waits on them).
- Experiment: active with its candidates (and mirror) ready is ready; the status description is the message.
  Unloaded once StopExperiment is accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from controller.reconciling import ControlPlaneEvent
from controller.resource_kinds import EXPERIMENTS, MODELS, PIPELINES, JsonObject
from controller.status_documents import Observed
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.spec.seldon_resources import (
    Translation,
    experiment_from_resource,
    model_from_resource,
    pipeline_from_resource,
)

CALL_SECONDS = 30.0  # per unary call to the scheduler
CP = pb.ControlPlaneResponse


async def _stream(call: Any) -> AsyncIterator[Any]:
    """A status stream's messages; the call is cancelled when the reader stops."""
    try:
        async for message in call:
            yield message
    finally:
        call.cancel()


def _not_known(error: aio.AioRpcError) -> bool:
    """The scheduler's ways of saying it holds nothing of a name: it does not know it (Seldon's FAILED_PRECONDITION,
    or NOT_FOUND), or the name is one it refuses (INVALID_ARGUMENT: the API server admits names with dots or of
    up to 253 characters, the scheduler does not, so it never loaded one; waiting for its unload would keep the
    resource's finalizer, and so the resource, for ever)."""
    return error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT) or (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not found" in (error.details() or "")
    )


class ModelKind:
    kind = MODELS
    condition = "ModelReady"
    resend_on: frozenset[ControlPlaneEvent] = frozenset({CP.SEND_MODELS})

    def translate(self, resource: JsonObject) -> Translation[pb.Model]:
        return model_from_resource(resource)

    async def load(self, stub: pb_grpc.SchedulerAsyncStub, message: pb.Model) -> None:
        await stub.LoadModel(pb.LoadModelRequest(model=message), timeout=CALL_SECONDS)

    async def unload(self, stub: pb_grpc.SchedulerAsyncStub, name: str, namespace: str) -> bool:
        request = pb.UnloadModelRequest(
            model=pb.ModelReference(name=name), kubernetesMeta=pb.KubernetesMeta(namespace=namespace)
        )
        try:
            await stub.UnloadModel(request, timeout=CALL_SECONDS)
        except aio.AioRpcError as error:
            if _not_known(error):
                return True
            raise
        return False

    def unloaded(self, status: pb.ModelStatusResponse | None) -> bool:
        if status is None or not status.deleted:
            return False
        terminated = pb.ModelStatus.ModelTerminated
        return all(version.state.state == terminated for version in status.versions)

    def subscribe(self, stub: pb_grpc.SchedulerAsyncStub, subscriber: str) -> AsyncIterator[pb.ModelStatusResponse]:
        return _stream(stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=subscriber)))

    def name_of(self, status: pb.ModelStatusResponse) -> str:
        return status.modelName

    def observe(self, status: pb.ModelStatusResponse, namespace: str) -> Observed | None:
        if status.deleted or not status.versions:
            return None
        latest = max(status.versions, key=lambda version: version.version)
        meta = latest.kubernetesMeta
        if meta.namespace != namespace:
            return None
        state = latest.state
        name = pb.ModelStatus.ModelState.Name(state.state)
        ready = state.state == pb.ModelStatus.ModelAvailable
        message = state.reason or ("" if ready else name)
        return Observed(
            generation=meta.generation,
            ready=ready,
            reason=name,
            message=message,
            replicas=state.availableReplicas + state.unavailableReplicas,
            available_replicas=state.availableReplicas,
        )


class PipelineKind:
    kind = PIPELINES
    condition = "PipelineReady"
    resend_on: frozenset[ControlPlaneEvent] = frozenset({CP.SEND_PIPELINES})

    def translate(self, resource: JsonObject) -> Translation[pb.Pipeline]:
        return pipeline_from_resource(resource)

    async def load(self, stub: pb_grpc.SchedulerAsyncStub, message: pb.Pipeline) -> None:
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=message), timeout=CALL_SECONDS)

    async def unload(self, stub: pb_grpc.SchedulerAsyncStub, name: str, namespace: str) -> bool:
        try:
            await stub.UnloadPipeline(pb.UnloadPipelineRequest(name=name), timeout=CALL_SECONDS)
        except aio.AioRpcError as error:
            if _not_known(error):
                return True
            raise
        return True

    def unloaded(self, status: pb.PipelineStatusResponse | None) -> bool:
        return True

    def subscribe(self, stub: pb_grpc.SchedulerAsyncStub, subscriber: str) -> AsyncIterator[pb.PipelineStatusResponse]:
        return _stream(stub.SubscribePipelineStatus(pb.PipelineSubscriptionRequest(subscriberName=subscriber)))

    def name_of(self, status: pb.PipelineStatusResponse) -> str:
        return status.pipelineName

    def observe(self, status: pb.PipelineStatusResponse, namespace: str) -> Observed | None:
        if not status.versions:
            return None
        latest = max(status.versions, key=lambda version: version.pipeline.version)
        meta = latest.pipeline.kubernetesMeta
        if meta.namespace != namespace:
            return None
        state = latest.state
        name = pb.PipelineVersionState.PipelineStatus.Name(state.status)
        ready = state.status == pb.PipelineVersionState.PipelineReady
        return Observed(meta.generation, ready, name, state.reason or ("" if ready else name))


class ExperimentKind:
    kind = EXPERIMENTS
    condition = "ExperimentReady"
    resend_on: frozenset[ControlPlaneEvent] = frozenset({CP.SEND_EXPERIMENTS})

    def translate(self, resource: JsonObject) -> Translation[pb.Experiment]:
        return experiment_from_resource(resource)

    async def load(self, stub: pb_grpc.SchedulerAsyncStub, message: pb.Experiment) -> None:
        await stub.StartExperiment(pb.StartExperimentRequest(experiment=message), timeout=CALL_SECONDS)

    async def unload(self, stub: pb_grpc.SchedulerAsyncStub, name: str, namespace: str) -> bool:
        try:
            await stub.StopExperiment(pb.StopExperimentRequest(name=name), timeout=CALL_SECONDS)
        except aio.AioRpcError as error:
            if _not_known(error):
                return True
            raise
        return True

    def unloaded(self, status: pb.ExperimentStatusResponse | None) -> bool:
        return True

    def subscribe(
        self, stub: pb_grpc.SchedulerAsyncStub, subscriber: str
    ) -> AsyncIterator[pb.ExperimentStatusResponse]:
        return _stream(stub.SubscribeExperimentStatus(pb.ExperimentSubscriptionRequest(subscriberName=subscriber)))

    def name_of(self, status: pb.ExperimentStatusResponse) -> str:
        return status.experimentName

    def observe(self, status: pb.ExperimentStatusResponse, namespace: str) -> Observed | None:
        meta = status.kubernetesMeta
        if meta.namespace != namespace:
            return None
        ready = status.active and status.candidatesReady and status.mirrorReady
        if ready:
            reason = "ExperimentActive"
        elif not status.active:
            reason = "ExperimentInactive"
        else:
            reason = "CandidatesNotReady" if not status.candidatesReady else "MirrorNotReady"
        return Observed(meta.generation, ready, reason, status.statusDescription)
