"""The controller's flags for the agents of Server pods (AgentDefaults) and for scaling Servers down, with their
limits: what controller/servers/ uses where a ServerConfig says nothing.

- ``--agent-image``: the image of an agent container that names none (a made one, or a ServerConfig's agent
  container without ``image``). Kustomize's ``images:`` cannot rewrite a flag, so deploy/ copies the controller's
  own image into it (a ``replacements`` entry): the agents run the controller's modelplane version.
- ``--agent-scheduler``: where an agent dials the scheduler's agent listener (the scheduler's Service) when its
  container names none (a made agent, or a ServerConfig's agent container without ``--scheduler``).
- ``--agent-service-account``: the ServiceAccount of a Server's pods when the ServerConfig names none; it must
  exist in the Server's namespace and may ``get`` Secrets there (a Model's ``secretName``).
- ``--agent-args``, ``--agent-env``: more arguments and environment for a made agent (TLS flags,
  ``MODELPLANE_INSECURE``), as shell words. Flags the controller sets itself are refused here.
- ``--scale-down-drain-timeout``: how long a scale-down waits for the leaving replicas to hand their models on
  before the StatefulSet is made smaller anyway (each agent still drains on SIGTERM).

Single-valued on purpose (shell words, not repeated flags): the same value works as a flag, an environment
variable and a TOML setting (modelplane/config.py).
"""

from __future__ import annotations

import argparse
import re
import shlex

from controller.servers.agent_container import CONTROLLER_SET_AGENT_FLAGS, AgentDefaults
from modelplane.flag_types import peer_address, seconds

DEFAULT_AGENT_IMAGE = AgentDefaults.image
DEFAULT_AGENT_SCHEDULER = AgentDefaults.scheduler
DEFAULT_AGENT_SERVICE_ACCOUNT = AgentDefaults.service_account
DEFAULT_DRAIN_TIMEOUT_SECONDS = 600.0
MAX_DRAIN_TIMEOUT_SECONDS = 24 * 3600.0
MAX_IMAGE_CHARS = 512
MAX_AGENT_WORDS = 64  # --agent-args words, and --agent-env entries
MAX_WORD_CHARS = 1024
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FLAG = re.compile(r"--[a-z0-9][-a-z0-9]*(=.*)?", re.DOTALL)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else f"{text[:57]}...")


def image_reference(text: str) -> str:
    """A container image reference: not empty, no whitespace, at most MAX_IMAGE_CHARS."""
    if not text or len(text) > MAX_IMAGE_CHARS or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is not an image reference (1 to {MAX_IMAGE_CHARS} characters, no spaces)"
        )
    return text


def service_account_name(text: str) -> str:
    """A ServiceAccount name: a DNS subdomain (lower-case letters, digits, '-' and '.'), at most 253 characters."""
    if len(text) > 253 or not _SUBDOMAIN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is not a ServiceAccount name (lower-case letters, digits, '-' and '.', at most 253)"
        )
    return text


def _words(text: str, what: str) -> list[str]:
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{what}: cannot split {_shown(text)} into shell words ({error})") from None
    if len(words) > MAX_AGENT_WORDS:
        raise argparse.ArgumentTypeError(f"{what}: {len(words)} words; at most {MAX_AGENT_WORDS}")
    for word in words:
        if len(word) > MAX_WORD_CHARS or not word.isprintable():
            raise argparse.ArgumentTypeError(
                f"{what}: {_shown(word)} is longer than {MAX_WORD_CHARS} characters or not printable"
            )
    return words


def agent_args(text: str) -> tuple[str, ...]:
    """Shell words, each ``--flag`` or ``--flag=value`` (a value in its own word would be ambiguous), none of
    the flags the controller sets on a made agent."""
    words = _words(text, "--agent-args")
    for word in words:
        if not _FLAG.fullmatch(word):
            raise argparse.ArgumentTypeError(
                f"--agent-args: {_shown(word)} is not --flag or --flag=value (give a flag's value after '=')"
            )
        flag = word.split("=", 1)[0]
        if flag in CONTROLLER_SET_AGENT_FLAGS:
            raise argparse.ArgumentTypeError(
                f"--agent-args: {flag} is set by the controller for every agent (see --agent-scheduler, or the "
                "ServerConfig's own agent container)"
            )
    return tuple(words)


def agent_env(text: str) -> tuple[tuple[str, str], ...]:
    """Shell words, each NAME=VALUE with NAME an environment variable name; a name at most once."""
    entries: dict[str, str] = {}
    for word in _words(text, "--agent-env"):
        name, equals, value = word.partition("=")
        if not equals or not _ENV_NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(f"--agent-env: {_shown(word)} is not NAME=VALUE")
        if name in entries:
            raise argparse.ArgumentTypeError(f"--agent-env: {name} is given twice")
        entries[name] = value
    return tuple(entries.items())


def add_agent_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Server pods")
    group.add_argument(
        "--agent-image",
        type=image_reference,
        default=DEFAULT_AGENT_IMAGE,
        metavar="IMAGE",
        help=f"the image of an agent container that names none (default {DEFAULT_AGENT_IMAGE!r})",
    )
    group.add_argument(
        "--agent-scheduler",
        type=peer_address,
        default=DEFAULT_AGENT_SCHEDULER,
        metavar="HOST:PORT",
        help=f"the scheduler's agent listener, for agent containers that name none (default {DEFAULT_AGENT_SCHEDULER})",
    )
    group.add_argument(
        "--agent-service-account",
        type=service_account_name,
        default=DEFAULT_AGENT_SERVICE_ACCOUNT,
        metavar="NAME",
        help="the ServiceAccount of Server pods whose ServerConfig names none; it may get Secrets in its "
        f"namespace (default {DEFAULT_AGENT_SERVICE_ACCOUNT})",
    )
    group.add_argument(
        "--agent-args",
        type=agent_args,
        default=(),
        metavar="'--FLAG=VALUE ...'",
        help="more arguments for the agents the controller makes, as shell words (e.g. TLS flags)",
    )
    group.add_argument(
        "--agent-env",
        type=agent_env,
        default=(),
        metavar="'NAME=VALUE ...'",
        help="more environment for the agents the controller makes, as shell words",
    )
    group.add_argument(
        "--scale-down-drain-timeout",
        type=seconds(MAX_DRAIN_TIMEOUT_SECONDS),
        default=DEFAULT_DRAIN_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="how long a Server's scale-down waits for the leaving replicas to hand their models on before it "
        f"is made anyway (default {DEFAULT_DRAIN_TIMEOUT_SECONDS:g})",
    )


def agent_defaults_from(options: argparse.Namespace) -> AgentDefaults:
    return AgentDefaults(
        image=options.agent_image,
        scheduler=str(options.agent_scheduler),
        service_account=options.agent_service_account,
        extra_args=tuple(options.agent_args),
        extra_env=tuple(options.agent_env),
    )
