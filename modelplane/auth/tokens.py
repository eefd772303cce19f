"""Bearer tokens: who a token says the caller is.

``TokenVerifier`` is what the access check asks; ``TokenFile`` is one verifier, backed by a file. (The Kubernetes
TokenReview verifier, for ServiceAccount tokens, is another: token_review.py.)

The token file holds one token a line, never the token itself but its SHA-256:

    # comment lines and blank lines are ignored
    <sha256 of the token, 64 hex digits> <identity> [group,group,...]

for example ``9f86d0...0a08 ci-deployer platform,deployers``. Make a line with
``printf %s "$TOKEN" | sha256sum``. Identities and groups are 1-253 printable characters without spaces or commas
(an identity may be a SPIFFE URI); a hash appears once. The file is read again when it changes (reloading_file.py);
replace it by renaming a new file over it, so that no reader sees half a file.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelplane.auth.reloading_file import AuthFileError, ReloadingFile

__all__ = ["MAX_TOKEN_CHARS", "TokenFile", "TokenIdentity", "TokenVerifier", "parse_token_file", "token_digest"]

MAX_TOKEN_CHARS = 4096
MAX_TOKENS = 10_000
_HASH = re.compile(r"[0-9a-fA-F]{64}")
# Printable ASCII without space and comma (a group list is comma-separated).
NAME = re.compile(r"[!-+\--~]{1,253}")


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    identity: str
    groups: frozenset[str] = frozenset()


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> TokenIdentity | None:
        """Who ``token`` belongs to, or None when it is not a valid token."""
        ...


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    who: TokenIdentity


def parse_token_file(text: str, where: str) -> tuple[_Entry, ...]:
    entries: list[_Entry] = []
    seen: set[bytes] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        at = f"{where} line {number}"
        if len(fields) not in (2, 3):
            raise AuthFileError(f"{at}: expected '<sha256-hex> <identity> [group,group...]', got {len(fields)} fields")
        if not _HASH.fullmatch(fields[0]):
            raise AuthFileError(f"{at}: the first field must be the token's SHA-256 as 64 hex digits")
        if not NAME.fullmatch(fields[1]):
            raise AuthFileError(f"{at}: the identity must be 1-253 printable characters without spaces or commas")
        groups = fields[2].split(",") if len(fields) == 3 else []
        for group in groups:
            if not NAME.fullmatch(group):
                raise AuthFileError(f"{at}: group {group[:60]!r} must be 1-253 printable characters without commas")
        digest = bytes.fromhex(fields[0])
        if digest in seen:
            raise AuthFileError(f"{at}: this token hash appears on an earlier line as well")
        seen.add(digest)
        entries.append(_Entry(digest, TokenIdentity(fields[1], frozenset(groups))))
        if len(entries) > MAX_TOKENS:
            raise AuthFileError(f"{at}: more than {MAX_TOKENS} tokens")
    return tuple(entries)


class TokenFile:
    """A TokenVerifier backed by a token file, read again when it changes."""

    def __init__(self, path: Path) -> None:
        self._file = ReloadingFile(path, parse_token_file)

    async def verify(self, token: str) -> TokenIdentity | None:
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = token_digest(token)
        found: TokenIdentity | None = None
        # Every entry is compared, in constant time each, so the time taken says nothing about which matched.
        for entry in self._file.current:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.who
        return found
