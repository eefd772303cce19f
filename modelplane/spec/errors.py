"""Domain errors: what went wrong, in words a person can act on, independent of any transport.

The servicers map each class to one gRPC status code (see scheduler/status_codes.py); nothing in the
domain imports grpc.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base of every error the scheduler reports to a caller."""


class InvalidArgument(SchedulerError):
    """The request is malformed: a bad name, a missing spec, an absurd count."""


class NotFound(SchedulerError):
    """The named thing does not exist."""


class FailedPrecondition(SchedulerError):
    """The request conflicts with the current state (e.g. a model still being deleted).

    Seldon's clients treat this code as "do not retry"; it is used where Seldon uses it.
    """


class AlreadyExists(SchedulerError):
    """The thing to create exists already."""


class ResourceExhausted(SchedulerError):
    """A limit was reached (too many models, a subscriber too far behind)."""


class Unavailable(SchedulerError):
    """The scheduler cannot serve this right now (shutting down, state store failing); retry later."""


class IllegalTransition(SchedulerError):
    """A state machine was asked for a transition its table does not allow. Never applied."""
