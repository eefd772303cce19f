"""A server interceptor that writes an audit line for every call of the Scheduler API that changes something,
accepted or refused, before the call is answered.

Audited (``AUDITED``): LoadModel, UnloadModel, LoadPipeline, UnloadPipeline, StartExperiment, StopExperiment,
ServerNotify, and the gateways' acknowledgements ModelStatusEvent and PipelineStatusEvent: those change what the
scheduler reports about a model or pipeline (forging one is how a client could make a model look Available), and
they come once per model or pipeline version change per gateway, so they are as rare as the mutations they follow.
Status, subscriptions and the routing stream change nothing and are not audited; the agents' Session stream is
the agents' observed state, not a caller's mutation.

Order on the server: the access check (when there is one) runs first and sets the caller (modelplane/auth/caller.py);
a call it refuses never gets here, so it tells ``AccessRefusals`` (below), which records it with
``AuditLog.record_refusal`` before ``context.abort`` (grpc.aio sends the status inside ``abort``). Then this
interceptor, then the request limits (scheduler/request_limits.py), whose refusals it records like the handlers'.
A request whose bytes are no message of its type never reaches a handler: this interceptor refuses it as
INVALID_ARGUMENT (gRPC would say UNKNOWN) and records that too.
When no access check set a caller, the call gets the anonymous one with a fresh request id and the peer's address:
whoever runs first sets the request id, the other keeps it. Log lines written while the call is served carry that
request id (modelplane/logs.py), so an audit line can be matched to them.

The versions before and after are read from the live state just before and after the handler; calls about one
resource at the same moment may see each other's change (the state store orders the changes themselves).

"Before the answer" holds for refusals too: grpc.aio sends a status inside ``context.abort``, before its exception
reaches this interceptor, so the context the handler gets writes the audit line before it aborts.

An audit line that cannot be written fails the call (INTERNAL, saying whether the change was applied), so that no
change is acknowledged without its line; mutations are idempotent, so the client's retry is safe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, cast

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.audit import AuditLog, AuditLogError, AuditRecord, Resource, audit_record
from modelplane.auth.access_table import rule_for_grpc
from modelplane.auth.caller import Caller, current_caller, new_request_id, serving
from modelplane.auth.request_resource import resource_of as request_resource
from modelplane.grpc_handlers import Context, WrappedHandlers, rewrapped

log = logging.getLogger(__name__)

SCHEDULER = pb.DESCRIPTOR.services_by_name["Scheduler"]
SCHEDULER_PREFIX = "/" + SCHEDULER.full_name + "/"

# The live version of a resource in the scheduler (None when it has none: unknown, deleted, or versionless).
VersionOf = Callable[[Resource], int | None]


def _servers_named(request: Any) -> Resource:
    # One line for the whole call: the servers it names, in its order (bounded by the audit record). The access
    # table names no single server here (no limited grant may cover several), so the audit reads them itself.
    return Resource("servers", ",".join(server.name for server in request.servers))


def _from_access_table(method: str) -> Callable[[Any], Resource]:
    # Where a request names its resource has one owner: the access table (modelplane/auth/access_table.py).
    rule = rule_for_grpc(method)
    fields = rule.resource if rule is not None else None

    def describe(request: Any) -> Resource:
        found = request_resource(request, fields)
        return Resource(found.kind, found.name, found.namespace)

    return describe


# Method name -> what its request is about.
AUDITED: dict[str, Callable[[Any], Resource]] = {
    name: _servers_named if name == "ServerNotify" else _from_access_table(SCHEDULER_PREFIX + name)
    for name in (
        "LoadModel",
        "UnloadModel",
        "LoadPipeline",
        "UnloadPipeline",
        "StartExperiment",
        "StopExperiment",
        "ServerNotify",
        "ModelStatusEvent",
        "PipelineStatusEvent",
    )
}


def resource_of(method: str, request: Any) -> Resource | None:
    """What a call of the Scheduler API (``method``: "/seldon.mlops.scheduler.Scheduler/LoadModel") is about, for
    an access check that refuses it (``AuditLog.record_refusal``); None for a call that changes nothing."""
    if not method.startswith(SCHEDULER_PREFIX):
        return None
    describe = AUDITED.get(method[len(SCHEDULER_PREFIX) :])
    return describe(request) if describe is not None else None


class AccessRefusals:
    """Records the calls the access check (modelplane/auth/grpc_access.py) refuses before they reach the audit
    interceptor: the mutations among them, with what they were about when the request could be read."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    async def __call__(self, method: str, request: object | None, caller: Caller, code: str, message: str) -> None:
        if not method.startswith(SCHEDULER_PREFIX) or method[len(SCHEDULER_PREFIX) :] not in AUDITED:
            return
        resource = resource_of(method, request) if isinstance(request, Message) else None
        try:
            await self._audit.record_refusal(caller, method, resource, code, message)
        except AuditLogError as error:
            # The refusal is sent all the same (nothing changed); the log says the line is missing.
            log.error("audit: the refusal of %s could not be recorded: %s", method, error)


def _outcome(context: Context, error: BaseException | None) -> tuple[str, str]:
    """The call's status code name and message, as the client will see them."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED", "the call was cancelled (by the client, or its deadline passed) before it was answered"
    code = cast(grpc.StatusCode | None, context.code())  # None until the call is answered with a code
    if error is not None and not isinstance(error, aio.AbortError):
        # grpc answers UNKNOWN; what the error says stays in the process's log (with the request id).
        return "UNKNOWN", f"unexpected {type(error).__name__}"
    if code is None:
        return "OK", ""
    return code.name, context.details() or ""


@dataclasses.dataclass(frozen=True, slots=True)
class Undecodable:
    """What the audited RPCs' requests deserialize to when their bytes are no message of their type: gRPC would
    answer UNKNOWN before any handler (so before the audit) ran; the audit refuses them as INVALID_ARGUMENT."""

    problem: str


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return Undecodable(str(error))

    return decode


class _AuditedContext:
    """The handler's view of its context: ``abort`` writes the audit line first, since grpc.aio sends the status
    inside ``abort``, before its exception reaches the interceptor. Everything else is the real context's."""

    def __init__(self, context: Context, before_abort: Callable[[grpc.StatusCode, str], Awaitable[None]]) -> None:
        self._context = context
        self._before_abort = before_abort

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        await self._before_abort(code, details)
        await self._context.abort(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self._before_abort(status.code, status.details)
        await self._context.abort_with_status(status)


def _audited(
    behavior: Callable[[Any, Context], Awaitable[Any]],
    rpc: str,
    describe: Callable[[Any], Resource],
    audit: AuditLog,
    version_of: VersionOf,
) -> Callable[[Any, Context], Awaitable[Any]]:
    method = rpc[len(SCHEDULER_PREFIX) :]
    request_type = SCHEDULER.methods_by_name[method].input_type.name

    async def audited(request: Message | Undecodable, context: Context) -> Any:
        caller = current_caller()
        if not caller.request_id:
            caller = dataclasses.replace(caller, request_id=new_request_id(), peer=caller.peer or context.peer())
        with serving(caller):
            if isinstance(request, Undecodable):
                message = f"the request is not a valid {request_type} message ({request.problem})"
                line = audit_record(caller, rpc, None, grpc.StatusCode.INVALID_ARGUMENT.name, message)
                await _write(audit, line, context, applied=False)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            resource = describe(request)
            before = version_of(resource)
            written = False

            async def write(code: str, message: str) -> None:
                nonlocal written
                written = True
                line = audit_record(
                    caller, rpc, resource, code, message, version_before=before, version_after=version_of(resource)
                )
                await _write(audit, line, context, applied=code == "OK")

            async def before_abort(code: grpc.StatusCode, details: str) -> None:
                if not written:
                    await write(code.name, details)

            error: BaseException | None = None
            try:
                return await behavior(request, cast(Context, _AuditedContext(context, before_abort)))
            except BaseException as raised:
                error = raised
                raise
            finally:
                if not written:  # answered by returning (or by an exception grpc turns into a status)
                    await write(*_outcome(context, error))

    return audited


async def _write(audit: AuditLog, line: AuditRecord, context: Context, *, applied: bool) -> None:
    about = f"{line.method} of {line.resource.kind} {line.resource.name}" if line.resource else line.method
    try:
        await audit.record(line)
    except AuditLogError as error:
        log.error("audit line of %s not written: %s", about, error)
        if applied:
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"the change was applied, but its audit line could not be written ({error}); retrying is safe",
            )
        return
    log.info("audited %s: %s", about, line.code)


class AuditInterceptor(aio.ServerInterceptor):
    """Audits the Scheduler service's mutating unary RPCs (``AUDITED``); every other call passes untouched."""

    def __init__(self, audit: AuditLog, version_of: VersionOf) -> None:
        self._audit = audit
        self._version_of = version_of
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(SCHEDULER_PREFIX):
            return handler
        describe = AUDITED.get(method[len(SCHEDULER_PREFIX) :])
        if describe is None:
            return handler
        # A unary handler's behaviour is a coroutine function (modelplane/grpc_handlers.py).
        return self._wrapped.get(
            method,
            handler,
            lambda given: rewrapped(
                given,
                lambda unary: _audited(unary, method, describe, self._audit, self._version_of),
                request_deserializer=_tolerant(given.request_deserializer),
            ),
        )
