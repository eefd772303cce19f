"""Seed 002's REST table, one handler per row, each only translating: read the request (requests.py), call the
service, answer the document (documents.py). ROUTES is the one list the app serves and /openapi.json describes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel

from modelplane.spec.registry_api import TOTAL_COUNT_HEADER
from registry.api import documents, promotion_handlers
from registry.api.bodies import (
    AliasBody,
    CanaryBody,
    DirectivesBody,
    ExperimentBody,
    ModelBody,
    PromotionBody,
    SplitBody,
    TrainBody,
)
from registry.api.requests import (
    body,
    experiment_name,
    models_order,
    new_experiment_name,
    page,
    resource_id,
    version_number,
)
from registry.service.experiments import ExperimentFields
from registry.service.models import NewModel, TrainingSpec
from registry.service.registry_service import RegistryService
from registry.service.splits import SplitSpec

Handler = Callable[[RegistryService, web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    answers: dict[int, str] = field(default_factory=dict)  # success status -> what it carries
    refusals: tuple[int, ...] = ()  # the error statuses this call can answer besides 400/404/413/500
    paged: bool = False
    query: tuple[str, ...] = ()  # extra query parameters


def _json(document: Any, status: int = 200) -> web.Response:
    return web.json_response(document, status=status)


def _paged(documents_: list[dict[str, Any]], total: int) -> web.Response:
    response = _json(documents_)
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return response


def _split_spec(parsed: SplitBody) -> SplitSpec:
    return SplitSpec(
        kind=parsed.kind,
        percent=parsed.parameters.percent,
        seed=parsed.parameters.seed,
        directives=tuple(parsed.directives or ()),
        schema=parsed.split_schema,
        description=parsed.description,
    )


async def list_experiments(service: RegistryService, request: web.Request) -> web.StreamResponse:
    offset, limit = page(request)
    found = await service.experiments.list(request.query.get("srcpath"), offset, limit)
    return _paged([documents.experiment(row) for row in found.rows], found.total)


async def list_datasets(service: RegistryService, request: web.Request) -> web.StreamResponse:
    offset, limit = page(request)
    found = await service.datasets.list(request.query.get("srcpath"), offset, limit)
    return _paged([documents.dataset(row) for row in found.rows], found.total)


async def get_dataset(service: RegistryService, request: web.Request) -> web.StreamResponse:
    return _json(documents.dataset(await service.datasets.get(resource_id(request, "dataset", "dataset"))))


async def get_experiment(service: RegistryService, request: web.Request) -> web.StreamResponse:
    return _json(documents.experiment(await service.experiments.get(experiment_name(request))))


async def put_experiment(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name = new_experiment_name(request)
    parsed = await body(request, ExperimentBody)
    fields = ExperimentFields(
        description=parsed.description,
        srcpath=parsed.srcpath,
        outcome=parsed.outcome,
        outcome_type=parsed.outcome_type,
        directives=parsed.directives,
    )
    row, created = await service.experiments.put(name, fields)
    return _json(documents.experiment(row), 201 if created else 200)


async def delete_experiment(service: RegistryService, request: web.Request) -> web.StreamResponse:
    await service.experiments.delete(experiment_name(request))
    return web.Response(status=204)


async def list_splits(service: RegistryService, request: web.Request) -> web.StreamResponse:
    offset, limit = page(request)
    found = await service.splits.list(experiment_name(request), offset, limit)
    return _paged([documents.split(view, with_stats=False) for view in found.views], found.total)


async def create_split(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name = experiment_name(request)
    parsed = await body(request, SplitBody)
    row = await service.splits.create(name, _split_spec(parsed))
    return _json({"id": row.id}, 201)


async def get_split(service: RegistryService, request: web.Request) -> web.StreamResponse:
    view = await service.splits.get(experiment_name(request), resource_id(request, "split", "split"))
    return _json(documents.split(view, with_stats=True))


async def split_status(service: RegistryService, request: web.Request) -> web.StreamResponse:
    view = await service.splits.get(experiment_name(request), resource_id(request, "split", "split"))
    return _json(documents.split_status(view.split))


async def delete_split(service: RegistryService, request: web.Request) -> web.StreamResponse:
    await service.splits.delete(experiment_name(request), resource_id(request, "split", "split"))
    return web.Response(status=204)


async def create_model(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name = experiment_name(request)
    parsed = await body(request, ModelBody)
    new = NewModel(
        parsed.name,
        parsed.description,
        parsed.directives,
        parsed.split,
        parsed.features,
        parsed.algorithm,
        None if parsed.hyperparameters is None else dict(parsed.hyperparameters),
    )
    row = await service.models.create(name, new)
    return _json({"id": row.id}, 201)


async def list_models(service: RegistryService, request: web.Request) -> web.StreamResponse:
    offset, limit = page(request)
    found = await service.models.list(experiment_name(request), offset, limit, models_order(request))
    return _paged([documents.model(row) for row in found.rows], found.total)


async def get_model(service: RegistryService, request: web.Request) -> web.StreamResponse:
    row = await service.models.get(experiment_name(request), resource_id(request, "model", "model"))
    return _json(documents.model(row, await service.serving.of(row)))


async def model_status(service: RegistryService, request: web.Request) -> web.StreamResponse:
    row = await service.models.get(experiment_name(request), resource_id(request, "model", "model"))
    return _json(documents.model_status(row, await service.serving.of(row)))


async def delete_model(service: RegistryService, request: web.Request) -> web.StreamResponse:
    await service.models.delete(experiment_name(request), resource_id(request, "model", "model"))
    return web.Response(status=204)


async def create_model_split(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name, model_id = experiment_name(request), resource_id(request, "model", "model")
    parsed = await body(request, SplitBody)
    row = await service.models.split(name, model_id, _split_spec(parsed))
    return _json({"id": row.id}, 201)


async def delete_model_split(service: RegistryService, request: web.Request) -> web.StreamResponse:
    row = await service.models.unassign_split(experiment_name(request), resource_id(request, "model", "model"))
    return _json(documents.model(row))


async def put_directives(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name, model_id = experiment_name(request), resource_id(request, "model", "model")
    parsed = await body(request, DirectivesBody)
    return _json(documents.model(await service.models.put_directives(name, model_id, parsed.directives)))


async def train_model(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name, model_id = experiment_name(request), resource_id(request, "model", "model")
    parsed = await body(request, TrainBody)
    hyperparameters = None if parsed.hyperparameters is None else dict(parsed.hyperparameters)
    spec = TrainingSpec(parsed.algorithm, hyperparameters, parsed.features)
    return _json(documents.model(await service.training.train(name, model_id, spec)), 202)


async def list_versions(service: RegistryService, request: web.Request) -> web.StreamResponse:
    offset, limit = page(request)
    name, model_id = experiment_name(request), resource_id(request, "model", "model")
    found = await service.versions.list(name, model_id, offset, limit)
    return _paged([documents.model_version(row) for row in found.rows], found.total)


async def get_version(service: RegistryService, request: web.Request) -> web.StreamResponse:
    name, model_id = experiment_name(request), resource_id(request, "model", "model")
    row = await service.versions.get(name, model_id, version_number(request))
    return _json(documents.model_version(row))


async def deploy_model(service: RegistryService, request: web.Request) -> web.StreamResponse:
    row = await service.models.deploy(experiment_name(request), resource_id(request, "model", "model"))
    return _json(documents.model(row))


_EXPERIMENT: Final = "/experiments/{name}"
_SPLIT: Final = _EXPERIMENT + "/splits/{split}"
_MODEL: Final = _EXPERIMENT + "/models/{model}"
_ALIAS: Final = _EXPERIMENT + "/aliases/{alias}"
_PROMOTION: Final = _EXPERIMENT + "/promotion"

ROUTES: Final = (
    Route("GET", "/experiments", list_experiments, "list experiments", answers={200: "experiments"}, paged=True,
          query=("srcpath",)),
    Route("GET", "/datasets", list_datasets, "list the datasets splits have read (each version once)",
          answers={200: "datasets"}, paged=True, query=("srcpath",)),
    Route("GET", "/datasets/{dataset}", get_dataset, "get a dataset", answers={200: "dataset"}),
    Route("GET", _EXPERIMENT, get_experiment, "get an experiment", answers={200: "experiment"}),
    Route("PUT", _EXPERIMENT, put_experiment, "add or update an experiment", ExperimentBody,
          {200: "experiment (updated)", 201: "experiment (created)"}, (409,)),
    Route("DELETE", _EXPERIMENT, delete_experiment, "delete an experiment, its splits and models", answers={204: ""}),
    Route("GET", _EXPERIMENT + "/splits", list_splits, "list an experiment's splits", answers={200: "splits"},
          paged=True),
    Route("POST", _EXPERIMENT + "/splits", create_split, "add a split (computed in the background)", SplitBody,
          {201: "id"}, (409, 503)),
    Route("GET", _SPLIT, get_split, "get a split with its per-field stats", answers={200: "split"}),
    Route("GET", _SPLIT + "/status", split_status, "get a split's status", answers={200: "status"}),
    Route("DELETE", _SPLIT, delete_split, "delete a split (its models go back to PREPARING)", answers={204: ""},
          refusals=(409,)),
    Route("POST", _EXPERIMENT + "/models", create_model, "create a model (directives or a split)", ModelBody,
          {201: "id"}),
    Route("GET", _EXPERIMENT + "/models", list_models, "list an experiment's models (by a metric with sort)",
          answers={200: "models"}, paged=True, query=("sort", "order")),
    Route("GET", _MODEL, get_model, "get a model (serving: what the scheduler serves of it now)",
          answers={200: "model"}),
    Route("DELETE", _MODEL, delete_model, "delete a model", answers={204: ""}),
    Route("GET", _MODEL + "/status", model_status, "get a model's status (and what the scheduler serves of it)",
          answers={200: "status"}),
    Route("POST", _MODEL + "/split", create_model_split, "make a split for the model with its directives", SplitBody,
          {201: "id"}, (409, 503)),
    Route("DELETE", _MODEL + "/split", delete_model_split, "unassign the model's split", answers={200: "model"},
          refusals=(409,)),
    Route("PUT", _MODEL + "/directives", put_directives, "replace the model's directives (unassigns its split)",
          DirectivesBody, {200: "model"}, (409,)),
    Route("POST", _MODEL + "/train", train_model, "train the model", TrainBody, {202: "model"}, (409, 502, 503)),
    Route("POST", _MODEL + "/deploy", deploy_model, "deploy the model's newest version (answered once it serves)",
          answers={200: "model"}, refusals=(409, 502, 503)),
    Route("GET", _MODEL + "/versions", list_versions, "list the model's registered versions (one per training)",
          answers={200: "versions"}, paged=True),
    Route("GET", _MODEL + "/versions/{version}", get_version, "get a registered version: manifest, metrics, "
          "metadata, lineage", answers={200: "version"}),
    Route("GET", _EXPERIMENT + "/aliases", promotion_handlers.list_aliases, "list an experiment's aliases",
          answers={200: "aliases"}),
    Route("GET", _ALIAS, promotion_handlers.get_alias, "get an alias: the version it names", answers={200: "alias"}),
    Route("PUT", _ALIAS, promotion_handlers.put_alias, "move an alias to a version (production: deployed under the "
          "experiment's stable name; candidate: under its model's own name; others: labels)", AliasBody,
          {200: "alias"}, (409, 502, 503)),
    Route("DELETE", _ALIAS, promotion_handlers.delete_alias, "remove an alias (production: its stable name stops "
          "serving)", answers={204: ""}, refusals=(409, 502, 503)),
    Route("GET", _PROMOTION, promotion_handlers.get_promotion, "get the experiment's latest promotion",
          answers={200: "promotion"}),
    Route("POST", _PROMOTION + "/canary", promotion_handlers.start_canary, "start a canary: percent of the stable "
          "name's traffic to the candidate version (again: a new percent)", CanaryBody, {200: "promotion"},
          (409, 502, 503)),
    Route("POST", _PROMOTION + "/finish", promotion_handlers.finish_promotion, "make the canary's candidate "
          "production (all traffic), stop the canary, unload its own name", PromotionBody, {200: "promotion"},
          (409, 502, 503)),
    Route("POST", _PROMOTION + "/abort", promotion_handlers.abort_promotion, "stop the canary: all traffic to "
          "production again", PromotionBody, {200: "promotion"}, (409, 502, 503)),
)  # fmt: skip
