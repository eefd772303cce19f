"""Where the Kubernetes API server is, and one ``kubernetes.aio`` client for it: the one owner of that knowledge.

Every process that talks to Kubernetes (the controller, the scheduler's leader election, the agent reading a
Model's Secret, the trainer's Job launcher) takes the same ``--k8s-*`` flags and opens its client here. The
client is the official one's asyncio flavour (``kubernetes.aio``, in the ``kubernetes`` package): no threads,
typed models, and the same REST code path against a real cluster and the tests' fake API.

Precedence: ``--k8s-api URL`` (an explicit server, with ``--k8s-token-file`` and ``--k8s-ca-file``; the tests'
fake is one), then ``--k8s-in-cluster`` (the pod's service account), then a kubeconfig (``--k8s-kubeconfig`` or
``$KUBECONFIG`` or ``~/.kube/config``, with ``--k8s-context``).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelplane.auth.client_token import ClientToken, ClientTokenError
from modelplane.secret_inputs import read_secret_file

if TYPE_CHECKING:  # the client itself is imported where a connection is made: it takes a second to import, and
    # every command's flags (the scheduler's --k8s-*) are built from this module
    from kubernetes.aio import client as k8s

__all__ = [
    "KubernetesConfigError",
    "KubernetesConnection",
    "add_kubernetes_flags",
    "connection_from_flags",
    "kubernetes_client",
]


class KubernetesConfigError(ValueError):
    """No usable way to reach the API server; the message says what was tried."""


@dataclass(frozen=True)
class KubernetesConnection:
    """Where the API server is. Precedence: ``host`` (an explicit URL), then in-cluster, then kubeconfig."""

    host: str | None = None  # e.g. https://kubernetes.default.svc, or the tests' fake at http://127.0.0.1:PORT
    token: str | None = None  # bearer token sent to ``host``
    # Where ``token`` was read: followed as it changes (a projected ServiceAccount token is replaced about hourly
    # and the old one stops being accepted; a client that lives for days must present the new one).
    token_file: Path | None = None
    ca_cert: str | None = None  # CA bundle file for ``host``
    verify_ssl: bool = True
    in_cluster: bool = False  # the pod's service-account token and the KUBERNETES_SERVICE_* environment
    kubeconfig: str | None = None  # None: $KUBECONFIG or ~/.kube/config
    context: str | None = None

    def __repr__(self) -> str:  # the token never reaches a log line
        shown = "<set>" if self.token else None
        return (
            f"KubernetesConnection(host={self.host!r}, token={shown}, in_cluster={self.in_cluster}, "
            f"kubeconfig={self.kubeconfig!r}, context={self.context!r})"
        )


async def configuration_for(connection: KubernetesConnection) -> k8s.Configuration:
    from kubernetes.aio import client as k8s  # noqa: PLC0415 - see the imports
    from kubernetes.aio import config as k8s_config  # noqa: PLC0415

    configuration = k8s.Configuration()
    try:
        if connection.host:
            configuration.host = connection.host
            configuration.verify_ssl = connection.verify_ssl
            configuration.ssl_ca_cert = connection.ca_cert
            if connection.token:
                configuration.api_key = {"BearerToken": connection.token}
                configuration.api_key_prefix = {"BearerToken": "Bearer"}
            if connection.token_file is not None:
                _follow_token_file(configuration, connection.token_file)
        elif connection.in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=connection.kubeconfig, context=connection.context, client_configuration=configuration
            )
    except k8s_config.ConfigException as error:
        raise KubernetesConfigError(f"no Kubernetes configuration: {error}") from error
    return configuration


def _follow_token_file(configuration: k8s.Configuration, path: Path) -> None:
    """Before each request the client asks ``refresh_api_key_hook`` (as its in-cluster loader does for the pod's
    token): the file is stat'ed and read again only when it changed (modelplane/auth/client_token.py)."""
    try:
        token = ClientToken.from_file(path)
    except ClientTokenError as error:
        raise KubernetesConfigError(f"--k8s-token-file: {error}") from None

    def present(configured: k8s.Configuration) -> None:
        configured.api_key = {"BearerToken": token.current()}
        configured.api_key_prefix = {"BearerToken": "Bearer"}

    configuration.refresh_api_key_hook = present  # type: ignore[assignment]  # typed by its None default


@contextlib.asynccontextmanager
async def kubernetes_client(connection: KubernetesConnection) -> AsyncIterator[k8s.ApiClient]:
    """An API client for ``connection``, closed on exit. Raises KubernetesConfigError when none can be made."""
    from kubernetes.aio import client as k8s  # noqa: PLC0415 - see the imports

    api = k8s.ApiClient(await configuration_for(connection))
    try:
        yield api
    finally:
        await api.close()  # type: ignore[no-untyped-call]


def add_kubernetes_flags(parser: argparse.ArgumentParser, *, title: str = "kubernetes API") -> None:
    group = parser.add_argument_group(title)
    group.add_argument(
        "--k8s-api", metavar="URL", help="the API server (default: in-cluster with --k8s-in-cluster, else kubeconfig)"
    )
    group.add_argument(
        "--k8s-token-file",
        type=Path,
        metavar="FILE",
        help="a bearer token for --k8s-api, read from a file (and again whenever the file changes)",
    )
    group.add_argument("--k8s-ca-file", metavar="FILE", help="the CA bundle that signed --k8s-api's certificate")
    group.add_argument("--k8s-in-cluster", action="store_true", help="use the pod's service account")
    group.add_argument("--k8s-kubeconfig", metavar="FILE", help="a kubeconfig (default $KUBECONFIG, ~/.kube/config)")
    group.add_argument("--k8s-context", metavar="NAME", help="the kubeconfig context (default: its current one)")


def connection_from_flags(options: argparse.Namespace) -> KubernetesConnection:
    """The connection the ``--k8s-*`` flags describe. Raises SecretFileError for an unreadable token file."""
    token_file: Path | None = getattr(options, "k8s_token_file", None)
    return KubernetesConnection(
        host=options.k8s_api,
        token=read_secret_file(token_file, "--k8s-token-file").strip() if token_file is not None else None,
        token_file=token_file,
        ca_cert=getattr(options, "k8s_ca_file", None),
        in_cluster=options.k8s_in_cluster,
        kubeconfig=getattr(options, "k8s_kubeconfig", None),
        context=getattr(options, "k8s_context", None),
    )
