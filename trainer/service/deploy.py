"""Optional auto-deploy of a freshly trained model: LoadModel on the scheduler (the Seldon Scheduler API).

The model is named after the design token, made a valid scheduler model name (lower-case letters, digits and
``-``, at most 63 characters; see modelplane/spec/names.py), and points at the run's folder in the model
store. Re-sending LoadModel with a changed URI makes a new version of the same model, so a retrained model
replaces the served one the way any other update does.
"""

from __future__ import annotations

from generated.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from modelplane.addresses import Address
from modelplane.auth.client_token import ClientToken
from modelplane.transport import TransportSecurity, open_channel


class SchedulerDeployer:
    def __init__(
        self,
        scheduler: Address,
        security: TransportSecurity,
        requirements: tuple[str, ...],
        timeout: float = 15.0,
        *,
        storage_secret: str = "",
        token: ClientToken | None = None,
    ) -> None:
        self._storage_secret = storage_secret
        self._token = token
        self._scheduler = scheduler
        self._security = security
        self._requirements = requirements
        self._timeout = timeout

    async def deploy(self, name: str, storage_uri: str) -> None:
        """LoadModel; raises grpc.aio.AioRpcError or TransportError when the scheduler refuses or is away."""
        request = scheduler_pb2.LoadModelRequest(
            model=scheduler_pb2.Model(
                meta=scheduler_pb2.MetaData(name=name),
                modelSpec=scheduler_pb2.ModelSpec(uri=storage_uri, requirements=list(self._requirements)),
                deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=1),
            )
        )
        if self._storage_secret:
            # The agents read the model store's credentials from this secret (Seldon's storageSecretName).
            request.model.modelSpec.storageConfig.storageSecretName = self._storage_secret
        async with open_channel(self._scheduler, self._security, self._token) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await stub.LoadModel(request, timeout=self._timeout)
