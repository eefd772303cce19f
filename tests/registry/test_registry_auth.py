"""Callers of the registry are identified and limited like every other process's (modelplane/auth): with a token
file and a policy, reading takes the viewer role and every change the operator role; no credential is a 401, a
missing role a 403 naming it; the schema is for any authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.auth.access_table import Role
from tests.support.auth_material import TOKENS, one_identity_per_role
from tests.support.processes import stop_process
from tests.support.registry_process import RegistryProcess, start_registry


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[RegistryProcess]:
    tokens, policy = one_identity_per_role(tmp_path)
    running = start_registry(tmp_path / "registry", f"--auth-tokens={tokens}", f"--auth-policy={policy}")
    try:
        yield running
    finally:
        stop_process(running.process)


def _as(role: Role | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if role is not None:
        headers["Authorization"] = f"Bearer {TOKENS[role]}"
    return headers


def test_reading_needs_a_viewer_and_changing_an_operator(guarded: RegistryProcess) -> None:
    experiment = {"srcpath": "houses.csv", "outcome": "price", "outcomeType": "double"}

    anonymous = guarded.call("GET", "/experiments", headers=_as(None))
    assert anonymous.status == 401, anonymous.body
    assert anonymous.headers["www-authenticate"] == "Bearer"

    viewer_put = guarded.call("PUT", "/experiments/houses", experiment, headers=_as(Role.VIEWER))
    assert viewer_put.status == 403, viewer_put.body
    assert "operator" in viewer_put.error

    created = guarded.call("PUT", "/experiments/houses", experiment, headers=_as(Role.OPERATOR))
    assert created.status == 201, created.body

    operator_get = guarded.call("GET", "/experiments/houses", headers=_as(Role.OPERATOR))
    assert operator_get.status == 403, operator_get.body
    assert "viewer" in operator_get.error

    read = guarded.call("GET", "/experiments/houses", headers=_as(Role.VIEWER))
    assert read.status == 200, read.body
    assert read.body["outcome"] == "price"

    for mutation in (
        ("POST", "/experiments/houses/models", {"name": "m1"}),
        ("POST", "/experiments/houses/models/0/train", {"algorithm": "linear_regression"}),
        ("POST", "/experiments/houses/models/0/deploy", None),
        ("DELETE", "/experiments/houses", None),
    ):
        refused = guarded.call(mutation[0], mutation[1], mutation[2], headers=_as(Role.VIEWER))
        assert refused.status == 403, (mutation, refused.body)
    assert guarded.call("GET", "/experiments/houses", headers=_as(Role.VIEWER)).status == 200

    schema = guarded.call("GET", "/openapi.json", headers=_as(Role.AGENT))
    assert schema.status == 200
    assert guarded.call("GET", "/openapi.json", headers=_as(None)).status == 401
