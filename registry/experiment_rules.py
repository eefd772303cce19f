"""What a PUT of an experiment may change (seed 002: "409 - if srcpath, outcome, or outcomeType is already defined
as another value"): an experiment is bound to one dataset and one outcome once they are given; everything else
(description, directives) a PUT replaces. Domain code: the REST edge maps a refusal to 409."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from registry.errors import Conflict

# The seed's JSON names of the fields that, once defined, keep their value.
DEFINED_ONCE: Final = ("srcpath", "outcome", "outcomeType")


def check_redefinition(name: str, current: Mapping[str, str | None], given: Mapping[str, str | None]) -> None:
    """Refuse (Conflict) when ``given`` sets a defined-once field that ``current`` holds as another
    value. A field ``given`` leaves out (None) keeps its value; one not yet defined may be defined now."""
    changed = [
        f"{field} is {current[field]!r}, not {given[field]!r}"
        for field in DEFINED_ONCE
        if current.get(field) is not None and given.get(field) is not None and current[field] != given[field]
    ]
    if changed:
        raise Conflict(f"experiment {name} is already defined: {'; '.join(changed)} (make a new experiment)")
