"""The ``modelplane agent`` container of a Server's pods: completed from the ServerConfig's, or made for it.

A ServerConfig normally holds the agent container beside the inference server (as Seldon's do, and as
deploy/'s ServerConfigs do): how the agent reaches its server (``--server-kind``, ``--server-url``,
``--models-dir``) is the ServerConfig's to say. The controller adds what differs per Server and per pod:

- ``--server-name`` (the Server's name) and ``--pod-name=$(POD_NAME)``: the agent takes its replica index from
  the pod's StatefulSet ordinal (``mlserver-3`` -> 3), so one pod template serves every replica;
- ``--capabilities`` when the Server sets ``capabilities`` (they replace the ServerConfig's) or
  ``extraCapabilities`` (added to the ServerConfig's agent's, else to the server kind's defaults);
- ``--k8s-secrets --k8s-in-cluster --k8s-namespace=$(POD_NAMESPACE)``: the agent reads a Model's ``secretName``
  from a Secret in its own namespace with the pod's ServiceAccount, so no credential passes the scheduler;
- ``POD_NAME`` and ``POD_NAMESPACE`` from the downward API; a proxy that listens beyond the pod
  (``--proxy-http``/``--proxy-grpc`` on 0.0.0.0 unless given) and is advertised at the pod's IP unless the
  ServerConfig says where; the modelplane image and the scheduler's agent address (the controller's
  ``--agent-image``, ``--agent-scheduler``) when the container names none.

Flags the controller owns replace the ServerConfig's own values for them (never two values of one flag).

A ServerConfig without an agent container gets one made from its inference server container: the kind from
the container's name or image (``mlserver``, ``triton``), the server's URL on localhost from its named ports
(``http``/``server-http``, ``grpc``/``server-grpc``) or the kind's defaults, and the models folder where the
server container mounts the models volume (the first volumeClaimTemplate's name, else the volume ``models``):
the server must use that mount as its model repository. The agent mounts it at the same path, so a model
folder's paths mean the same in both containers; its cache and work files go to an emptyDir of its own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from controller.servers.errors import ServerSpecError
from modelplane.spec.server_kinds import DEFAULT_CAPABILITIES, SERVER_KINDS
from modelplane.whole_numbers import parse_whole_number

JsonObject = dict[str, Any]

AGENT_CONTAINER = "agent"
AGENT_WORK_VOLUME = "agent-work"
AGENT_WORK_DIR = "/var/lib/modelplane/agent"
DEFAULT_PROXY_HTTP_PORT = 9100
DEFAULT_PROXY_GRPC_PORT = 9500
# The agent's defaults (agent/settings.py): its proxy on loopback, which other pods cannot reach.
_SERVER_PORTS = {"mlserver": (8080, 8081), "triton": (8000, 8001)}
# Flags whose value the controller decides; a value the ServerConfig gives for them is dropped.
_OWNED_FLAGS = ("--server-name", "--replica-idx", "--pod-name", "--k8s-namespace")
_OWNED_SWITCHES = ("--k8s-secrets", "--k8s-in-cluster")
# Every flag the controller sets on an agent it makes (the owned ones, and those of _made_agent's arguments):
# the controller's --agent-args may not repeat them (argparse would keep the last of two values silently).
CONTROLLER_SET_AGENT_FLAGS = frozenset(
    {
        *_OWNED_FLAGS,
        *_OWNED_SWITCHES,
        "--capabilities",
        "--scheduler",
        "--server-kind",
        "--server-url",
        "--server-grpc",
        "--models-dir",
        "--cache-dir",
        "--work-dir",
        "--proxy-http",
        "--proxy-grpc",
    }
)


@dataclass(frozen=True)
class AgentDefaults:
    """What the controller knows about agents that no ServerConfig says: the controller's own settings
    (controller/agent_flags.py has their flags and limits)."""

    image: str = "modelplane"  # the modelplane image (its entrypoint is ``modelplane``)
    scheduler: str = "modelplane-scheduler:9005"  # the scheduler's agent address, host:port
    service_account: str = "modelplane-agent"  # may get Secrets in its namespace (a Model's secretName)
    # Further agent arguments and environment for a made agent container (e.g. TLS flags, MODELPLANE_INSECURE).
    extra_args: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AgentPorts:
    """Where the agent's inference proxy listens in the pod: what the headless Service publishes."""

    http: int
    grpc: int


def _flag_values(args: list[str], flag: str) -> list[str]:
    values = []
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            values.append(args[index + 1])
        elif arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1 :])
    return values


def _flag_value(args: list[str], flag: str) -> str | None:
    values = _flag_values(args, flag)
    return values[-1] if values else None  # argparse keeps the last


def _without(args: list[str], flags: tuple[str, ...], switches: tuple[str, ...]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in flags:
            skip = True
        elif arg in switches or any(arg.startswith(flag + "=") for flag in flags):
            continue
        else:
            kept.append(arg)
    return kept


def _env_value(container: JsonObject, *names: str) -> str | None:
    for entry in container.get("env") or []:
        if isinstance(entry, dict) and entry.get("name") in names and isinstance(entry.get("value"), str):
            return str(entry["value"])
    return None


def _without_env(container: JsonObject, names: tuple[str, ...]) -> list[Any]:
    return [e for e in container.get("env") or [] if not (isinstance(e, dict) and e.get("name") in names)]


def _has_env(container: JsonObject, name: str) -> bool:
    return any(isinstance(e, dict) and e.get("name") == name for e in container.get("env") or [])


def _setting(container: JsonObject, flag: str) -> str | None:
    """An agent setting as its container gives it: the flag, else its environment variable (modelplane/config.py)."""
    key = flag.removeprefix("--").replace("-", "_").upper()
    return _flag_value(_strings(container.get("args")), flag) or _env_value(
        container, f"MODELPLANE_AGENT_{key}", f"MODELPLANE_{key}"
    )


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ServerSpecError("a container's args must be a list of strings")
    return list(value)


def port_of(address: str | None, default: int, flag: str) -> int:
    if address is None:
        return default
    port = parse_whole_number(address.rpartition(":")[2])
    if port is None or not 0 < port < 65536:
        raise ServerSpecError(f"the agent's {flag}={address!r} names no port from 1 to 65535")
    return port


def capabilities_for(agent: JsonObject, capabilities: list[str] | None, extra: list[str] | None) -> str | None:
    """The ``--capabilities`` the Server asks for, or None when it leaves the ServerConfig's as they are."""
    if capabilities:
        chosen = list(capabilities)
    elif extra:
        kind = _setting(agent, "--server-kind") or "mlserver"
        own = _setting(agent, "--capabilities") or DEFAULT_CAPABILITIES.get(kind, "")
        chosen = [c.strip() for c in own.split(",") if c.strip()] + list(extra)
    else:
        return None
    unique = list(dict.fromkeys(c.strip() for c in chosen if c.strip()))
    for name in unique:
        if "," in name:
            raise ServerSpecError(f"capability {name!r} holds a comma, which separates capabilities")
    if not unique:
        raise ServerSpecError("spec.capabilities names no capability")
    return ",".join(unique)


def complete_agent(
    pod: JsonObject,
    *,
    server_name: str,
    capabilities: str | None,
    claim_names: list[str],
    defaults: AgentDefaults,
) -> tuple[JsonObject, AgentPorts]:
    """``pod`` (a merged PodSpec) with its agent container completed (or made); and the proxy's ports."""
    pod = copy.deepcopy(pod)
    containers = pod.setdefault("containers", [])
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise ServerSpecError("podSpec.containers must be a list of containers")
    agent = next((c for c in containers if c.get("name") == AGENT_CONTAINER), None)
    if agent is None:
        agent = _made_agent(pod, containers, claim_names, defaults)
        containers.append(agent)
    if not agent.get("image"):
        agent["image"] = defaults.image
    args = _without(_strings(agent.get("args")), _OWNED_FLAGS, _OWNED_SWITCHES)
    if capabilities is not None:
        args = _without(args, ("--capabilities",), ())
        agent["env"] = [
            e
            for e in agent.get("env") or []
            if not (
                isinstance(e, dict) and e.get("name") in ("MODELPLANE_AGENT_CAPABILITIES", "MODELPLANE_CAPABILITIES")
            )
        ]
    if args and args[0] != "agent" and not agent.get("command"):
        raise ServerSpecError(f"the agent container's args must start with 'agent' (got {args[0]!r})")
    if not args:
        args = ["agent"]
    for flag, port in (("--proxy-http", DEFAULT_PROXY_HTTP_PORT), ("--proxy-grpc", DEFAULT_PROXY_GRPC_PORT)):
        if _setting(agent, flag) is None:
            args.append(f"{flag}=0.0.0.0:{port}")
    if _setting(agent, "--scheduler") is None:  # the agent's own default is loopback: no scheduler in its pod
        args.append(f"--scheduler={defaults.scheduler}")
    args += [
        f"--server-name={server_name}",
        "--pod-name=$(POD_NAME)",
        "--k8s-secrets",
        "--k8s-in-cluster",
        "--k8s-namespace=$(POD_NAMESPACE)",
    ]
    if capabilities is not None:
        args.append(f"--capabilities={capabilities}")
    agent["args"] = args
    env = [
        e
        for e in agent.get("env") or []
        if not (isinstance(e, dict) and e.get("name") in ("POD_NAME", "POD_NAMESPACE"))
    ]
    # First: $(POD_NAME) in args and later env entries expand only variables defined before them.
    env[:0] = [_field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace")]
    agent["env"] = env
    if _setting(agent, "--advertise-host") is None and not _has_env(agent, "MODELPLANE_AGENT_ADVERTISE_HOST"):
        env.append(_field_env("MODELPLANE_AGENT_ADVERTISE_HOST", "status.podIP"))
    ports = AgentPorts(
        port_of(_setting(agent, "--proxy-http"), DEFAULT_PROXY_HTTP_PORT, "--proxy-http"),
        port_of(_setting(agent, "--proxy-grpc"), DEFAULT_PROXY_GRPC_PORT, "--proxy-grpc"),
    )
    if not pod.get("serviceAccountName"):
        pod["serviceAccountName"] = defaults.service_account
    return pod, ports


def _field_env(name: str, path: str) -> JsonObject:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _server_kind(container: JsonObject) -> str:
    name = str(container.get("name", ""))
    if name in SERVER_KINDS:
        return name
    image = str(container.get("image", ""))
    for kind in SERVER_KINDS:
        if kind in image:
            return kind
    raise ServerSpecError(
        f"cannot tell which inference server container {name!r} runs (name it 'mlserver' or 'triton', or add an "
        "'agent' container to the ServerConfig saying --server-kind)"
    )


def _named_port(container: JsonObject, names: tuple[str, ...], default: int) -> int:
    for port in container.get("ports") or []:
        if isinstance(port, dict) and port.get("name") in names and isinstance(port.get("containerPort"), int):
            return int(port["containerPort"])
    return default


def _made_agent(
    pod: JsonObject, containers: list[JsonObject], claim_names: list[str], defaults: AgentDefaults
) -> JsonObject:
    servers = [c for c in containers if c.get("name") != AGENT_CONTAINER]
    if len(servers) > 1:
        servers = [c for c in servers if c.get("name") in SERVER_KINDS]
    if len(servers) != 1:
        raise ServerSpecError(
            "the ServerConfig's pod has no 'agent' container and no single inference server container to make one "
            "for (name it 'mlserver' or 'triton')"
        )
    server = servers[0]
    kind = _server_kind(server)
    http_default, grpc_default = _SERVER_PORTS[kind]
    http = _named_port(server, ("http", "server-http"), http_default)
    grpc = _named_port(server, ("grpc", "server-grpc"), grpc_default)
    models_volume = claim_names[0] if claim_names else "models"
    mounts = [m for m in server.get("volumeMounts") or [] if isinstance(m, dict)]
    mount = next((m for m in mounts if m.get("name") == models_volume), None)
    if mount is None or not isinstance(mount.get("mountPath"), str):
        raise ServerSpecError(
            f"the inference server container {server.get('name')!r} does not mount the models volume "
            f"{models_volume!r}: the agent writes models where the server reads them"
        )
    models_dir = str(mount["mountPath"])
    env: list[JsonObject] = [{"name": name, "value": value} for name, value in defaults.extra_env]
    requests = (server.get("resources") or {}).get("requests") or {}
    if "memory" in requests:  # memory for models: what the server's container asks for, in bytes
        env.append(
            {
                "name": "MODELPLANE_AGENT_MEMORY",
                "valueFrom": {"resourceFieldRef": {"containerName": server["name"], "resource": "requests.memory"}},
            }
        )
    volumes = pod.setdefault("volumes", [])
    if not any(isinstance(v, dict) and v.get("name") == AGENT_WORK_VOLUME for v in volumes):
        volumes.append({"name": AGENT_WORK_VOLUME, "emptyDir": {}})
    if models_volume not in claim_names and not any(
        isinstance(v, dict) and v.get("name") == models_volume for v in volumes
    ):
        volumes.append({"name": models_volume, "emptyDir": {}})
    return {
        "name": AGENT_CONTAINER,
        "image": defaults.image,
        "args": [
            "agent",
            f"--scheduler={defaults.scheduler}",
            f"--server-kind={kind}",
            f"--server-url=http://127.0.0.1:{http}",
            f"--server-grpc=127.0.0.1:{grpc}",
            f"--models-dir={models_dir}",
            f"--cache-dir={AGENT_WORK_DIR}/cache",
            f"--work-dir={AGENT_WORK_DIR}",
            f"--proxy-http=0.0.0.0:{DEFAULT_PROXY_HTTP_PORT}",
            f"--proxy-grpc=0.0.0.0:{DEFAULT_PROXY_GRPC_PORT}",
            *defaults.extra_args,
        ],
        "env": env,
        "ports": [
            {"name": "proxy-http", "containerPort": DEFAULT_PROXY_HTTP_PORT},
            {"name": "proxy-grpc", "containerPort": DEFAULT_PROXY_GRPC_PORT},
        ],
        "volumeMounts": [
            {"name": models_volume, "mountPath": models_dir},
            {"name": AGENT_WORK_VOLUME, "mountPath": AGENT_WORK_DIR},
        ],
    }
