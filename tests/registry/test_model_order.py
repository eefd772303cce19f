"""Comparing an experiment's models by a metric (``GET /experiments/{name}/models?sort=METRIC[&order=]``) against a
live registry on SQLite and on PostgreSQL: the metric's better direction by default, models without it last, paging
through the same order, and an unknown metric or order refused naming it."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.lifecycle import ModelState
from registry.service.model_order import BETTER_FIRST, ORDERS
from registry.store.database import Store
from tests.registry import rows
from tests.support.registry_process import RegistryProcess

# name -> metrics, created in this order (createtime 1, 2, ...).
MODELS: dict[str, dict[str, float | None]] = {
    "a": {"accuracy": 0.7, "rmse": 3.0},
    "b": {"accuracy": 0.9, "rmse": 1.0},
    "untrained": {},
    "undefined": {"accuracy": None, "rmse": None},  # a metric the test split left undefined
    "e": {"accuracy": 0.8, "rmse": 2.5},
    "f": {"accuracy": 0.9, "rmse": 1.0},  # ties with b: creation order between them
    "zero": {"accuracy": 0, "rmse": 0},  # a whole 0 is a value, not a missing one
}


@pytest.fixture
def ranked(registry: RegistryProcess, database_url: str) -> dict[str, str]:
    """The experiment "houses" holding MODELS; model id -> name."""
    assert registry.call("PUT", "/experiments/houses", {"srcpath": "/houses.csv"}).status == 201
    store: Store = rows.open_store(database_url)
    try:
        names = {
            rows.add_model(store, "houses", ModelState.TRAINED, metrics=metrics, create_time=index): name
            for index, (name, metrics) in enumerate(MODELS.items(), start=1)
        }
    finally:
        store.close()
    return names


def _names(registry: RegistryProcess, names: dict[str, str], query: str) -> tuple[list[str], str]:
    answer = registry.call("GET", f"/experiments/houses/models?{query}")
    assert answer.status == 200, answer
    return [names[model["id"]] for model in answer.body], answer.headers["x-total-count"]


def test_sorted_by_a_metric_best_first_those_without_it_last(registry: RegistryProcess, ranked: dict[str, str]) -> None:
    assert _names(registry, ranked, "sort=accuracy")[0] == ["b", "f", "e", "a", "zero", "untrained", "undefined"]
    # Lower is better for rmse: its default is lowest first.
    assert _names(registry, ranked, "sort=rmse")[0] == ["zero", "b", "f", "e", "a", "untrained", "undefined"]
    # An order given overrides the metric's direction; the models without it stay last.
    assert _names(registry, ranked, "sort=accuracy&order=asc")[0] == [
        "zero", "a", "e", "b", "f", "untrained", "undefined",
    ]  # fmt: skip
    assert _names(registry, ranked, "sort=rmse&order=desc")[0] == [
        "a", "e", "b", "f", "zero", "untrained", "undefined",
    ]  # fmt: skip
    # A metric no model has: every model lacks it, so creation order.
    assert _names(registry, ranked, "sort=f1")[0] == list(MODELS)
    # No sort: creation order, as before.
    assert _names(registry, ranked, "")[0] == list(MODELS)


def test_pages_follow_the_sorted_order(registry: RegistryProcess, ranked: dict[str, str]) -> None:
    whole, total = _names(registry, ranked, "sort=accuracy")
    assert total == str(len(MODELS))
    paged: list[str] = []
    for offset in range(0, len(MODELS), 2):
        page, page_total = _names(registry, ranked, f"sort=accuracy&offset={offset}&limit=2")
        assert page_total == str(len(MODELS))  # the total is all that match, whatever the page
        paged += page
    assert paged == whole
    assert _names(registry, ranked, "sort=accuracy&offset=5&limit=10") == (["untrained", "undefined"], total)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("sort=speed", "'speed'"),
        ("sort=ACCURACY", "'ACCURACY'"),
        ("sort=accuracy&order=best", "'best'"),
        ("sort=", "''"),
        ("order=desc", "order"),
    ],
)
def test_an_unknown_sort_or_order_is_refused_naming_it(
    registry: RegistryProcess, ranked: dict[str, str], query: str, named: str
) -> None:
    refused = registry.call("GET", f"/experiments/houses/models?{query}")
    assert refused.status == 400, refused
    assert named in refused.error


def test_openapi_describes_sort_and_its_rule(registry: RegistryProcess) -> None:
    described = registry.call("GET", "/openapi.json").body["paths"]["/experiments/{name}/models"]["get"]
    parameters = {parameter["name"]: parameter for parameter in described["parameters"]}
    assert parameters["sort"]["schema"]["enum"] == sorted(BETTER_FIRST)
    assert "higher is better for accuracy" in parameters["sort"]["description"]
    assert "lower is better for rmse" in parameters["sort"]["description"]
    assert parameters["order"]["schema"]["enum"] == list(ORDERS)
    assert {"offset", "limit"} <= set(parameters)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sort=st.text(max_size=80), order=st.none() | st.text(max_size=80))
def test_any_sort_text_is_an_order_or_a_400(registry: RegistryProcess, sort: str, order: str | None) -> None:
    query = f"sort={quote(sort, safe='')}" + ("" if order is None else f"&order={quote(order, safe='')}")
    answer = registry.call("GET", f"/experiments/nothing-here/models?{query}")
    known = sort in BETTER_FIRST and (order is None or order in ORDERS)
    # The query is checked before the experiment is looked up: a known order reaches the 404 of the missing one.
    assert answer.status == (404 if known else 400), answer
