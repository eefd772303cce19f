"""Command-line flags for authentication and roles, shared by every serving process, and for the identity a
client presents; next to transport_flags.py, which they complete.

Rules (checked at start):
- Authorisation (roles) is on when --auth-policy is given. A token file needs a policy: a token alone proves
  who calls, not what it may do.
- A process that listens beyond loopback must authenticate its callers (a client-certificate CA, --tls-ca or
  --serve-tls-ca, or a token file) unless --insecure is given, as plaintext is refused there without it.
- Tokens a client presents come from a file (--auth-token-file) or the environment (MODELPLANE_AUTH_TOKEN),
  never from a flag: flags show in ``ps``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck, AuthSettings
from modelplane.auth.certificates import DEFAULT_SAN_KINDS, SanKind
from modelplane.auth.reloading_file import MAX_FILE_BYTES, AuthFileError
from modelplane.auth.tokens import MAX_TOKEN_CHARS
from modelplane.transport import TransportError, TransportSecurity

__all__ = [
    "TOKEN_ENV",
    "add_auth_flags",
    "add_client_token_flag",
    "auth_settings_from",
    "check_authenticated_exposure",
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


def add_auth_flags(parser: argparse.ArgumentParser) -> None:
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


def add_client_token_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help=f"a bearer token to present to the scheduler (or the environment variable {TOKEN_ENV})",
    )


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
    )
    try:
        AccessCheck(settings)  # reads both files: one that cannot be used stops the process at start
    except AuthFileError as error:
        raise TransportError(str(error)) from None
    return settings


def check_authenticated_exposure(addresses: Sequence[Address], security: TransportSecurity, auth: AuthSettings) -> None:
    """Refuse to listen beyond loopback without a way to authenticate callers, unless --insecure."""
    if security.insecure or security.ca_file is not None or auth.tokens_file is not None:
        return
    exposed = [str(address) for address in addresses if not address.is_loopback]
    if exposed:
        raise TransportError(
            f"refusing to serve {', '.join(exposed)} beyond loopback without authentication: give --tls-ca "
            "(client certificates) or --auth-tokens, with --auth-policy for roles, or --insecure to accept anyone"
        )


def client_token(path: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token a client presents: the file's first line, else the environment's; None without either.
    Raises TransportError for a file that cannot be read or a token that cannot be sent."""
    if path is not None:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise TransportError(f"{path}: too large for a token file")
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise TransportError(f"cannot read the token file {path}: {error}") from None
        token = lines[0].strip() if lines else ""
        source = str(path)
    else:
        token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
        source = TOKEN_ENV
    if not token:
        if path is not None:
            raise TransportError(f"the token file {path} is empty")
        return None
    if len(token) > MAX_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise TransportError(f"the token in {source} is not one printable word of at most {MAX_TOKEN_CHARS} chars")
    return token
