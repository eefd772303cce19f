"""A FAKE Kubernetes API server: a generic object store behind the REST paths the controller and the scheduler use.

No kube-apiserver can be installed here (see infra.md), so code that talks to Kubernetes runs the real
``kubernetes`` client (``kubernetes.aio``) against this aiohttp server on 127.0.0.1. It is a fake, not an
emulator. What it implements, for every kind in :data:`KINDS`:

- create (POST; 409 AlreadyExists), get (404 NotFound), list (all namespaces or one; ``labelSelector`` with
  ``k=v``, ``k!=v``, ``k`` and ``!k``; ``fieldSelector=metadata.name=...`` and ``metadata.namespace=...``),
  replace (PUT, with the ``resourceVersion`` precondition: 409 Conflict when stale), patch (JSON merge patch
  RFC 7386; JSON patch RFC 6902 add/remove/replace/test; "strategic merge" is treated as a merge patch, which
  is right for maps and wrong for lists of named items: keep patches to maps), delete;
- ``metadata``: uid, creationTimestamp, a global ``resourceVersion`` bumped by every write, ``generation``
  bumped when anything outside metadata and status changes;
- the status subresource for the kinds that have one (``/status``: PUT and PATCH change only status, writes to
  the main resource leave status alone);
- finalizers: DELETE of an object with finalizers sets ``deletionTimestamp`` and keeps it; the update that
  removes the last finalizer deletes it;
- watch (``watch=true``): without a resourceVersion (or "0") a synthetic ADDED for every object, then changes;
  from resourceVersion N the changes after N, or an ``ERROR`` event with 410 Expired when N was compacted away
  (:meth:`FakeKubernetesApi.compact`); ``timeoutSeconds`` ends the stream; :meth:`close_watches` ends them all;
- TokenReview (``authentication.k8s.io/v1``): create answers from :attr:`FakeKubernetesApi.token_reviews`; a
  token listed in :attr:`FakeKubernetesApi.token_audiences` (a projected token's audiences) is authenticated only
  for a review whose ``spec.audiences`` names one of them (``status.audiences``: the ones in common), as an API
  server does; a review without audiences gets the API server's own, :data:`API_SERVER_AUDIENCE`.

batch/v1 Jobs are one more kind here; what the Job controller does with them (a pod per Job, completion, the
backoffLimit and podFailurePolicy) is the layer in tests/support/fake_job_controller.py.

Tests drive and inspect it directly (:meth:`objects`, :meth:`get`, :meth:`put`, :meth:`set_status`,
:meth:`remove`); every request is recorded, :meth:`inject_error` makes the next matching requests fail with a
Kubernetes ``Status``, and :meth:`hold` keeps matching requests waiting until released (to line up races). What
it does not do: admission, defaulting, schema validation, garbage collection by owner
references, real pods, or any controller (no kubelet: tests run what pods would run as local processes).

Over 400 lines on purpose: one API server's rules (resourceVersion, generation, status subresource, finalizers)
and the watch that replays its writes are one state machine over one store; the kinds' controllers are layers on
top (tests/support/fake_job_controller.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import web

JsonObject = dict[str, Any]
# The parsed request body (None when there is none), read once by the recording middleware.
_BODY: web.RequestKey[Any] = web.RequestKey("body")


@dataclass(frozen=True)
class Kind:
    """One resource kind the fake serves: where its REST paths are and which rules apply to it."""

    group: str  # "" for the core group (paths under /api/v1)
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    # The status a create leaves: Go types whose status fields are not omitempty serialise them as zeros.
    initial_status: tuple[tuple[str, int], ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """How the API server names the kind in its messages: ``models.mlops.seldon.io``, ``services``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


SERVICES = Kind("", "v1", "services", "Service")
SECRETS = Kind("", "v1", "secrets", "Secret")
CONFIG_MAPS = Kind("", "v1", "configmaps", "ConfigMap")
PODS = Kind("", "v1", "pods", "Pod", status_subresource=True)
EVENTS = Kind("", "v1", "events", "Event")
STATEFUL_SETS = Kind(
    "apps",
    "v1",
    "statefulsets",
    "StatefulSet",
    status_subresource=True,
    initial_status=(("replicas", 0), ("availableReplicas", 0)),
)
LEASES = Kind("coordination.k8s.io", "v1", "leases", "Lease")
JOBS = Kind("batch", "v1", "jobs", "Job", status_subresource=True)
SELDON_GROUP = "mlops.seldon.io"
MODELS = Kind(SELDON_GROUP, "v1alpha1", "models", "Model", status_subresource=True)
SERVERS = Kind(SELDON_GROUP, "v1alpha1", "servers", "Server", status_subresource=True)
SERVER_CONFIGS = Kind(SELDON_GROUP, "v1alpha1", "serverconfigs", "ServerConfig")
PIPELINES = Kind(SELDON_GROUP, "v1alpha1", "pipelines", "Pipeline", status_subresource=True)
EXPERIMENTS = Kind(SELDON_GROUP, "v1alpha1", "experiments", "Experiment", status_subresource=True)
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # what a review without audiences wants
TOKEN_REVIEWS = Kind("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False)

KINDS: tuple[Kind, ...] = (
    SERVICES,
    SECRETS,
    CONFIG_MAPS,
    PODS,
    EVENTS,
    STATEFUL_SETS,
    LEASES,
    JOBS,
    MODELS,
    SERVERS,
    SERVER_CONFIGS,
    PIPELINES,
    EXPERIMENTS,
    TOKEN_REVIEWS,
)
_BY_PATH: dict[tuple[str, str, str], Kind] = {(k.group, k.version, k.plural): k for k in KINDS}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str


@dataclass
class _InjectedError:
    method: str
    path_suffix: str
    status: int
    reason: str
    times: int


@dataclass
class HeldRequests:
    """Requests held before they are handled (see :meth:`FakeKubernetesApi.hold`) until :meth:`release`."""

    method: str
    path_suffix: str
    waiting: int = 0  # held right now
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class _Watcher:
    kind: Kind
    namespace: str | None
    name: str | None
    label_selector: str
    queue: asyncio.Queue[JsonObject | None] = field(default_factory=asyncio.Queue)

    def wants(self, kind: Kind, obj: JsonObject) -> bool:
        metadata = obj["metadata"]
        return (
            kind == self.kind
            and self.namespace in (None, metadata.get("namespace"))
            and self.name in (None, metadata["name"])
            and labels_match(metadata.get("labels") or {}, self.label_selector)
        )


@dataclass(frozen=True)
class _Target:
    """What a request's path names: a kind, maybe a namespace, maybe an object and a subresource."""

    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


class ApiError(Exception):
    """A request the API server refuses, carried as the Kubernetes ``Status`` it answers with."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self) -> web.Response:
        return web.json_response(status_object(self.code, self.reason, self.message), status=self.code)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str) -> JsonObject:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def labels_match(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k`` (exists) and ``!k`` (absent)."""
    for requirement in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in requirement:
            key, _, value = requirement.partition("!=")
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, _, value = requirement.partition("=")
            if labels.get(key) != value.lstrip("="):
                return False
        elif requirement.startswith("!"):
            if requirement[1:] in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge key by key, ``null`` removes a key, anything else replaces the target."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"json patch path {path!r} does not start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def json_patch(document: JsonObject, operations: list[JsonObject]) -> JsonObject:
    """RFC 6902's add, remove, replace and test (what clients send to Kubernetes in practice)."""
    result = copy.deepcopy(document)
    for operation in operations:
        parts = _pointer(str(operation.get("path", "")))
        if not parts:
            raise ApiError(422, "Invalid", "json patch of the whole object is not supported by the fake")
        parent: Any = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        try:
            _apply_operation(parent, parts[-1], operation)
        except (KeyError, IndexError, ValueError) as error:
            message = f"json patch {operation.get('op')} at {operation.get('path')}: {error}"
            raise ApiError(422, "Invalid", message) from error
    return result


def _apply_operation(parent: Any, last: str, operation: JsonObject) -> None:
    op, value = operation.get("op"), copy.deepcopy(operation.get("value"))
    key: int | str = (len(parent) if last == "-" else int(last)) if isinstance(parent, list) else last
    if op == "test":
        if parent[key] != value:
            raise ApiError(422, "Invalid", f"json patch test failed at {operation.get('path')}")
    elif op == "remove":
        del parent[key]
    elif op == "add" and isinstance(parent, list):
        parent.insert(int(key), value)
    elif op == "add" or (op == "replace" and (isinstance(parent, list) or key in parent)):
        parent[key] = value
    elif op == "replace":
        raise ApiError(422, "Invalid", f"json patch replace of missing {operation.get('path')}")
    else:
        raise ApiError(422, "Invalid", f"json patch op {op!r} is not supported by the fake")


def _outside_metadata_and_status(obj: JsonObject) -> JsonObject:
    return {key: value for key, value in obj.items() if key not in ("metadata", "status", "kind", "apiVersion")}


class FakeKubernetesApi:
    """The fake API server's objects and its aiohttp application. Start it with :meth:`start`.

    Invariants: every stored object's ``metadata.resourceVersion`` is the version of the write that stored it,
    and the versions of :attr:`_history` increase; an object with ``deletionTimestamp`` has finalizers.
    """

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token  # when set, requests without "Authorization: Bearer <token>" get 401
        self.requests: list[RecordedRequest] = []
        # TokenReview answers: token -> the status the API server gives it (absent: not authenticated).
        self.token_reviews: dict[str, JsonObject] = {}
        # The audiences a token was issued for (absent: the API server's own, API_SERVER_AUDIENCE).
        self.token_audiences: dict[str, list[str]] = {}
        self._objects: dict[tuple[Kind, str, str], JsonObject] = {}  # (kind, namespace or "", name)
        self._version = 1000
        self._oldest_watchable = 0  # events below this resourceVersion are "compacted": watching them is 410
        self._history: list[tuple[int, Kind, str, JsonObject]] = []  # (rv, kind, event type, object)
        self._watchers: list[_Watcher] = []
        self._errors: list[_InjectedError] = []
        self._holds: list[HeldRequests] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._record_and_authorise], client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/api/{tail:.*}", self._handle)
        app.router.add_route("*", "/apis/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- what tests drive and inspect -------------------------------------------------------------------------

    def inject_error(self, method: str, path_suffix: str, status: int, reason: str, *, times: int = 1) -> None:
        """The next ``times`` requests with ``method`` whose path ends with ``path_suffix`` get ``status``."""
        self._errors.append(_InjectedError(method, path_suffix, status, reason, times))

    def clear_errors(self) -> None:
        """Forget every injected error not yet used up: the API server answers again."""
        self._errors.clear()

    def hold(self, method: str, path_suffix: str) -> HeldRequests:
        """Hold every request with ``method`` whose path ends with ``path_suffix`` (recorded, not yet handled) until
        ``release()``: how a test lines up two clients' writes of one version, so both reach the store together."""
        held = HeldRequests(method, path_suffix)
        self._holds.append(held)
        return held

    def requests_for(self, method: str, path_suffix: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    def close_watches(self) -> None:
        """End every open watch stream, as an API server does when its watch timeout expires or it restarts."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)

    def compact(self) -> None:
        """Forget the event history: a watch resuming from an older resourceVersion now gets 410 Gone."""
        self._oldest_watchable = self._version + 1
        self._history.clear()

    def objects(self, kind: Kind, namespace: str | None = None) -> list[JsonObject]:
        """The stored objects of ``kind`` (copies), in one namespace or all, sorted by namespace and name."""
        found = [
            copy.deepcopy(obj)
            for (k, ns, _), obj in sorted(self._objects.items(), key=lambda item: item[0][1:])
            if k == kind and namespace in (None, ns)
        ]
        return found

    def get(self, kind: Kind, name: str, namespace: str = "default") -> JsonObject | None:
        obj = self._objects.get((kind, namespace if kind.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def put(self, kind: Kind, obj: JsonObject) -> JsonObject:
        """Create or replace ``obj`` as a client would (status kept on replace), without a request: for setup."""
        metadata = obj.setdefault("metadata", {})
        namespace = metadata.setdefault("namespace", "default") if kind.namespaced else ""
        existing = self._objects.get((kind, namespace, metadata["name"]))
        if existing is None:
            return copy.deepcopy(self._create(kind, namespace, copy.deepcopy(obj)))
        return copy.deepcopy(self._replace(kind, existing, copy.deepcopy(obj), status_only=False))

    def set_status(self, kind: Kind, name: str, status: JsonObject, namespace: str = "default") -> JsonObject:
        """Write an object's status as its controller would (a kubelet's readiness, a StatefulSet's replicas)."""
        existing = self._require(kind, namespace if kind.namespaced else "", name)
        return copy.deepcopy(self._replace(kind, existing, {"status": copy.deepcopy(status)}, status_only=True))

    def remove(self, kind: Kind, name: str, namespace: str = "default") -> None:
        """Delete as a client would: with finalizers, only marked for deletion."""
        self._delete(self._require(kind, namespace if kind.namespaced else "", name), kind)

    # -- the store --------------------------------------------------------------------------------------------

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _emit(self, kind: Kind, event: str, obj: JsonObject) -> None:
        snapshot = copy.deepcopy(obj)
        self._history.append((self._version, kind, event, snapshot))
        for watcher in self._watchers:
            if watcher.wants(kind, snapshot):
                watcher.queue.put_nowait({"type": event, "object": snapshot})

    def _require(self, kind: Kind, namespace: str, name: str) -> JsonObject:
        obj = self._objects.get((kind, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.resource} "{name}" not found')
        return obj

    def _create(self, kind: Kind, namespace: str, obj: JsonObject) -> JsonObject:
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = f"{metadata['generateName']}{uuid.uuid4().hex[:5]}"
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(422, "Invalid", f"{kind.kind} metadata.name: Required value")
        key = (kind, namespace, name)
        if key in self._objects:
            raise ApiError(409, "AlreadyExists", f'{kind.resource} "{name}" already exists')
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if kind.namespaced:
            metadata["namespace"] = namespace
        metadata.pop("deletionTimestamp", None)
        metadata.update(
            uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1, resourceVersion=self._next_version()
        )
        if kind.status_subresource:
            obj["status"] = dict(kind.initial_status)  # a create sets no status where status is a subresource
        self._objects[key] = obj
        self._emit(kind, "ADDED", obj)
        return obj

    def _replace(self, kind: Kind, existing: JsonObject, new: JsonObject, *, status_only: bool) -> JsonObject:
        """Store ``new`` over ``existing``: what a PUT or a patch (already applied) leaves."""
        old_metadata = existing["metadata"]
        sent_version = (new.get("metadata") or {}).get("resourceVersion")
        if sent_version not in (None, "", old_metadata["resourceVersion"]):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.resource} "{old_metadata["name"]}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        stored = copy.deepcopy(existing)
        if status_only:
            stored["status"] = copy.deepcopy(new.get("status") or {})
        else:
            metadata = copy.deepcopy(new.get("metadata") or {})
            for kept in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if kept in old_metadata:
                    metadata[kept] = old_metadata[kept]
                else:
                    metadata.pop(kept, None)
            status = existing.get("status")
            stored = {**copy.deepcopy(new), "metadata": metadata, "apiVersion": kind.api_version, "kind": kind.kind}
            if kind.status_subresource or "status" not in new:
                stored.pop("status", None)
                if status is not None:
                    stored["status"] = copy.deepcopy(status)
            if _outside_metadata_and_status(stored) != _outside_metadata_and_status(existing):
                metadata["generation"] = int(old_metadata.get("generation", 1)) + 1
            if old_metadata.get("deletionTimestamp") and set(metadata.get("finalizers") or []) - set(
                old_metadata.get("finalizers") or []
            ):
                raise ApiError(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                )
        stored["metadata"]["resourceVersion"] = self._next_version()
        key = (kind, old_metadata.get("namespace", "") if kind.namespaced else "", old_metadata["name"])
        if stored["metadata"].get("deletionTimestamp") and not stored["metadata"].get("finalizers"):
            del self._objects[key]
            self._emit(kind, "DELETED", stored)
            return stored
        self._objects[key] = stored
        self._emit(kind, "MODIFIED", stored)
        return stored

    def _delete(self, obj: JsonObject, kind: Kind, propagation_policy: str | None = None) -> JsonObject:
        """Delete ``obj`` (with finalizers: only mark it). This fake has no garbage collector, so dependents stay
        whatever the ``propagation_policy``; a controller layer over it may collect them."""
        metadata = obj["metadata"]
        key = (kind, metadata.get("namespace", "") if kind.namespaced else "", metadata["name"])
        if metadata.get("finalizers"):
            if not metadata.get("deletionTimestamp"):
                metadata.update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
                metadata["resourceVersion"] = self._next_version()
                self._emit(kind, "MODIFIED", obj)
            return obj
        del self._objects[key]
        metadata["resourceVersion"] = self._next_version()
        self._emit(kind, "DELETED", obj)
        return obj

    # -- HTTP -------------------------------------------------------------------------------------------------

    @web.middleware
    async def _record_and_authorise(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return ApiError(400, "BadRequest", "the request body is not JSON").response()
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), body, request.content_type)
        )
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return ApiError(401, "Unauthorized", "Unauthorized").response()
        for held in self._holds:
            if not held.released.is_set() and held.method == request.method and request.path.endswith(held.path_suffix):
                held.waiting += 1
                try:
                    await held.released.wait()
                finally:
                    held.waiting -= 1
        for error in self._errors:
            if error.times > 0 and error.method == request.method and request.path.endswith(error.path_suffix):
                error.times -= 1
                return ApiError(
                    error.status, error.reason, f"fake: injected {error.status} {error.reason} for {request.path}"
                ).response()
        request[_BODY] = body
        try:
            response: web.StreamResponse = await handler(request)
        except ApiError as error:
            return error.response()
        return response

    @staticmethod
    def _target(path: str) -> _Target:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the fake serves no {path}")
        namespace: str | None = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the fake serves no {path}")
        kind = _BY_PATH.get((group, version, rest[0]))
        if kind is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        name = rest[1] if len(rest) >= 2 else None
        subresource = rest[2] if len(rest) == 3 else None
        if subresource is not None and (subresource != "status" or not kind.status_subresource):
            raise ApiError(404, "NotFound", f"{kind.resource} has no subresource {subresource!r} in the fake")
        if kind.namespaced and namespace is None and name is not None:
            raise ApiError(404, "NotFound", f"{kind.resource} is namespaced: {path}")
        return _Target(kind, namespace, name, subresource)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request.path)
        if target.kind == TOKEN_REVIEWS:
            if request.method != "POST":
                raise ApiError(405, "MethodNotAllowed", "tokenreviews only take create")
            return self._review_token(request[_BODY])
        if target.name is None:
            return await self._handle_collection(request, target)
        return self._handle_object(request, target, target.name)

    async def _handle_collection(self, request: web.Request, target: _Target) -> web.StreamResponse:
        query, body = dict(request.query), request[_BODY]
        if request.method == "GET" and query.get("watch") in ("true", "1", "True"):
            return await self._watch(request, target, query)
        if request.method == "GET":
            return web.json_response(self._list(target, query))
        if request.method != "POST":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} on a collection")
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of a create must be an object")
        if target.kind.namespaced and target.namespace is None:
            raise ApiError(405, "MethodNotAllowed", "create a namespaced object in its namespace")
        namespace = (target.namespace or "") if target.kind.namespaced else ""
        return web.json_response(self._create(target.kind, namespace, copy.deepcopy(body)), status=201)

    def _handle_object(self, request: web.Request, target: _Target, name: str) -> web.Response:
        body, method = request[_BODY], request.method
        namespace = (target.namespace or "") if target.kind.namespaced else ""
        existing = self._require(target.kind, namespace, name)
        status_only = target.subresource == "status"
        if method == "GET":
            return web.json_response(existing)
        if method == "PUT" and isinstance(body, dict):
            return web.json_response(self._replace(target.kind, existing, body, status_only=status_only))
        if method == "PUT":
            raise ApiError(400, "BadRequest", "the body of a replace must be an object")
        if method == "PATCH":
            patched = self._patched(existing, body, request.content_type)
            return web.json_response(self._replace(target.kind, existing, patched, status_only=status_only))
        if method == "DELETE":
            policy = body.get("propagationPolicy") if isinstance(body, dict) else None
            policy = policy or request.query.get("propagationPolicy")
            return web.json_response(self._delete(existing, target.kind, policy))
        raise ApiError(405, "MethodNotAllowed", f"{method} on an object")

    @staticmethod
    def _patched(existing: JsonObject, body: Any, content_type: str) -> JsonObject:
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a json patch is a list of operations")
            return json_patch(existing, body)
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch is an object")
            patched: JsonObject = merge_patch(existing, body)
            # A patch without a resourceVersion has no precondition: it applies to the stored version.
            patched["metadata"]["resourceVersion"] = (body.get("metadata") or {}).get(
                "resourceVersion", existing["metadata"]["resourceVersion"]
            )
            return patched
        raise ApiError(415, "UnsupportedMediaType", f"the fake takes no patch of type {content_type!r}")

    def _selected(self, target: _Target, query: dict[str, str]) -> list[JsonObject]:
        names: set[str] | None = None
        namespace = target.namespace
        for requirement in filter(None, query.get("fieldSelector", "").split(",")):
            field_name, _, value = requirement.partition("=")
            if field_name == "metadata.name":
                names = {value.lstrip("=")}
            elif field_name == "metadata.namespace":
                namespace = value.lstrip("=")
            else:
                raise ApiError(400, "BadRequest", f"field label not supported by the fake: {field_name}")
        return [
            obj
            for (kind, ns, name), obj in sorted(self._objects.items(), key=lambda item: item[0][1:])
            if kind == target.kind
            and namespace in (None, ns)
            and (names is None or name in names)
            and labels_match(obj["metadata"].get("labels") or {}, query.get("labelSelector", ""))
        ]

    def _list(self, target: _Target, query: dict[str, str]) -> JsonObject:
        return {
            "apiVersion": target.kind.api_version,
            "kind": f"{target.kind.kind}List",
            "metadata": {"resourceVersion": str(self._version)},
            "items": self._selected(target, query),
        }

    def _watched_from(self, watcher: _Watcher, target: _Target, query: dict[str, str]) -> Iterable[JsonObject]:
        since = query.get("resourceVersion") or "0"
        if since == "0":
            return [{"type": "ADDED", "object": copy.deepcopy(obj)} for obj in self._selected(target, query)]
        if int(since) < self._oldest_watchable:
            gone = status_object(410, "Expired", f"too old resource version: {since} ({self._oldest_watchable})")
            return [{"type": "ERROR", "object": gone}]
        return [
            {"type": event, "object": obj}
            for version, kind, event, obj in self._history
            if version > int(since) and watcher.wants(kind, obj)
        ]

    async def _watch(self, request: web.Request, target: _Target, query: dict[str, str]) -> web.StreamResponse:
        name = None
        for requirement in filter(None, query.get("fieldSelector", "").split(",")):
            if requirement.startswith("metadata.name="):
                name = requirement.removeprefix("metadata.name=").lstrip("=")
        watcher = _Watcher(target.kind, target.namespace, name, query.get("labelSelector", ""))
        if not (query.get("resourceVersion") or "0").isdigit():
            raise ApiError(400, "BadRequest", f"resourceVersion {query.get('resourceVersion')!r} is not a number")
        backlog = list(self._watched_from(watcher, target, query))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if backlog and backlog[0]["type"] == "ERROR":
            await response.write(json.dumps(backlog[0]).encode() + b"\n")
            return response
        for event in backlog:
            watcher.queue.put_nowait(event)
        self._watchers.append(watcher)
        try:
            async with asyncio.timeout(float(query.get("timeoutSeconds") or 3600)):
                while (event_data := await watcher.queue.get()) is not None:
                    await response.write(json.dumps(event_data).encode() + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass  # the server's watch timeout, or the client went away
        finally:
            self._watchers.remove(watcher)
        return response

    def _review_token(self, body: Any) -> web.Response:
        token = ((body or {}).get("spec") or {}).get("token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            raise ApiError(400, "BadRequest", "a TokenReview needs spec.token")
        status = copy.deepcopy(self.token_reviews.get(token, {"authenticated": False, "error": "invalid token"}))
        wanted = body["spec"].get("audiences") or [API_SERVER_AUDIENCE]
        issued_for = self.token_audiences.get(token, [API_SERVER_AUDIENCE])
        common = [audience for audience in wanted if audience in issued_for]
        if status.get("authenticated") and not common:
            status = {"authenticated": False, "error": "token audiences is invalid for the target audiences"}
        elif status.get("authenticated"):
            status["audiences"] = common
        review = {
            "apiVersion": TOKEN_REVIEWS.api_version,
            "kind": TOKEN_REVIEWS.kind,
            "metadata": {"creationTimestamp": None},
            "spec": body["spec"],
            "status": status,
        }
        return web.json_response(review, status=201)
