"""The Deployer port over the scheduler's gRPC API (seed 003's Scheduler service): LoadModel for the version's
folder, then the scheduler's status stream followed until the model is available (DEPLOYED) or failed (the
scheduler's reason). The model is served under a name made of its experiment and id (registry/serving_names.py),
or the name the request gives (an alias: the experiment's stable name), and a version loaded under a name already
served replaces the served one the way any changed LoadModel does: the old keeps answering until the new is
available.

An adapter at the registry's edge (it speaks gRPC); the service layer sees only DeployRequest and DeployError.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Final

import grpc

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.auth.client_token import ClientToken
from modelplane.transport import TransportError, TransportSecurity, open_channel
from registry.ports import DeployError, DeployRequest
from registry.serving_names import model_serving_name

AVAILABLE: Final = pb.ModelStatus.ModelState.Value("ModelAvailable")
FAILED: Final = frozenset(pb.ModelStatus.ModelState.Value(name) for name in ("ModelFailed", "ScheduleFailed"))
SUBSCRIBER: Final = "modelplane-registry"
_INVALID: Final = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class SchedulerDeployer:
    scheduler: Address
    security: TransportSecurity
    requirements: tuple[str, ...] = ("sklearn",)
    timeout_seconds: float = 300.0  # until the model is available: a first load may start an inference server
    token: ClientToken | None = None  # presented with every call (modelplane/auth_flags.py: a file or the env)
    # storageSecretName: the agents' secret holding the model store's S3 settings (an s3:// artifact); "": none,
    # an agent then uses its own AWS_* environment.
    storage_secret: str = ""

    async def deploy(self, request: DeployRequest) -> str:
        name = request.serving_name or model_serving_name(request.experiment, request.model_id)
        model = pb.Model(
            meta=pb.MetaData(name=name),
            modelSpec=pb.ModelSpec(uri=request.artifact_url, requirements=list(self.requirements)),
            deploymentSpec=pb.DeploymentSpec(replicas=1),
        )
        if self.storage_secret:
            model.modelSpec.storageConfig.storageSecretName = self.storage_secret
        try:
            async with open_channel(self.scheduler, self.security, self.token) as channel:
                stub = pb_grpc.SchedulerStub(channel)
                # Subscribed first: the stream sends every model's current state, then changes, so nothing
                # between the LoadModel and the first read is missed.
                stream = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=SUBSCRIBER))
                try:
                    await stub.LoadModel(pb.LoadModelRequest(model=model), timeout=30)
                    async with asyncio.timeout(self.timeout_seconds):
                        await _until_available(stream, name, request.artifact_url)
                finally:
                    stream.cancel()
        except TimeoutError:
            raise DeployError(f"model {name} was not available within {self.timeout_seconds:g} s") from None
        except (grpc.aio.AioRpcError, TransportError) as error:
            raise DeployError(scheduler_failure(self.scheduler, error)) from None
        return name


def scheduler_failure(scheduler: Address, error: grpc.aio.AioRpcError | TransportError) -> str:
    """A failed call to the scheduler in words, the same from every registry adapter that calls it."""
    if isinstance(error, TransportError):
        return f"cannot reach the scheduler at {scheduler}: {error}"
    return f"the scheduler at {scheduler}: {error.code().name}: {error.details()}"


StatusStream = grpc.aio.UnaryStreamCall[pb.ModelSubscriptionRequest, pb.ModelStatusResponse]


async def _until_available(stream: StatusStream, name: str, uri: str) -> None:
    while True:
        message = await stream.read()
        if not isinstance(message, pb.ModelStatusResponse):
            raise DeployError("the scheduler closed its status stream before the model was available")
        if message.modelName != name or not message.versions:
            continue
        newest = message.versions[-1]
        if newest.HasField("modelDefn") and newest.modelDefn.modelSpec.uri != uri:
            continue  # an earlier version of the same name (a redeploy): this LoadModel's is not reported yet
        state = newest.state
        if state.state == AVAILABLE:
            return
        if state.state in FAILED:
            shown = pb.ModelStatus.ModelState.Name(state.state)
            raise DeployError(f"model {name} is {shown}: {state.reason or 'no reason given'}")
