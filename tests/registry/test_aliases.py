"""Aliases and promotions over REST against a live registry, on SQLite and PostgreSQL (conftest.py): labels moved,
listed and removed; every refusal with its status and reason (400 malformed, 404 missing, 409 a state that does
not allow it, 503 no scheduler wired in, 502 a scheduler that is not there); the promotion state held in the
database across a restart. Promotions that serve traffic run in tests/e2e/test_registry_loop.py (a real
scheduler, agents with MLServer, a gateway)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.lifecycle import ModelState
from registry.promotion_rules import MAX_ALIASES_PER_EXPERIMENT, PromotionState
from registry.store.database import Store
from tests.registry import rows
from tests.registry.version_rows import HOUSES, add_alias, add_promotion, claim_move, move_claims, trained
from tests.support.processes import stop_process
from tests.support.registry_process import RegistryProcess, start_registry


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = rows.open_store(database_url)
    try:
        yield opened
    finally:
        opened.close()


def test_labels_move_list_and_go(registry: RegistryProcess, store: Store) -> None:
    assert registry.call("PUT", "/experiments/houses", HOUSES).status == 201
    first, second = trained(store, versions=2), trained(store)
    assert registry.call("GET", "/experiments/houses/aliases").body == []

    newest = registry.call("PUT", "/experiments/houses/aliases/staging", {"model": first})
    assert newest.status == 200, newest.body
    assert (newest.body["alias"], newest.body["model"], newest.body["version"]) == ("staging", first, 2)
    assert newest.body["servingName"] is None  # a label deploys nothing
    pinned = registry.call("PUT", "/experiments/houses/aliases/last-good", {"model": first, "version": 1})
    assert pinned.body["version"] == 1
    moved = registry.call("PUT", "/experiments/houses/aliases/staging", {"model": second})
    assert (moved.body["model"], moved.body["version"]) == (second, 1)

    listed = registry.call("GET", "/experiments/houses/aliases").body
    assert [(a["alias"], a["model"], a["version"]) for a in listed] == [("last-good", first, 1), ("staging", second, 1)]
    assert registry.call("GET", "/experiments/houses/aliases/staging").body["model"] == second
    assert rows.model_state(store, second) == ModelState.TRAINED.value  # a label is no deploy

    assert registry.call("DELETE", "/experiments/houses/aliases/staging").status == 204
    gone = registry.call("GET", "/experiments/houses/aliases/staging")
    assert gone.status == 404
    assert "no alias staging" in gone.error
    # The model of an alias deleted: its aliases go with it (the seed allows deleting a model in every state).
    assert registry.call("DELETE", f"/experiments/houses/models/{first}").status == 204
    assert registry.call("GET", "/experiments/houses/aliases").body == []


def test_refusals_say_why(registry: RegistryProcess, store: Store) -> None:
    assert registry.call("PUT", "/experiments/houses", HOUSES).status == 201
    model = trained(store)
    untrained = rows.add_model(store, "houses", ModelState.DATA_READY)

    bad_name = registry.call("PUT", "/experiments/houses/aliases/Production", {"model": model})
    assert bad_name.status == 400
    assert "a-z 0-9" in bad_name.error
    assert registry.call("GET", "/experiments/houses/aliases/Production").status == 404
    for body, status, why in (
        ({"model": "zz"}, 400, "model"),
        ({"model": model, "version": 0}, 400, "version"),
        ({"model": model, "stage": 1}, 400, "stage"),
        ({"model": "0" * 16}, 404, "0" * 16),
    ):
        refused = registry.call("PUT", "/experiments/houses/aliases/x", body)
        assert (refused.status, why in refused.error) == (status, True), (body, refused.body)
    nowhere = registry.call("PUT", "/experiments/nowhere/aliases/x", {"model": model})
    assert (nowhere.status, "nowhere" in nowhere.error) == (404, True), nowhere.body
    missing = registry.call("PUT", "/experiments/houses/aliases/x", {"model": model, "version": 7})
    assert (missing.status, "has no version 7" in missing.error) == (404, True)
    unversioned = registry.call("PUT", "/experiments/houses/aliases/x", {"model": untrained})
    assert (unversioned.status, "no registered version" in unversioned.error) == (409, True)

    # Serving aliases: the model's lifecycle first (409), then the missing scheduler (503), never a state change.
    no_scheduler = registry.call("PUT", "/experiments/houses/aliases/production", {"model": model})
    assert no_scheduler.status == 503, no_scheduler.body
    assert "no scheduler" in no_scheduler.error
    assert registry.call("GET", "/experiments/houses/aliases/production").status == 404
    assert rows.model_state(store, model) == ModelState.TRAINED.value

    # No production to compare with: a canary is a 409 saying what to do.
    canary = registry.call("POST", "/experiments/houses/promotion/canary", {"model": model, "percent": 10})
    assert canary.status == 409, canary.body
    assert "production" in canary.error
    for percent in (0, 100, -5, "10", 10.5):
        bad = registry.call("POST", "/experiments/houses/promotion/canary", {"model": model, "percent": percent})
        assert (bad.status, "percent" in bad.error) == (400, True), (percent, bad.body)
    for step in ("finish", "abort"):
        nothing = registry.call("POST", f"/experiments/houses/promotion/{step}", {"model": model})
        assert nothing.status == 409, nothing.body
        assert "no promotion running" in nothing.error
    assert registry.call("GET", "/experiments/houses/promotion").status == 404

    # At most MAX_ALIASES_PER_EXPERIMENT aliases: one more is a 409; moving one that exists is not.
    for number in range(MAX_ALIASES_PER_EXPERIMENT):
        assert registry.call("PUT", f"/experiments/houses/aliases/l{number}", {"model": model}).status == 200
    over = registry.call("PUT", "/experiments/houses/aliases/one-more", {"model": model})
    assert over.status == 409
    assert "delete one first" in over.error
    assert registry.call("PUT", "/experiments/houses/aliases/l0", {"model": model}).status == 200


def test_a_promotion_is_held_in_the_database_across_a_restart(tmp_path: Path, database_url: str, store: Store) -> None:
    """A canary the registry was running when it stopped: its successor answers by the promotion's state (the
    aliases it owns stay put; only its candidate can be finished or aborted), and a finish the scheduler cannot
    take leaves it FINISHING with the reason, so the same call resumes it."""
    (tmp_path / "datasets").mkdir()
    with socket.socket() as probe:  # a port nothing listens on: the scheduler is not there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = [f"--datasets-root={tmp_path / 'datasets'}", f"--scheduler=127.0.0.1:{port}", "--deploy-timeout=5"]
    if database_url.startswith("postgresql"):
        flags.append(f"--database={database_url}")
    first = start_registry(tmp_path, *flags)
    try:
        assert first.call("PUT", "/experiments/houses", HOUSES).status == 201
        production, candidate, other = trained(store), trained(store), trained(store)
        add_promotion(store, production, candidate, PromotionState.CANARY)
    finally:
        stop_process(first.process)

    registry = start_registry(tmp_path, *flags)
    try:
        running = registry.call("GET", "/experiments/houses/promotion")
        assert running.status == 200
        assert (running.body["state"], running.body["candidate"]["model"]) == ("CANARY", candidate)
        for alias in ("production", "candidate"):
            held = registry.call("PUT", f"/experiments/houses/aliases/{alias}", {"model": other})
            assert held.status == 409, held.body
            assert "finish or abort it first" in held.error
        another = registry.call("POST", "/experiments/houses/promotion/canary", {"model": other, "percent": 20})
        assert (another.status, "finish or abort it first" in another.error) == (409, True)
        wrong = registry.call("POST", "/experiments/houses/promotion/finish", {"model": other})
        assert (wrong.status, f"is of model {candidate}" in wrong.error) == (409, True)

        refused = registry.call("POST", "/experiments/houses/promotion/finish", {"model": candidate})
        assert refused.status == 502, refused.body
        assert "the same call again resumes" in refused.error
        stuck = registry.call("GET", "/experiments/houses/promotion").body
        assert stuck["state"] == "FINISHING"
        assert stuck["reason"].startswith("loading the candidate under the stable name")
        # FINISHING allows finishing again, not aborting: a half-made production is completed, not undone.
        aborted = registry.call("POST", "/experiments/houses/promotion/abort", {"model": candidate})
        assert aborted.status == 409, aborted.body
        assert "FINISHING" in aborted.error
        again = registry.call("POST", "/experiments/houses/promotion/finish", {"model": candidate})
        assert again.status == 502, again.body
        assert registry.call("GET", "/experiments/houses/promotion").body["state"] == "FINISHING"
        assert registry.call("GET", "/experiments/houses/aliases").body == []  # nothing recorded as moved
    finally:
        stop_process(registry.process)


def test_openapi_describes_aliases_and_promotions(registry: RegistryProcess) -> None:
    document = registry.call("GET", "/openapi.json").body
    paths = document["paths"]
    assert set(paths["/experiments/{name}/aliases/{alias}"]) == {"get", "put", "delete"}
    assert set(paths["/experiments/{name}/aliases"]) == {"get"}
    assert set(paths["/experiments/{name}/promotion"]) == {"get"}
    for step in ("canary", "finish", "abort"):
        assert {"409", "502", "503"} <= set(paths[f"/experiments/{{name}}/promotion/{step}"]["post"]["responses"])
    canary = document["components"]["schemas"]["CanaryBody"]
    assert (canary["properties"]["percent"]["minimum"], canary["properties"]["percent"]["maximum"]) == (1, 99)
    assert canary["additionalProperties"] is False
    alias = [p for p in paths["/experiments/{name}/aliases/{alias}"]["put"]["parameters"] if p["name"] == "alias"]
    assert alias[0]["schema"]["pattern"] == "^[a-z][a-z0-9-]{0,31}$"


def test_a_candidate_deleted_mid_canary_is_not_finished_and_the_canary_can_still_be_aborted(
    registry: RegistryProcess, store: Store
) -> None:
    assert registry.call("PUT", "/experiments/houses", HOUSES).status == 201
    production, candidate = trained(store), trained(store)
    add_promotion(store, production, candidate, PromotionState.CANARY)
    assert registry.call("DELETE", f"/experiments/houses/models/{candidate}").status == 204  # the seed allows it

    refused = registry.call("POST", "/experiments/houses/promotion/finish", {"model": candidate})
    assert refused.status == 409, refused.body
    assert "abort the canary" in refused.error
    assert registry.call("GET", "/experiments/houses/promotion").body["state"] == "CANARY"
    # This registry has no scheduler: the abort is refused (503) after the state check, and nothing moves.
    unwired = registry.call("POST", "/experiments/houses/promotion/abort", {"model": candidate})
    assert unwired.status == 503, unwired.body
    assert registry.call("GET", "/experiments/houses/promotion").body["state"] == "CANARY"


def test_a_serving_alias_moved_by_another_request_is_not_raced(tmp_path: Path, database_url: str, store: Store) -> None:
    """A move of production in flight (claimed in the database, its deploy not answered yet): another version is a
    409 and so is a canary; the same move again proceeds (a retry); a claim older than the deploy timeout (its
    registry stopped) is taken over; a failed deploy releases the claim."""
    (tmp_path / "datasets").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = [f"--datasets-root={tmp_path / 'datasets'}", f"--scheduler=127.0.0.1:{port}", "--deploy-timeout=5"]
    if database_url.startswith("postgresql"):
        flags.append(f"--database={database_url}")
    registry = start_registry(tmp_path, *flags)
    try:
        assert registry.call("PUT", "/experiments/houses", HOUSES).status == 201
        moving, other = trained(store), trained(store)
        claim_move(store, moving, start_time=int(time.time()))

        raced = registry.call("PUT", "/experiments/houses/aliases/production", {"model": other})
        assert raced.status == 409, raced.body
        assert f"being moved to model {moving} version 1" in raced.error
        canary = registry.call("POST", "/experiments/houses/promotion/canary", {"model": other, "percent": 5})
        assert (canary.status, "being moved" in canary.error) == (409, True)
        assert registry.call("PUT", "/experiments/houses/aliases/staging", {"model": other}).status == 200  # a label

        retried = registry.call("PUT", "/experiments/houses/aliases/production", {"model": moving})
        assert retried.status == 502, retried.body  # the scheduler is not there; the claim is released
        assert "scheduler" in retried.error
        assert move_claims(store) == []

        claim_move(store, moving, start_time=int(time.time()) - 3600)  # its registry stopped long ago
        taken = registry.call("PUT", "/experiments/houses/aliases/production", {"model": other})
        assert taken.status == 502, taken.body
        assert "scheduler" in taken.error
        assert move_claims(store) == []
        assert registry.call("GET", "/experiments/houses/aliases/production").status == 404  # never recorded
    finally:
        stop_process(registry.process)


def test_production_is_not_removed_while_a_move_of_it_is_in_flight(
    tmp_path: Path, database_url: str, store: Store
) -> None:
    """The move, once deployed, would record production again under a stable name the removal had unloaded: a
    removal while another request moves production is a 409 before the scheduler is asked anything, and production
    stays as it was."""
    (tmp_path / "datasets").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = [f"--datasets-root={tmp_path / 'datasets'}", f"--scheduler=127.0.0.1:{port}", "--deploy-timeout=5"]
    if database_url.startswith("postgresql"):
        flags.append(f"--database={database_url}")
    registry = start_registry(tmp_path, *flags)
    try:
        assert registry.call("PUT", "/experiments/houses", HOUSES).status == 201
        current, moving = trained(store), trained(store)
        add_alias(store, current)
        claim_move(store, moving, start_time=int(time.time()))
        removed = registry.call("DELETE", "/experiments/houses/aliases/production")
        assert removed.status == 409, removed.body
        assert f"being moved to model {moving} version 1" in removed.error
        assert registry.call("GET", "/experiments/houses/aliases/production").body["model"] == current
    finally:
        stop_process(registry.process)
