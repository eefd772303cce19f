"""Reading a request's parts: names and ids in the path (a malformed one is a 404: no such thing can exist),
pagination in the query (400 when out of range), the JSON body through its pydantic model (400 with a reason)."""

from __future__ import annotations

import re
from typing import Final, TypeVar

from aiohttp import web
from pydantic import BaseModel

from modelplane.whole_numbers import parse_whole_number
from registry.errors import InvalidInput, NotFound
from registry.service.model_order import MetricOrder, metric_order

B = TypeVar("B", bound=BaseModel)

# An experiment's name: what the seed's paths carry, limited to what is safe in a URL, a log and a file name.
EXPERIMENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RESOURCE_ID: Final = re.compile(r"[0-9a-f]{16}")  # registry/service/context.py new_id
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_OFFSET: Final = 10**9


def experiment_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not EXPERIMENT_NAME.fullmatch(name):
        raise NotFound("no such experiment: a name is 1-128 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    return name


def new_experiment_name(request: web.Request) -> str:
    """The name of an experiment a PUT creates: a malformed one is the caller's mistake (400), not a 404."""
    name = request.match_info["name"]
    if not EXPERIMENT_NAME.fullmatch(name):
        raise InvalidInput("an experiment's name is 1-128 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    return name


def resource_id(request: web.Request, key: str, what: str) -> str:
    value = request.match_info[key]
    if not RESOURCE_ID.fullmatch(value):
        raise NotFound(f"no such {what}: ids are 16 hex digits")
    return value


MAX_VERSION: Final = 10**9


def version_number(request: web.Request) -> int:
    number = parse_whole_number(request.match_info["version"])
    if number is None or not 1 <= number <= MAX_VERSION:
        raise NotFound("no such version: versions are whole numbers from 1")
    return number


def page(request: web.Request) -> tuple[int, int]:
    """(offset, limit) from the query: offset 0 and limit DEFAULT_LIMIT when not given."""
    offset = parse_whole_number(request.query.get("offset", "0"))
    if offset is None or offset > MAX_OFFSET:
        raise InvalidInput(f"offset must be a whole number from 0 to {MAX_OFFSET}")
    limit = parse_whole_number(request.query.get("limit", str(DEFAULT_LIMIT)))
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return offset, limit


def models_order(request: web.Request) -> MetricOrder | None:
    """``sort`` (a metric) and ``order`` from the query: None without either (creation order); 400 naming an unknown
    value, or an order without a metric to order by."""
    sort, order = request.query.get("sort"), request.query.get("order")
    if sort is None:
        if order is not None:
            raise InvalidInput("order: needs sort, the metric to order by")
        return None
    return metric_order(sort, order)


async def body(request: web.Request, model: type[B]) -> B:
    """The JSON body as ``model`` (an empty body is ``{}``); pydantic's ValidationError for anything else, which
    the error middleware answers 400. Over the app's size limit, aiohttp raises 413 here."""
    raw = await request.read()
    return model.model_validate_json(raw if raw.strip() else b"{}")
