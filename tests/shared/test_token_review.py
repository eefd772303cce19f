"""modelplane/auth/token_review.py against the fake Kubernetes API: a ServiceAccount token names its account and
groups, an unknown one names no one, answers are cached by digest for a while, and an API server that cannot be
asked refuses the token without caching that refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from modelplane.auth.token_review import FirstVerifier, TokenReviewVerifier
from modelplane.auth.tokens import TokenIdentity
from modelplane.kubernetes_api import KubernetesConnection
from tests.support.fake_kubernetes_api import API_SERVER_AUDIENCE, FakeKubernetesApi

GOOD = "service-account-token-of-the-agent"
ACCOUNT = "system:serviceaccount:models:agent"


@pytest.fixture
async def api() -> AsyncIterator[FakeKubernetesApi]:
    fake = FakeKubernetesApi()
    fake.token_reviews[GOOD] = {
        "authenticated": True,
        "user": {"username": ACCOUNT, "groups": ["system:serviceaccounts", "system:serviceaccounts:models"]},
    }
    fake.token_audiences[GOOD] = ["modelplane", API_SERVER_AUDIENCE]  # projected for modelplane; and the default
    async with fake:
        yield fake


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_service_account_token_names_its_account_and_groups(api: FakeKubernetesApi) -> None:
    clock = Clock()
    verifier = TokenReviewVerifier(KubernetesConnection(host=api.url), audiences=["modelplane"], clock=clock)
    who = await verifier.verify(GOOD)
    assert who == TokenIdentity(ACCOUNT, frozenset({"system:serviceaccounts", "system:serviceaccounts:models"}))
    assert await verifier.verify("not-a-token") is None
    reviews = api.requests_for("POST", "/tokenreviews")
    assert len(reviews) == 2
    assert reviews[0].body["spec"]["audiences"] == ["modelplane"]

    del api.token_reviews[GOOD]  # revoked: still known until the cached answer expires
    assert await verifier.verify(GOOD) == who
    assert len(api.requests_for("POST", "/tokenreviews")) == 2
    clock.now += 61
    assert await verifier.verify(GOOD) is None
    assert len(api.requests_for("POST", "/tokenreviews")) == 3


async def test_an_api_server_that_cannot_be_asked_refuses_without_caching(api: FakeKubernetesApi) -> None:
    verifier = TokenReviewVerifier(KubernetesConnection(host=api.url))
    api.inject_error("POST", "/tokenreviews", 503, "ServiceUnavailable")
    assert await verifier.verify(GOOD) is None
    assert (await verifier.verify(GOOD)) is not None, "the refusal of an outage is not remembered"


async def test_the_first_verifier_that_knows_a_token_answers(api: FakeKubernetesApi) -> None:
    class Known:
        async def verify(self, token: str) -> TokenIdentity | None:
            return TokenIdentity("from-file") if token == "file-token" else None  # noqa: S105

    chain = FirstVerifier([Known(), TokenReviewVerifier(KubernetesConnection(host=api.url))])
    assert await chain.verify("file-token") == TokenIdentity("from-file")
    assert (await chain.verify(GOOD)) is not None
    assert await chain.verify("") is None
    assert len(api.requests_for("POST", "/tokenreviews")) == 1, "an empty token is refused without asking"
