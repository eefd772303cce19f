"""/openapi.json: the REST table (routes.ROUTES) as an OpenAPI 3.1 document, the request bodies' schemas from their
pydantic models. Built from the same list the app serves, so every path served is described and nothing else."""

from __future__ import annotations

import re
from typing import Any

from modelplane import __version__
from modelplane.spec.registry_api import TOTAL_COUNT_HEADER
from registry.api.bodies import MAX_NAME_CHARS
from registry.api.requests import DEFAULT_LIMIT, MAX_LIMIT
from registry.api.routes import ROUTES, Route, get_model, model_status
from registry.ports import ServingState
from registry.service.model_order import BETTER_FIRST, HIGHER_IS_BETTER, LOWER_IS_BETTER, ORDERS

_ERRORS = {
    400: "malformed input: the reason names the field",
    404: "no such experiment, split, model, version, alias or promotion",
    409: "the resource's state does not allow this (registry/lifecycle.py's and registry/promotion_rules.py's "
    "tables), or a defined field redefined",
    413: "body over the size limit",
    502: "the trainer or the scheduler refused",
    503: "the database, or the part of the registry this needs, is unavailable",
}
_ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_PARAMETER = re.compile(r"\{(\w+)\}")
_BETTER_RULE = f"higher is better for {', '.join(HIGHER_IS_BETTER)}; lower is better for {', '.join(LOWER_IS_BETTER)}"
# Query parameters with more to say than "a string".
_QUERY: dict[str, dict[str, Any]] = {
    "sort": {
        "description": "order the models by this evaluation metric, the best first unless order says otherwise ("
        + _BETTER_RULE
        + "); models without the metric come last, ties and those in creation order. An unknown metric is a 400",
        "schema": {"type": "string", "enum": sorted(BETTER_FIRST)},
    },
    "order": {
        "description": "with sort: desc (highest first) or asc (lowest first) instead of the metric's better "
        "direction. An unknown order, or an order without sort, is a 400",
        "schema": {"type": "string", "enum": list(ORDERS)},
    },
}


def _parameters(route: Route) -> list[dict[str, Any]]:
    described = {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": MAX_NAME_CHARS},
        "split": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "model": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "dataset": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "version": {"type": "integer", "minimum": 1},
        "alias": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,31}$"},
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": described[name]}
        for name in _PARAMETER.findall(route.path)
    ]
    if route.paged:
        parameters += [
            {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            },
        ]
    parameters += [
        {"name": name, "in": "query", **_QUERY.get(name, {"schema": {"type": "string"}})} for name in route.query
    ]
    return parameters


def _operation(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, what in route.answers.items():
        answer: dict[str, Any] = {"description": what or "done"}
        if what:
            answer["content"] = {"application/json": {"schema": {"type": "array" if route.paged else "object"}}}
        if route.paged:
            answer["headers"] = {
                TOTAL_COUNT_HEADER: {"description": "how many match, all pages", "schema": {"type": "integer"}}
            }
        responses[str(status)] = answer
    errors = {404, 500} | ({400, 413} if route.body or route.paged or route.method == "PUT" else set())
    for status in sorted(errors | set(route.refusals)):
        description = _ERRORS.get(status, "the registry failed; its log says why")
        responses[str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
    operation: dict[str, Any] = {"summary": route.summary, "parameters": _parameters(route), "responses": responses}
    if route.body is not None:
        schema = route.body.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        operation["requestBody"] = {
            "required": route.method != "PUT",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}},
        }
        operation["x-schema-defs"] = schema.pop("$defs", {})
        operation["x-schema"] = schema
    return operation


# GET .../models/{id} and .../status: what the scheduler serves of the model now (registry/service/serving.py).
_SERVING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "what the scheduler serves under one of the model's names, as the registry's follower of the "
    "scheduler's status stream last recorded it; Unknown while the scheduler cannot be reached",
    "properties": {
        "name": {"type": "string", "description": "the scheduler's model name (servingName, or an alias's)"},
        "state": {"type": "string", "enum": [state.value for state in ServingState]},
        "reason": {"type": "string", "description": "the scheduler's state and reason, or why it is unknown"},
        "seen": {"type": ["integer", "null"], "description": "when the registry recorded this state (epoch s)"},
    },
    "required": ["name", "state", "reason", "seen"],
}
_WITH_SERVING: dict[str, Any] = {
    "type": "object",
    "properties": {
        "serving": {"$ref": "#/components/schemas/Serving"},
        "aliasServing": {"type": "array", "items": {"$ref": "#/components/schemas/Serving"}},
    },
}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    for route in ROUTES:
        operation = _operation(route)
        schemas.update(operation.pop("x-schema-defs", {}))
        if "x-schema" in operation and route.body is not None:
            schemas[route.body.__name__] = operation.pop("x-schema")
        if route.handler in (get_model, model_status):
            operation["responses"]["200"]["content"]["application/json"]["schema"] = _WITH_SERVING
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    schemas["Serving"] = _SERVING_SCHEMA
    paths["/openapi.json"] = {
        "get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelplane registry",
            "version": __version__,
            "description": "Experiments, splits and models (seed 002's REST table).",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
