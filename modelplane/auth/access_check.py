"""The access check: who a request's caller is (certificate or bearer token), and whether the access table and the
policy let it make this call on this resource. Shared by the gRPC interceptor (grpc_access.py) and the HTTP
middleware (http_access.py), which only gather a request's credentials and turn a refusal into their protocol's.

Authorisation is on when a policy file is given. Without one, nothing is refused (a loopback ``modelplane up``, a
deployment that relies on its network); callers that prove an identity are still named, for the audit log.

Bearer tokens are looked up in the token file first, then, with token review on, asked of the Kubernetes API
server (ServiceAccount tokens, token_review.py): a token either knows names the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelplane.auth.access_table import Access, Resource, Rule
from modelplane.auth.caller import Caller, CredentialKind
from modelplane.auth.certificates import DEFAULT_SAN_KINDS, SanKind, identity_from_sans
from modelplane.auth.policy import EMPTY_POLICY, Grant, Policy, PolicyFile
from modelplane.auth.tokens import TokenFile, TokenVerifier
from modelplane.kubernetes_api import KubernetesConnection

__all__ = ["AccessCheck", "AuthSettings", "Credentials", "Refusal", "TokenReviewSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenReviewSettings:
    """Bearer tokens the token file does not know are asked of this API server (TokenReview)."""

    connection: KubernetesConnection
    # A token is valid only if issued for one of these (a projected token's audience); empty: the API server's.
    audiences: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """What a serving process was told about authentication (modelplane/auth_flags.py)."""

    tokens_file: Path | None = None
    policy_file: Path | None = None
    san_kinds: tuple[SanKind, ...] = DEFAULT_SAN_KINDS
    # Inference endpoints need an authenticated caller (off by default; see auth_flags.py).
    inference_check: bool = False
    token_review: TokenReviewSettings | None = None

    @property
    def verifies_tokens(self) -> bool:
        return self.tokens_file is not None or self.token_review is not None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one request brought to prove who sent it."""

    peer: str
    # The bearer token of an ``authorization: Bearer`` header; None without one, "" when malformed.
    bearer: str | None = None
    # The SANs of a client certificate the TLS layer verified; empty without one.
    certificate_sans: Mapping[SanKind, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused call: ``unauthenticated`` (no or a bad credential) or else not permitted; ``message`` says why
    (for the caller: it never contains a credential)."""

    unauthenticated: bool
    message: str
    caller: Caller | None = None  # who was refused, when the credential named someone (not permitted)


class AccessCheck:
    def __init__(self, settings: AuthSettings, verifier: TokenVerifier | None = None) -> None:
        """``verifier`` replaces the token file's (a TokenReview verifier, for instance). Raises AuthFileError when
        the token or policy file cannot be used at start."""
        self.settings = settings
        self.verifier = verifier or _token_verifier(settings)
        self._policy = PolicyFile(settings.policy_file) if settings.policy_file is not None else None

    @property
    def enforcing(self) -> bool:
        return self._policy is not None

    @property
    def policy(self) -> Policy:
        return self._policy.current if self._policy is not None else EMPTY_POLICY

    async def admit(
        self, method: str, rule: Rule | None, credentials: Credentials, resource: Callable[[], Resource]
    ) -> Caller | Refusal:
        """The caller of an admitted call, or why it is refused. ``resource`` reads the request's resource (only
        called when a limited grant needs it)."""
        open_call = rule is not None and (
            rule.access is Access.OPEN or (rule.access is Access.INFERENCE and not self.settings.inference_check)
        )
        if open_call or not self.enforcing:
            # Identify when it costs nothing and cannot refuse: the audit log names who it can.
            caller = await self._authenticate(credentials, strict=False)
            return caller if isinstance(caller, Caller) else Caller("", CredentialKind.NONE, peer=credentials.peer)
        caller = await self._authenticate(credentials, strict=True)
        if isinstance(caller, Refusal):
            return caller
        if rule is None:
            return Refusal(False, f"{method} is not in modelplane's access table: no one may call it", caller)
        if rule.access in (Access.AUTHENTICATED, Access.INFERENCE):
            return caller
        return self._authorise(method, rule, caller, resource)

    async def _authenticate(self, credentials: Credentials, *, strict: bool) -> Caller | Refusal:
        if credentials.bearer is not None:
            if self.verifier is None:
                if strict:
                    return Refusal(
                        True, "this server accepts no bearer tokens (no --auth-tokens or --auth-token-review)"
                    )
            else:
                who = await self.verifier.verify(credentials.bearer)
                if who is None:
                    return Refusal(True, "the bearer token is not valid")
                roles = self.policy.roles(who.identity, who.groups)
                return Caller(who.identity, CredentialKind.TOKEN, who.groups, roles, credentials.peer)
        identity = identity_from_sans(credentials.certificate_sans, self.settings.san_kinds)
        if identity is not None:
            roles = self.policy.roles(identity, frozenset())
            return Caller(identity, CredentialKind.CERTIFICATE, frozenset(), roles, credentials.peer)
        if credentials.certificate_sans:
            kinds = " or ".join(kind.value.upper() for kind in self.settings.san_kinds)
            return Refusal(True, f"the client certificate has no {kinds} subject alternative name to identify it")
        return Refusal(True, "no credential: present a client certificate or an 'authorization: Bearer' token")

    def _authorise(self, method: str, rule: Rule, caller: Caller, resource: Callable[[], Resource]) -> Caller | Refusal:
        grants = [grant for grant in self.policy.grants(caller.identity, caller.groups) if grant.role in rule.roles]
        needed = rule.describe_roles()
        if not grants:
            return Refusal(False, f"{method} needs role {needed}, which {caller.identity} does not have", caller)
        if any(not grant.namespaces and not grant.name_prefixes for grant in grants):
            return caller
        target = resource()
        if any(grant.covers(target) for grant in grants):
            return caller
        return Refusal(False, f"{method} needs role {needed} for {_describe(target)}; {_limits(grants)}", caller)


def _token_verifier(settings: AuthSettings) -> TokenVerifier | None:
    """The token file's verifier, then the API server's: the file's tokens cost no round trip."""
    verifiers: list[TokenVerifier] = []
    if settings.tokens_file is not None:
        verifiers.append(TokenFile(settings.tokens_file))
    if settings.token_review is not None:
        # Imported here: the Kubernetes client takes a second to import, and most processes never review a token.
        from modelplane.auth.token_review import FirstVerifier, TokenReviewVerifier  # noqa: PLC0415

        review = settings.token_review
        verifiers.append(TokenReviewVerifier(review.connection, audiences=review.audiences))
        return FirstVerifier(verifiers) if len(verifiers) > 1 else verifiers[0]
    return verifiers[0] if verifiers else None


def _describe(resource: Resource) -> str:
    what = (
        f"{resource.kind or 'resource'} {resource.name!r}" if resource.name else f"every {resource.kind or 'resource'}"
    )
    return f"{what} in namespace {resource.namespace!r}" if resource.namespace else f"{what} (no namespace given)"


def _limits(grants: Sequence[Grant]) -> str:
    parts = []
    for grant in grants:
        scope = []
        if grant.namespaces:
            scope.append("namespaces " + ", ".join(sorted(grant.namespaces)))
        if grant.name_prefixes:
            scope.append("names starting " + ", ".join(grant.name_prefixes))
        parts.append(f"{grant.role} only for {' and '.join(scope)}")
    return "the caller holds " + "; ".join(parts)
