"""The REST handlers of aliases and promotions (their rows are in routes.ROUTES), each only translating: read the
request, call the service (registry/service/aliases.py, promotions.py), answer the document."""

from __future__ import annotations

from aiohttp import web

from registry.api import documents
from registry.api.bodies import AliasBody, CanaryBody, PromotionBody
from registry.api.requests import body, experiment_name
from registry.errors import InvalidInput, NotFound
from registry.promotion_rules import ALIAS_NAME, check_alias_name
from registry.service.aliases import VersionRef
from registry.service.registry_service import RegistryService


def _alias(request: web.Request, *, new: bool = False) -> str:
    """The alias in the path: a malformed one names nothing (404), except where a PUT would create it (400)."""
    name = request.match_info["alias"]
    if not ALIAS_NAME.fullmatch(name):
        if new:
            check_alias_name(name)  # raises InvalidInput naming the rule
            raise InvalidInput("invalid alias")  # pragma: no cover - check_alias_name raised
        raise NotFound("no such alias: an alias is 1-32 of a-z 0-9 - starting with a letter")
    return name


async def list_aliases(service: RegistryService, request: web.Request) -> web.StreamResponse:
    rows = await service.aliases.list(experiment_name(request))
    return web.json_response([documents.alias(row) for row in rows])


async def get_alias(service: RegistryService, request: web.Request) -> web.StreamResponse:
    row = await service.aliases.get(experiment_name(request), _alias(request))
    return web.json_response(documents.alias(row))


async def put_alias(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name, alias = experiment_name(request), _alias(request, new=True)
    parsed = await body(request, AliasBody)
    row = await service.aliases.put(name, alias, VersionRef(parsed.model, parsed.version))
    return web.json_response(documents.alias(row))


async def delete_alias(service: RegistryService, request: web.Request) -> web.StreamResponse:
    await service.aliases.delete(experiment_name(request), _alias(request))
    return web.Response(status=204)


async def get_promotion(service: RegistryService, request: web.Request) -> web.StreamResponse:
    return web.json_response(documents.promotion(await service.promotions.get(experiment_name(request))))


async def start_canary(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name = experiment_name(request)
    parsed = await body(request, CanaryBody)
    row = await service.promotions.canary(name, VersionRef(parsed.model, parsed.version), parsed.percent)
    return web.json_response(documents.promotion(row))


async def finish_promotion(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name = experiment_name(request)
    parsed = await body(request, PromotionBody)
    return web.json_response(documents.promotion(await service.promotions.finish(name, parsed.model)))


async def abort_promotion(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name = experiment_name(request)
    parsed = await body(request, PromotionBody)
    return web.json_response(documents.promotion(await service.promotions.abort(name, parsed.model)))
