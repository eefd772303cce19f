"""Who may call what: the one table of every RPC and HTTP route every modelplane process serves, with the roles
that may call it and where its request names the resource it acts on.

Roles (a caller gets them from the policy file, policy.py):
- ``agent``: an inference-server replica's agent; AgentService only.
- ``gateway``: the routing stream (RoutingService) and the acknowledgements of model and pipeline updates
  (ModelStatusEvent, PipelineStatusEvent): an acknowledgement from anyone else would be a forgery.
- ``operator``: every mutation (load/unload models and pipelines, start/stop experiments, ServerNotify).
- ``viewer``: status and status subscriptions, and the routing table's stream (read-only; the dashboard's).
- ``controller``: a Kubernetes controller: what an operator may do, plus SubscribeControlPlane.
Roles add up: an operator that also watches what it loaded is given ``operator`` and ``viewer``.

Open without a credential, and why:
- health (gRPC health, /v2/health/*, /healthz): probes (kubelet, load balancers) carry no credentials, and they
  learn only "serving" or not.
- /metrics: Prometheus scrapes without credentials; metric labels never carry a secret (model and replica names).
Authenticated (any identity, no role): server reflection; the API's schema is public, but anonymous callers need
not learn which services listen.
Inference (the V2 protocol on the gateway and the agents' proxies): open unless the process's inference check is
on (``--auth-inference``), then any authenticated caller.

Domain code, so no grpc here: methods are gRPC full method names ("/package.Service/Method"), and a resource is
found in a request message by field paths (protobuf reflection), checked against the descriptors by the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "GRPC_METHODS",
    "HTTP_ROUTES",
    "Access",
    "Resource",
    "ResourceFields",
    "Role",
    "Rule",
    "http_route_key",
    "rule_for_grpc",
]


class Role(StrEnum):
    AGENT = "agent"
    GATEWAY = "gateway"
    OPERATOR = "operator"
    VIEWER = "viewer"
    CONTROLLER = "controller"


class Access(StrEnum):
    """What a call needs, before roles."""

    OPEN = "open"  # nothing: health and metrics
    INFERENCE = "inference"  # open, or any authenticated caller when the inference check is on
    AUTHENTICATED = "authenticated"  # any authenticated caller, whatever its roles
    ROLES = "roles"  # one of the rule's roles


@dataclass(frozen=True, slots=True)
class ResourceFields:
    """Where a request names what it acts on: dotted field paths into the request message ("" when it does not
    say). ``kind`` is what the name names (model, pipeline, experiment, server), for messages."""

    kind: str
    name: str = ""
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class Resource:
    """What one request acts on, read from it with its ResourceFields: "" where the request does not say."""

    kind: str = ""
    name: str = ""
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    access: Access
    roles: frozenset[Role] = frozenset()
    resource: ResourceFields | None = None

    def describe_roles(self) -> str:
        return " or ".join(sorted(self.roles))


def _roles(*roles: Role, resource: ResourceFields | None = None) -> Rule:
    return Rule(Access.ROLES, frozenset(roles), resource)


_OPEN = Rule(Access.OPEN)
_INFERENCE = Rule(Access.INFERENCE)
_AUTHENTICATED = Rule(Access.AUTHENTICATED)

_MUTATION = (Role.OPERATOR, Role.CONTROLLER)
_K8S = "kubernetesMeta.namespace"

_SCHEDULER = "/seldon.mlops.scheduler.Scheduler/"
_ROUTING = "/mlops.routing.v1.RoutingService/"
_V2 = "/inference.GRPCInferenceService/"

# Every RPC of every service of every process (scheduler: Scheduler, RoutingService, AgentService, health,
# reflection; gateway: the V2 GRPCInferenceService; agent proxy: the same V2 service, forwarded). A method not
# here is refused to everyone, and tests/shared/test_auth_rpc_table.py fails for every RPC the descriptors have and
# this table lacks.
GRPC_METHODS: Mapping[str, Rule] = {
    # Mutations
    _SCHEDULER + "LoadModel": _roles(
        *_MUTATION, resource=ResourceFields("model", "model.meta.name", "model.meta." + _K8S)
    ),
    _SCHEDULER + "UnloadModel": _roles(*_MUTATION, resource=ResourceFields("model", "model.name", _K8S)),
    _SCHEDULER + "LoadPipeline": _roles(
        *_MUTATION, resource=ResourceFields("pipeline", "pipeline.name", "pipeline." + _K8S)
    ),
    _SCHEDULER + "UnloadPipeline": _roles(*_MUTATION, resource=ResourceFields("pipeline", "name")),
    _SCHEDULER + "StartExperiment": _roles(
        *_MUTATION, resource=ResourceFields("experiment", "experiment.name", "experiment." + _K8S)
    ),
    _SCHEDULER + "StopExperiment": _roles(*_MUTATION, resource=ResourceFields("experiment", "name")),
    # Names several servers at once: only an unlimited grant covers it.
    _SCHEDULER + "ServerNotify": _roles(*_MUTATION, resource=ResourceFields("server")),
    # Status and subscriptions
    _SCHEDULER + "ServerStatus": _roles(Role.VIEWER, resource=ResourceFields("server", "name")),
    _SCHEDULER + "ModelStatus": _roles(Role.VIEWER, resource=ResourceFields("model", "model.name")),
    _SCHEDULER + "PipelineStatus": _roles(Role.VIEWER, resource=ResourceFields("pipeline", "name")),
    _SCHEDULER + "ExperimentStatus": _roles(Role.VIEWER, resource=ResourceFields("experiment", "name")),
    _SCHEDULER + "SchedulerStatus": _roles(Role.VIEWER),
    _SCHEDULER + "SubscribeServerStatus": _roles(Role.VIEWER),
    _SCHEDULER + "SubscribeModelStatus": _roles(Role.VIEWER),
    _SCHEDULER + "SubscribeExperimentStatus": _roles(Role.VIEWER),
    _SCHEDULER + "SubscribePipelineStatus": _roles(Role.VIEWER),
    _SCHEDULER + "SubscribeControlPlane": _roles(Role.CONTROLLER),
    # Acknowledgements of the updates a gateway was sent
    _SCHEDULER + "ModelStatusEvent": _roles(Role.GATEWAY, resource=ResourceFields("model", "update.model")),
    _SCHEDULER + "PipelineStatusEvent": _roles(Role.GATEWAY, resource=ResourceFields("pipeline", "update.pipeline")),
    # The routing stream
    _ROUTING + "ModelEndpoints": _roles(Role.GATEWAY),
    # Read-only, and a viewer's too: the dashboard shows experiments' weights, which only the routing table carries
    # (the Scheduler API's experiment status has none). A watcher that never acknowledges changes no experiment's
    # state: one is active while any connected gateway routes it.
    _ROUTING + "WatchRoutes": _roles(Role.GATEWAY, Role.VIEWER),
    _ROUTING + "ExperimentRouted": _roles(Role.GATEWAY),
    # Agents
    "/mlops.agent.v1.AgentService/Session": _roles(Role.AGENT),
    # Standard services
    "/grpc.health.v1.Health/Check": _OPEN,
    "/grpc.health.v1.Health/Watch": _OPEN,
    "/grpc.health.v1.Health/List": _OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _AUTHENTICATED,
    # V2 inference (gateway --grpc-listen, agent proxy)
    _V2 + "ServerLive": _OPEN,
    _V2 + "ServerReady": _OPEN,
    _V2 + "ServerMetadata": _INFERENCE,
    _V2 + "ModelReady": _INFERENCE,
    _V2 + "ModelMetadata": _INFERENCE,
    _V2 + "ModelInfer": _INFERENCE,
}

# Every HTTP route of every process, as "METHOD /canonical/{path}" (aiohttp's resource.canonical; "*" for a route
# that takes every method). tests/shared/test_auth_rpc_table.py checks every route of every app against this.
HTTP_ROUTES: Mapping[str, Rule] = {
    # gateway REST (gateway/edges/rest_app.py)
    "POST /v2/models/{name}/versions/{version}/infer": _INFERENCE,
    "POST /v2/models/{name}/infer": _INFERENCE,
    "GET /v2/models/{name}/versions/{version}/ready": _INFERENCE,
    "GET /v2/models/{name}/ready": _INFERENCE,
    "GET /v2/models/{name}/versions/{version}": _INFERENCE,
    "GET /v2/models/{name}": _INFERENCE,
    "GET /v2/models/{name}/versions/{version}/config": _INFERENCE,  # a model's configuration, as its metadata
    "GET /v2/models/{name}/config": _INFERENCE,
    "POST /v2/pipelines/{name}/infer": _INFERENCE,
    "GET /v2/pipelines/{name}/ready": _INFERENCE,
    "GET /v2/health/live": _OPEN,
    "GET /v2/health/ready": _OPEN,
    "GET /v2": _INFERENCE,
    "GET /metrics": _OPEN,
    # agent proxy REST (agent/inference_proxy.py)
    "* /v2/models/{name}/versions/{version}{rest}": _INFERENCE,
    "* /v2/models/{name}{rest}": _INFERENCE,
    "GET /v2/health/{what}": _OPEN,
    # trainer status API (trainer/service/status_api.py)
    "GET /healthz": _OPEN,
    "GET /runs": _roles(Role.VIEWER),
    "GET /runs/{run_id}": _roles(Role.VIEWER),
    # registry REST (registry/api/routes.py): reading is a viewer's, every change (train and deploy included) an
    # operator's, as for the scheduler's API; its schema, like gRPC reflection, to any authenticated caller.
    "GET /openapi.json": _AUTHENTICATED,
    "GET /experiments": _roles(Role.VIEWER),
    "GET /experiments/{name}": _roles(Role.VIEWER),
    "PUT /experiments/{name}": _roles(Role.OPERATOR),
    "DELETE /experiments/{name}": _roles(Role.OPERATOR),
    "GET /experiments/{name}/splits": _roles(Role.VIEWER),
    "POST /experiments/{name}/splits": _roles(Role.OPERATOR),
    "GET /experiments/{name}/splits/{split}": _roles(Role.VIEWER),
    "GET /experiments/{name}/splits/{split}/status": _roles(Role.VIEWER),
    "DELETE /experiments/{name}/splits/{split}": _roles(Role.OPERATOR),
    "POST /experiments/{name}/models": _roles(Role.OPERATOR),
    "GET /experiments/{name}/models": _roles(Role.VIEWER),
    "GET /experiments/{name}/models/{model}": _roles(Role.VIEWER),
    "DELETE /experiments/{name}/models/{model}": _roles(Role.OPERATOR),
    "GET /experiments/{name}/models/{model}/status": _roles(Role.VIEWER),
    "POST /experiments/{name}/models/{model}/split": _roles(Role.OPERATOR),
    "DELETE /experiments/{name}/models/{model}/split": _roles(Role.OPERATOR),
    "PUT /experiments/{name}/models/{model}/directives": _roles(Role.OPERATOR),
    "POST /experiments/{name}/models/{model}/train": _roles(Role.OPERATOR),
    "POST /experiments/{name}/models/{model}/deploy": _roles(Role.OPERATOR),
    "GET /experiments/{name}/models/{model}/versions": _roles(Role.VIEWER),
    "GET /experiments/{name}/models/{model}/versions/{version}": _roles(Role.VIEWER),
    "GET /datasets": _roles(Role.VIEWER),
    "GET /datasets/{dataset}": _roles(Role.VIEWER),
    # Aliases and promotions: moving one deploys and shifts traffic, an operator's like deploy.
    "GET /experiments/{name}/aliases": _roles(Role.VIEWER),
    "GET /experiments/{name}/aliases/{alias}": _roles(Role.VIEWER),
    "PUT /experiments/{name}/aliases/{alias}": _roles(Role.OPERATOR),
    "DELETE /experiments/{name}/aliases/{alias}": _roles(Role.OPERATOR),
    "GET /experiments/{name}/promotion": _roles(Role.VIEWER),
    "POST /experiments/{name}/promotion/canary": _roles(Role.OPERATOR),
    "POST /experiments/{name}/promotion/finish": _roles(Role.OPERATOR),
    "POST /experiments/{name}/promotion/abort": _roles(Role.OPERATOR),
}

# aiohttp adds a HEAD route next to every GET one; it answers what GET answers, without the body.
_SAME_AS = {"HEAD": "GET"}


def rule_for_grpc(method: str) -> Rule | None:
    return GRPC_METHODS.get(method)


def http_route_key(method: str, canonical: str) -> str:
    return f"{_SAME_AS.get(method, method)} {canonical}"
