"""The registry's domain errors; the REST edge (registry/api/errors.py) gives each its HTTP status. No HTTP here."""

from __future__ import annotations


class RegistryError(Exception):
    """An error with a message fit to show the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(RegistryError):
    """No such experiment, split or model (404)."""


class InvalidInput(RegistryError):
    """A request the registry cannot act on as written (400): a srcpath outside the datasets root, both
    directives and a split, a split of another experiment."""


class Conflict(RegistryError):
    """A request the current state does not allow that no lifecycle table decides (409): a split of an experiment
    without a srcpath; a unit of work that lost the race to other writers too many times running."""


class Unavailable(RegistryError):
    """What the request needs is not there (503): the database, or a port this registry was not given (the
    training launcher, the deployer, the split computation)."""


class PortFailed(RegistryError):
    """A port (training launcher, deployer) refused or failed the request (502)."""
