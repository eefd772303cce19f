"""Command-line flags for authentication and roles, shared by every serving process, and for the identity a
client presents; next to transport_flags.py, which they complete.

Rules (checked at start):
- Authorisation (roles) is on when --auth-policy is given. A token file or token review needs a policy: a token
  alone proves who calls, not what it may do.
- Token review (--auth-token-review) asks the Kubernetes API server the --k8s-* flags name about the tokens the
  token file does not know: ServiceAccount tokens, optionally only those issued for --auth-token-audience.
- A process that listens beyond loopback must authenticate its callers (a client-certificate CA, --tls-ca or
  --serve-tls-ca, a token file or token review) unless --insecure is given, as plaintext is refused there
  without it. The agent's inference proxy is plaintext whatever the agent's TLS to the scheduler: it counts as
  authenticated only when it checks its inference callers' tokens (check_plaintext_inference_exposure).
- --auth-inference=on needs a way to authenticate inference callers, or it would refuse them all.
- Tokens a client presents come from a file (--auth-token-file) or the environment (MODELPLANE_AUTH_TOKEN),
  never from a flag: flags show in ``ps``. The file is read again when it changes (auth/client_token.py).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck, AuthSettings, TokenReviewSettings
from modelplane.auth.certificates import DEFAULT_SAN_KINDS, SanKind
from modelplane.auth.client_token import ClientToken, ClientTokenError
from modelplane.auth.reloading_file import AuthFileError
from modelplane.kubernetes_api import connection_from_flags
from modelplane.secret_inputs import SecretFileError
from modelplane.transport import TransportError, TransportSecurity

__all__ = [
    "TOKEN_ENV",
    "add_auth_flags",
    "add_client_token_flag",
    "auth_settings_from",
    "check_authenticated_exposure",
    "check_plaintext_inference_exposure",
    "client_token",
]

TOKEN_ENV = "MODELPLANE_AUTH_TOKEN"  # noqa: S105 - the name of the variable, not a token


def _san_kinds(text: str) -> tuple[SanKind, ...]:
    kinds: list[SanKind] = []
    for part in text.split(","):
        try:
            kind = SanKind(part.strip().lower())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a SAN kind (kinds: {', '.join(k.value for k in SanKind)})"
            ) from None
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


_AUDIENCE = re.compile(r"[!-+\--~]{1,253}")  # printable ASCII without space and comma, like identities
MAX_AUDIENCES = 16


def _audiences(text: str) -> tuple[str, ...]:
    audiences = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not audiences or len(audiences) > MAX_AUDIENCES:
        raise argparse.ArgumentTypeError(f"give 1 to {MAX_AUDIENCES} audiences, separated by commas")
    for audience in audiences:
        if not _AUDIENCE.fullmatch(audience):
            raise argparse.ArgumentTypeError(f"{audience[:60]!r} is not an audience (printable, no spaces)")
    return audiences


def add_auth_flags(parser: argparse.ArgumentParser) -> None:
    """The serving side's flags. Token review also needs the process's --k8s-* flags (kubernetes_api.py)."""
    group = parser.add_argument_group("identities and roles (off without --auth-policy)")
    group.add_argument(
        "--auth-policy",
        type=Path,
        metavar="YAML",
        help="roles of identities and groups; turns authorisation on; read again when it changes",
    )
    group.add_argument(
        "--auth-tokens",
        type=Path,
        metavar="FILE",
        help="bearer tokens: '<sha256-hex> <identity> [group,...]' lines; read again when it changes",
    )
    group.add_argument(
        "--auth-token-review",
        action="store_true",
        help="bearer tokens the token file does not know are asked of the Kubernetes API server the --k8s-* flags "
        "name (TokenReview; --k8s-in-cluster in a pod): ServiceAccount tokens name "
        "system:serviceaccount:NAMESPACE:NAME for --auth-policy. Answers are cached a minute; an API server that "
        "cannot be asked refuses the token",
    )
    group.add_argument(
        "--auth-token-audience",
        type=_audiences,
        metavar="AUD[,AUD...]",
        help="with --auth-token-review: accept only tokens issued for one of these audiences (a projected "
        "ServiceAccount token's audience), so a token meant for another service cannot be replayed here",
    )
    group.add_argument(
        "--auth-san-kind",
        type=_san_kinds,
        default=",".join(kind.value for kind in DEFAULT_SAN_KINDS),
        metavar="KINDS",
        help="which client-certificate SANs name the caller, in order: uri, dns, email (default uri,dns)",
    )
    group.add_argument(
        "--auth-inference",
        choices=("auto", "on", "off"),
        default="auto",
        help="inference endpoints need an authenticated caller: auto (default) is on when listening beyond "
        "loopback with --auth-policy, off on loopback",
    )


def add_client_token_flag(parser: argparse.ArgumentParser, presented_to: str = "the scheduler") -> None:
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help=f"a bearer token to present to {presented_to} (or the environment variable {TOKEN_ENV}); read "
        "again when the file changes (a ServiceAccount token the kubelet rotates)",
    )


def _token_review(options: argparse.Namespace) -> TokenReviewSettings | None:
    if not options.auth_token_review:
        if options.auth_token_audience is not None:
            raise TransportError("--auth-token-audience is for --auth-token-review")
        return None
    if options.auth_policy is None:
        raise TransportError(
            "--auth-token-review needs --auth-policy: a token proves who calls, the policy what it may do"
        )
    if not hasattr(options, "k8s_api"):  # a command that serves but has no --k8s-* flags: a wiring mistake
        raise TransportError("--auth-token-review needs the --k8s-* flags, which this command lacks")
    try:
        connection = connection_from_flags(options)
    except SecretFileError as error:
        raise TransportError(str(error)) from None
    return TokenReviewSettings(connection, options.auth_token_audience or ())


def auth_settings_from(options: argparse.Namespace, listening: Sequence[Address]) -> AuthSettings:
    """Raises TransportError when the flags cannot work together."""
    if options.auth_tokens is not None and options.auth_policy is None:
        raise TransportError("--auth-tokens needs --auth-policy: a token proves who calls, the policy what it may do")
    for path in (options.auth_tokens, options.auth_policy):
        if path is not None and not path.is_file():
            raise TransportError(f"{path} does not exist or is not a file")
    if options.auth_inference == "auto":
        inference = options.auth_policy is not None and any(not address.is_loopback for address in listening)
    else:
        inference = options.auth_inference == "on"
    settings = AuthSettings(
        tokens_file=options.auth_tokens,
        policy_file=options.auth_policy,
        san_kinds=options.auth_san_kind,
        inference_check=inference,
        token_review=_token_review(options),
    )
    try:
        AccessCheck(settings)  # reads both files: one that cannot be used stops the process at start
    except AuthFileError as error:
        raise TransportError(str(error)) from None
    return settings


def check_authenticated_exposure(addresses: Sequence[Address], security: TransportSecurity, auth: AuthSettings) -> None:
    """Refuse to listen beyond loopback without a way to authenticate callers, unless --insecure."""
    _check_inference_can_authenticate(auth, certificates=security.ca_file is not None)
    if security.insecure or security.ca_file is not None or auth.verifies_tokens:
        return
    exposed = [str(address) for address in addresses if not address.is_loopback]
    if exposed:
        raise TransportError(
            f"refusing to serve {', '.join(exposed)} beyond loopback without authentication: give --tls-ca "
            "(client certificates), --auth-tokens or --auth-token-review, with --auth-policy for roles, or "
            "--insecure to accept anyone"
        )


def check_plaintext_inference_exposure(
    addresses: Sequence[Address], auth: AuthSettings, *, insecure: bool, inference_flag: str
) -> None:
    """For a plaintext inference server (the agent's proxy) of a process whose TLS flags are about another
    connection (the agent's to the scheduler): beyond loopback it must check its inference callers' tokens, unless
    the operator says that anyone may call it (``--auth-inference=off``, ``inference_flag``, or --insecure)."""
    _check_inference_can_authenticate(auth, certificates=False)
    exposed = [str(address) for address in addresses if not address.is_loopback]
    if not exposed or insecure or inference_flag == "off" or (auth.inference_check and auth.verifies_tokens):
        return
    raise TransportError(
        f"refusing to serve {', '.join(exposed)} beyond loopback without authentication: the inference proxy is "
        "plaintext, so give --auth-token-review or --auth-tokens with --auth-policy (its callers present tokens), "
        "or --auth-inference=off to accept any caller (or --insecure, without TLS to the scheduler)"
    )


def _check_inference_can_authenticate(auth: AuthSettings, *, certificates: bool) -> None:
    if auth.inference_check and not (auth.verifies_tokens or certificates):
        raise TransportError(
            "--auth-inference=on needs a way to authenticate inference callers: --auth-tokens or "
            "--auth-token-review (with --auth-policy), or client certificates (a TLS CA)"
        )


def client_token(path: Path | None, environ: Mapping[str, str] | None = None) -> ClientToken | None:
    """The bearer token a client presents: the file's (its first line, read again when the file changes), else
    the environment's; None without either. Raises TransportError for a file that cannot be read or a token that
    cannot be sent."""
    try:
        if path is not None:
            return ClientToken.from_file(path)
        token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
        return ClientToken.fixed(token) if token else None
    except ClientTokenError as error:
        raise TransportError(str(error)) from None
