"""Kubernetes ServiceAccount tokens as bearer tokens: a TokenVerifier that asks the API server (TokenReview).

On Kubernetes every pod already has a token the API server can vouch for, so the controller, agents and gateways
need no token file of their own: the serving process sends each new token to ``authentication.k8s.io/v1``
TokenReview and names the caller as the API server does (``system:serviceaccount:NAMESPACE:NAME``, with its
groups, e.g. ``system:serviceaccounts:NAMESPACE``), which the policy file then gives roles.

Answers are cached by the token's SHA-256 (never the token) for ``cache_seconds``, a valid token no longer than
its own expiry when the API server says it: a busy caller costs one review a minute, not one per call, and a
revoked token stops working within that time. When the API server cannot be asked, the token is not valid
(fail closed) and the answer is not cached, so the next call asks again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio.client.exceptions import ApiException

from modelplane.auth.tokens import MAX_TOKEN_CHARS, NAME, TokenIdentity, TokenVerifier, token_digest
from modelplane.kubernetes_api import KubernetesConfigError, KubernetesConnection, kubernetes_client

__all__ = ["FirstVerifier", "TokenReviewVerifier"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_SECONDS = 60.0
MAX_CACHED = 10_000
MAX_GROUPS = 64


@dataclass(frozen=True, slots=True)
class _Cached:
    who: TokenIdentity | None
    until: float  # time.monotonic()


class TokenReviewVerifier:
    """Asks the API server of ``connection`` who a token belongs to (a TokenVerifier)."""

    def __init__(
        self,
        connection: KubernetesConnection,
        *,
        audiences: Sequence[str] = (),
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._audiences = list(audiences)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()

    async def verify(self, token: str) -> TokenIdentity | None:
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = token_digest(token)
        cached = self._cache.get(digest)
        if cached is not None and cached.until > self._clock():
            self._cache.move_to_end(digest)
            return cached.who
        try:
            who = await self._review(token)
        except (ApiException, aiohttp.ClientError, TimeoutError, KubernetesConfigError) as error:
            reason = getattr(error, "reason", None) or type(error).__name__
            log.warning("token review: the API server could not be asked (%s); the token is refused", reason)
            return None
        self._cache[digest] = _Cached(who, self._clock() + self._cache_seconds)
        self._cache.move_to_end(digest)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return who

    async def _review(self, token: str) -> TokenIdentity | None:
        spec = k8s.V1TokenReviewSpec(token=token, audiences=self._audiences or None)
        async with kubernetes_client(self._connection) as api:
            review = await k8s.AuthenticationV1Api(api).create_token_review(k8s.V1TokenReview(spec=spec))
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return None
        username = status.user.username or ""
        groups = [group for group in (status.user.groups or [])[:MAX_GROUPS] if NAME.fullmatch(group)]
        if not NAME.fullmatch(username):
            log.warning("token review: the API server named a user modelplane cannot use as an identity; refused")
            return None
        return TokenIdentity(username, frozenset(groups))


class FirstVerifier:
    """The first of several verifiers that knows a token (a token file's, then the API server's)."""

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self._verifiers = tuple(verifiers)

    async def verify(self, token: str) -> TokenIdentity | None:
        for verifier in self._verifiers:
            who = await verifier.verify(token)
            if who is not None:
                return who
        return None
