"""Bad input against a live registry: malformed JSON, unknown fields, wrong types, huge bodies, hostile names.
Every answer is a 4xx with a reason; never a 500, and the registry keeps serving."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelplane.spec.training_algorithms import CLASSIFIERS, REGRESSORS
from registry.api.app import MAX_BODY_BYTES
from registry.data.directives import MAX_DIRECTIVES
from tests.support.processes import alive
from tests.support.registry_process import Answer, RegistryProcess, module_registry

MODEL = "{model}"
# Each call that reads a body, with the fields its body knows.
BODY_CALLS: list[tuple[str, str, set[str]]] = [
    ("PUT", "/experiments/target", {"description", "srcpath", "outcome", "outcomeType", "directives"}),
    ("POST", "/experiments/target/splits", {"type", "parameters", "directives", "schema", "description"}),
    (
        "POST",
        "/experiments/target/models",
        {"name", "description", "directives", "split", "features", "algorithm", "hyperparameters"},
    ),
    ("PUT", f"/experiments/target/models/{MODEL}/directives", {"directives"}),
    ("POST", f"/experiments/target/models/{MODEL}/train", {"algorithm", "hyperparameters", "features"}),
    (
        "POST",
        f"/experiments/target/models/{MODEL}/split",
        {"type", "parameters", "directives", "schema", "description"},
    ),
    ("PUT", "/experiments/target/aliases/staging", {"model", "version"}),
    ("POST", "/experiments/target/promotion/canary", {"model", "version", "percent"}),
    ("POST", "/experiments/target/promotion/finish", {"model"}),
    ("POST", "/experiments/target/promotion/abort", {"model"}),
]
RELAXED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, str]]:
    with module_registry(Path(tmp_path_factory.mktemp("registry"))) as registry:
        assert registry.call("PUT", "/experiments/target", {"srcpath": "/t.csv", "outcome": "y"}).status == 201
        model = registry.call("POST", "/experiments/target/models", {"name": "m"}).body["id"]
        yield registry, model


def _refused(answer: Answer, *statuses: int) -> None:
    assert 400 <= answer.status < 500, answer
    if statuses:
        assert answer.status in statuses, answer
    assert isinstance(answer.body, dict), answer
    assert isinstance(answer.body.get("error"), str), answer
    assert answer.body["error"], answer


@RELAXED
@given(call=st.sampled_from(BODY_CALLS), raw=st.binary(min_size=1, max_size=300))
def test_bytes_that_are_not_a_json_object(live: tuple[RegistryProcess, str], call: Any, raw: bytes) -> None:
    registry, model = live
    method, path, _ = call
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict) or not raw.strip():
        return  # an object (or nothing: {}) is a body the other tests judge
    _refused(registry.call(method, path.format(model=model), raw=raw), 400)


@RELAXED
@given(call=st.sampled_from(BODY_CALLS), extra=st.text(min_size=1, max_size=30), value=json_values)
def test_unknown_fields_are_named(live: tuple[RegistryProcess, str], call: Any, extra: str, value: Any) -> None:
    registry, model = live
    method, path, known = call
    if extra in known:
        return
    answer = registry.call(method, path.format(model=model), {extra: value})
    _refused(answer, 400)
    assert "unknown field" in answer.error or "Field required" in answer.error


@RELAXED
@given(call=st.sampled_from(BODY_CALLS), data=st.data())
def test_known_fields_of_any_type(live: tuple[RegistryProcess, str], call: Any, data: st.DataObject) -> None:
    """Any JSON value in any known field: accepted (2xx) or refused with a reason (4xx); never a 500."""
    registry, model = live
    method, path, known = call
    fields = data.draw(st.dictionaries(st.sampled_from(sorted(known)), json_values, max_size=len(known)))
    answer = registry.call(method, path.format(model=model), fields)
    assert answer.status < 500 or answer.status == 503, answer  # 503: a port this registry lacks (split, train)
    if answer.status >= 400:
        assert isinstance(answer.body, dict), answer
        assert answer.body.get("error"), answer


KNOWN_PARAMETERS = sorted({name for catalogue in (CLASSIFIERS, REGRESSORS) for params in catalogue.values()
                           for name in params})  # fmt: skip
hyper_values = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.from_regex(r"[+-]?\d{1,12}(\.\d{0,4})?([eE][+-]?\d{1,4})?", fullmatch=True)
)


@RELAXED
@given(
    algorithm=st.sampled_from(sorted({*CLASSIFIERS, *REGRESSORS})) | st.text(min_size=1, max_size=40),
    hyperparameters=st.dictionaries(st.sampled_from(KNOWN_PARAMETERS) | st.text(min_size=1, max_size=20),
                                    hyper_values, max_size=4),
)  # fmt: skip
def test_any_algorithm_choice_is_created_or_refused_naming_it(
    live: tuple[RegistryProcess, str], algorithm: str, hyperparameters: dict[str, Any]
) -> None:
    """Any algorithm and hyper-parameters at model creation: created with them, or a 400 naming what the catalogue
    refuses (the algorithm, or a hyper-parameter); never a 500."""
    registry, _ = live
    body = {"algorithm": algorithm, "hyperparameters": hyperparameters}
    answer = registry.call("POST", "/experiments/target/models", body)
    if answer.status == 201:
        created = registry.call("GET", f"/experiments/target/models/{answer.body['id']}").body
        assert (created["algorithm"], created["hyperparameters"]) == (algorithm, hyperparameters)
        return
    _refused(answer, 400)
    assert "algorithm" in answer.error or "hyper-parameter" in answer.error or "hyperparameters" in answer.error


@RELAXED
@given(name=st.text(min_size=1, max_size=200), method=st.sampled_from(["GET", "PUT", "DELETE"]))
def test_hostile_names_in_the_path(live: tuple[RegistryProcess, str], name: str, method: str) -> None:
    registry, _ = live
    if name in {"target"}:
        return
    answer = registry.call(method, "/experiments/" + quote(name, safe=""), {} if method == "PUT" else None)
    assert answer.status < 500, answer
    if answer.status >= 400:
        _refused(answer)


@RELAXED
@given(alias=st.text(min_size=1, max_size=100), method=st.sampled_from(["GET", "PUT", "DELETE"]))
def test_hostile_alias_names_in_the_path(live: tuple[RegistryProcess, str], alias: str, method: str) -> None:
    """An alias that is not 1-32 of a-z 0-9 - (from a letter) is a 400 where a PUT would make it, else a 404."""
    registry, model = live
    path = "/experiments/target/aliases/" + quote(alias, safe="")
    answer = registry.call(method, path, {"model": model} if method == "PUT" else None)
    assert answer.status < 500, answer
    _refused(answer)
    routed = not set(alias) & set("{}/") and alias not in {".", ".."}  # what aiohttp's router sends our way
    if routed and not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", alias):
        assert answer.status == (400 if method == "PUT" else 404), answer


@pytest.mark.parametrize("call", BODY_CALLS, ids=lambda call: f"{call[0]} {call[1]}")
def test_huge_bodies_are_refused_with_413(live: tuple[RegistryProcess, str], call: Any) -> None:
    registry, model = live
    method, path, _ = call
    huge = json.dumps({"description": "x" * (MAX_BODY_BYTES + 1)}).encode()
    _refused(registry.call(method, path.format(model=model), raw=huge), 413)
    # Under the size limit, the counts have limits of their own: one directive too many is refused by name.
    many = registry.call(method, path.format(model=model), {"directives": ["drop x"] * (MAX_DIRECTIVES + 1)})
    if "directives" in call[2]:
        _refused(many, 400)
        assert "directives" in many.error


def test_still_serving_after_all_that(live: tuple[RegistryProcess, str]) -> None:
    registry, _ = live
    assert alive(registry.process.pid)
    assert registry.call("GET", "/experiments/target").status == 200
    assert "Traceback" not in registry.log()
