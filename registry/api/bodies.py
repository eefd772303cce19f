"""The request bodies of seed 002's calls, with the seed's JSON names: strict types, unknown fields refused, every
list, map and string bounded. pydantic checks them and gives /openapi.json their JSON Schemas."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

# The directives language owns its limits (registry/data/directives.py); the body refuses more before parsing.
from registry.data.directives import MAX_DIRECTIVES, parse_directives
from registry.data.directives import MAX_LINE_CHARS as MAX_DIRECTIVE_CHARS

MAX_NAME_CHARS: Final = 128
MAX_DESCRIPTION_CHARS: Final = 10_000
MAX_FEATURES: Final = 1000
MAX_HYPERPARAMETERS: Final = 100

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION_CHARS)]


def _parsed(lines: list[str]) -> list[str]:
    """Directives are checked when they are accepted, whichever call brings them: an unknown directive, a missing
    argument or a refused expression is a 400 naming it and its line (DirectiveError is a ValueError, which pydantic
    reports as this field's problem), never a split that fails later."""
    parse_directives(lines)
    return lines


Directives = Annotated[
    list[Annotated[str, StringConstraints(max_length=MAX_DIRECTIVE_CHARS)]],
    Field(max_length=MAX_DIRECTIVES),
    AfterValidator(_parsed),
]
Features = Annotated[list[Name], Field(max_length=MAX_FEATURES)]
HyperparameterValue = StrictStr | StrictInt | StrictFloat | StrictBool
Hyperparameters = Annotated[dict[Name, HyperparameterValue], Field(max_length=MAX_HYPERPARAMETERS)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ExperimentBody(Body):
    """PUT /experiments/{name}. srcpath, outcome and outcomeType are defined once (409 when redefined)."""

    description: Description | None = None
    srcpath: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None
    outcome: Name | None = None
    outcome_type: Name | None = Field(default=None, alias="outcomeType")
    directives: Directives | None = None


class SplitParameters(Body):
    # The seed writes "percent": "80": a numeric string is read as its number.
    percent: float = Field(gt=0, lt=100, strict=False, description="percent of the rows that go to training")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = Field(
        default=None, description="random splits: the same seed gives the same split"
    )


class SplitBody(Body):
    """POST /experiments/{name}/splits, and POST .../models/{id}/split (where directives default to the model's)."""

    kind: Literal["random", "first"] = Field(alias="type")
    parameters: SplitParameters
    directives: Directives | None = None
    split_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    description: Description = ""


class ModelBody(Body):
    """POST /experiments/{name}/models: directives or an existing split, not both; the algorithm and its
    hyper-parameters may be chosen here already (checked against the training catalogue: an unknown one is a 400)."""

    name: Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)] = ""
    description: Description = ""
    directives: Directives | None = None
    split: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    features: Features | None = None
    algorithm: Name | None = None
    hyperparameters: Hyperparameters | None = None


class DirectivesBody(Body):
    directives: Directives


class TrainBody(Body):
    """POST .../train: without an algorithm, the one the model was created with (and its hyper-parameters unless
    some are given)."""

    algorithm: Name | None = None
    hyperparameters: Hyperparameters | None = None
    features: Features | None = None


ModelId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
VersionNumber = Annotated[int, Field(ge=1, le=10**9)]


class AliasBody(Body):
    """PUT /experiments/{name}/aliases/{alias}: the registered version the alias is moved to."""

    model: ModelId = Field(description="the model's id (a retrained version is another model of the experiment)")
    version: VersionNumber | None = Field(default=None, description="the model's registered version; default: newest")


class CanaryBody(Body):
    """POST /experiments/{name}/promotion/canary: start (or re-weight) a canary of this version."""

    model: ModelId
    version: VersionNumber | None = None
    percent: Annotated[int, Field(ge=1, le=99)] = Field(
        description="of the stable name's traffic to the candidate (100 is finish)"
    )


class PromotionBody(Body):
    """POST /experiments/{name}/promotion/finish and .../abort: the candidate's model, as the canary named it."""

    model: ModelId
