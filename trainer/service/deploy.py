"""Optional auto-deploy of a freshly trained model: LoadModel on the scheduler (the Seldon Scheduler API).

The model is named after the design token, made a valid scheduler model name (lower-case letters, digits and
``-``, at most 63 characters; see modelplane/spec/names.py), and points at the run's folder in the model
store. Re-sending LoadModel with a changed URI makes a new version of the same model, so a retrained model
replaces the served one the way any other update does.
"""

from __future__ import annotations

import hashlib
import re

from generated.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from modelplane.addresses import Address
from modelplane.auth.client_token import ClientToken
from modelplane.spec.names import MAX_NAME_LENGTH
from modelplane.transport import TransportSecurity, open_channel

_INVALID = re.compile(r"[^a-z0-9-]+")


def model_name_for(design_token: str) -> str:
    """A scheduler model name for ``design_token``: invalid characters become ``-``; when anything changed, a
    short hash of the token keeps distinct tokens apart (``Iris_LR`` and ``iris-lr`` are different designs)."""
    name = _INVALID.sub("-", design_token.lower()).strip("-")
    if name == design_token and len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(design_token.encode()).hexdigest()[:8]
    stem = name[: MAX_NAME_LENGTH - len(digest) - 1].strip("-") or "model"
    return f"{stem}-{digest}"


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
