"""A FAKE Kubernetes API server: the small subset of the REST API the Kubernetes Job launcher uses.

No kube-apiserver can be installed here (see infra.md), so the launcher's tests run the real ``kubernetes``
client against this aiohttp server on 127.0.0.1. It is a fake, not an emulator: it implements

- batch/v1 namespaced Jobs: create (POST), get, list with ``fieldSelector=metadata.name=...`` and
  ``labelSelector=k=v,...``, watch (``watch=true``: JSON lines from ``resourceVersion`` on, ``ERROR`` 410 when
  that version was compacted away), delete (recording the propagation policy);
- core/v1 Pods: list by ``labelSelector``;

with status transitions the test drives (``complete``, ``fail_pod``, ``exceed_deadline``) that apply the
Job's own ``backoffLimit`` and ``podFailurePolicy`` the way the Job controller does. Every request and its
body is recorded so tests can assert what the client sent; ``inject_error`` makes the next matching request
fail with a Kubernetes ``Status``. What it does not do: authentication beyond an optional bearer-token check,
admission, scheduling, real pods, or any other resource.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

JsonObject = dict[str, Any]
# The parsed request body ({} when there is none), read once by the recording middleware.
_BODY: web.RequestKey[JsonObject] = web.RequestKey("body")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: JsonObject | None


@dataclass
class _InjectedError:
    method: str
    path_suffix: str
    status: int
    reason: str
    times: int


@dataclass
class _Watcher:
    namespace: str
    name: str | None
    queue: asyncio.Queue[JsonObject | None] = field(default_factory=asyncio.Queue)


def _now() -> str:
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


def _labels_match(labels: dict[str, str], selector: str) -> bool:
    for requirement in filter(None, selector.split(",")):
        key, _, value = requirement.partition("=")
        if labels.get(key) != value.lstrip("="):  # "k=v" and "k==v" both mean equality
            return False
    return True


class FakeKubernetes:
    """The fake API server's state and its aiohttp application. Start it with :meth:`start`."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token  # when set, requests without "Authorization: Bearer <token>" get 401
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[tuple[str, str], JsonObject] = {}
        self.pods: dict[tuple[str, str], JsonObject] = {}
        self._version = 1000
        self._oldest_watchable = 0  # events below this resourceVersion are "compacted": watching them is 410
        self._history: list[tuple[int, str, str, JsonObject]] = []  # (rv, namespace, type, job) for watch replay
        self._watchers: list[_Watcher] = []
        self._errors: list[_InjectedError] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._record_and_authorise])
        app.router.add_post("/apis/batch/v1/namespaces/{namespace}/jobs", self._create_job)
        app.router.add_get("/apis/batch/v1/namespaces/{namespace}/jobs", self._list_jobs)
        app.router.add_get("/apis/batch/v1/namespaces/{namespace}/jobs/{name}", self._get_job)
        app.router.add_delete("/apis/batch/v1/namespaces/{namespace}/jobs/{name}", self._delete_job)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._list_pods)
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

    # -- what tests drive and inspect -------------------------------------------------------------------------

    def inject_error(self, method: str, path_suffix: str, status: int, reason: str, *, times: int = 1) -> None:
        """The next ``times`` requests with ``method`` whose path ends with ``path_suffix`` get ``status``."""
        self._errors.append(_InjectedError(method, path_suffix, status, reason, times))

    def requests_for(self, method: str, path_suffix: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    def close_watches(self) -> None:
        """End every open watch stream, as an API server does when its watch timeout expires or it restarts."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)

    def compact(self) -> None:
        """Forget the event history: a watch resuming from an older resourceVersion now gets 410 Gone."""
        self._oldest_watchable = self._version + 1

    def job(self, name: str, namespace: str = "default") -> JsonObject:
        return self.jobs[(namespace, name)]

    def pods_of(self, name: str, namespace: str = "default") -> list[JsonObject]:
        return [
            pod
            for (ns, _), pod in self.pods.items()
            if ns == namespace and pod["metadata"]["labels"].get("job-name") == name
        ]

    def complete(self, name: str, namespace: str = "default") -> None:
        """The running pod exits 0 and the Job controller marks the Job Complete."""
        pod = self._running_pod(name, namespace)
        self._terminate(pod, 0, "Completed", "")
        job = self.job(name, namespace)
        status = job["status"]
        status["active"] = 0
        status["succeeded"] = status.get("succeeded", 0) + 1
        status["completionTime"] = _now()
        status["conditions"] = [
            *status.get("conditions", []),
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": _now()},
        ]
        self._modified(namespace, job)

    def fail_pod(self, name: str, exit_code: int, message: str = "", namespace: str = "default") -> None:
        """The running pod exits with ``exit_code``; then the Job's podFailurePolicy and backoffLimit decide,
        as the Job controller does: FailJob at once, or count the failure and start a new pod, or give up."""
        pod = self._running_pod(name, namespace)
        self._terminate(pod, exit_code, "Error" if exit_code < 128 else "OOMKilled", message)
        job = self.job(name, namespace)
        status = job["status"]
        status["active"] = 0
        status["failed"] = status.get("failed", 0) + 1
        spec = job["spec"]
        if self._fail_job_rule_matches(spec, exit_code):
            self._fail_job(
                job,
                "PodFailurePolicy",
                f"Container train for pod {pod['metadata']['name']} failed "
                f"with exit code {exit_code} matching FailJob rule at index 0",
            )
        elif status["failed"] > spec.get("backoffLimit", 6):
            self._fail_job(job, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        else:
            self._modified(namespace, job)
            self._start_pod(job)

    def exceed_deadline(self, name: str, namespace: str = "default") -> None:
        """activeDeadlineSeconds passed: the controller kills the pod (SIGTERM, exit 143) and fails the Job."""
        pod = self._running_pod(name, namespace)
        self._terminate(pod, 143, "Error", "")
        job = self.job(name, namespace)
        job["status"]["active"] = 0
        job["status"]["failed"] = job["status"].get("failed", 0) + 1
        self._fail_job(job, "DeadlineExceeded", "Job was active longer than specified deadline")

    def delete_job(self, name: str, namespace: str = "default", policy: str = "Background") -> bool:
        """Delete the Job (also what someone running kubectl delete does); with Background or Foreground
        propagation the garbage collector takes its pods too. False when there was no such Job."""
        job = self.jobs.pop((namespace, name), None)
        if job is None:
            return False
        if policy in ("Background", "Foreground"):
            for pod in self.pods_of(name, namespace):
                del self.pods[(namespace, pod["metadata"]["name"])]
        self._modified(namespace, job, "DELETED")
        return True

    # -- internals ------------------------------------------------------------------------------------------

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _modified(self, namespace: str, job: JsonObject, event: str = "MODIFIED") -> None:
        job["metadata"]["resourceVersion"] = self._next_version()
        snapshot = copy.deepcopy(job)
        self._history.append((self._version, namespace, event, snapshot))
        for watcher in self._watchers:
            if watcher.namespace == namespace and watcher.name in (None, job["metadata"]["name"]):
                watcher.queue.put_nowait({"type": event, "object": snapshot})

    def _fail_job(self, job: JsonObject, reason: str, message: str) -> None:
        job["status"]["conditions"] = [
            *job["status"].get("conditions", []),
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now()},
        ]
        self._modified(job["metadata"]["namespace"], job)

    @staticmethod
    def _fail_job_rule_matches(spec: JsonObject, exit_code: int) -> bool:
        for rule in spec.get("podFailurePolicy", {}).get("rules", []):
            on_codes = rule.get("onExitCodes")
            if on_codes is None:
                continue
            inside = exit_code in on_codes.get("values", [])
            matches = inside if on_codes.get("operator") == "In" else not inside and exit_code != 0
            if matches:
                return bool(rule.get("action") == "FailJob")
        return False

    def _running_pod(self, name: str, namespace: str) -> JsonObject:
        running = [pod for pod in self.pods_of(name, namespace) if pod["status"]["phase"] in ("Pending", "Running")]
        assert running, f"job {name} has no running pod"
        return running[-1]

    def _terminate(self, pod: JsonObject, exit_code: int, reason: str, message: str) -> None:
        pod["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        terminated = {"exitCode": exit_code, "reason": reason, "finishedAt": _now()}
        if message:
            terminated["message"] = message
        pod["status"]["containerStatuses"] = [
            {
                "name": "train",
                "ready": False,
                "restartCount": 0,
                "image": "",
                "imageID": "",
                "state": {"terminated": terminated},
            }
        ]
        pod["metadata"]["resourceVersion"] = self._next_version()

    def _start_pod(self, job: JsonObject) -> None:
        metadata = job["metadata"]
        template = job["spec"]["template"]
        pod_name = f"{metadata['name']}-{uuid.uuid4().hex[:5]}"
        labels = {
            **template.get("metadata", {}).get("labels", {}),
            "job-name": metadata["name"],
            "batch.kubernetes.io/job-name": metadata["name"],
            "controller-uid": metadata["uid"],
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": metadata["namespace"],
                "labels": labels,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": _now(),
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Running"},
        }
        self.pods[(metadata["namespace"], pod_name)] = pod
        job["status"]["active"] = 1
        job["status"].setdefault("startTime", _now())
        self._modified(metadata["namespace"], job)

    # -- HTTP -------------------------------------------------------------------------------------------------

    @web.middleware
    async def _record_and_authorise(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body: JsonObject | None = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.query), body))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(status_object(401, "Unauthorized", "Unauthorized"), status=401)
        for error in self._errors:
            if error.times > 0 and error.method == request.method and request.path.endswith(error.path_suffix):
                error.times -= 1
                message = f"fake: injected {error.status} {error.reason} for {request.method} {request.path}"
                return web.json_response(status_object(error.status, error.reason, message), status=error.status)
        request[_BODY] = body or {}
        response: web.StreamResponse = await handler(request)
        return response

    async def _create_job(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        job = copy.deepcopy(request[_BODY])
        name = job.get("metadata", {}).get("name", "")
        if not name:
            return web.json_response(status_object(422, "Invalid", "metadata.name: Required value"), status=422)
        if (namespace, name) in self.jobs:
            message = f'jobs.batch "{name}" already exists'
            return web.json_response(status_object(409, "AlreadyExists", message), status=409)
        job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        job["status"] = {}
        self.jobs[(namespace, name)] = job
        self._modified(namespace, job, "ADDED")
        created = copy.deepcopy(job)  # as the API server answers a create: before the controller touched it
        self._start_pod(job)
        return web.json_response(created, status=201)

    async def _get_job(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.jobs:
            message = f'jobs.batch "{key[1]}" not found'
            return web.json_response(status_object(404, "NotFound", message), status=404)
        return web.json_response(self.jobs[key])

    def _selected_jobs(self, namespace: str, query: dict[str, str]) -> list[JsonObject]:
        name = query.get("fieldSelector", "").removeprefix("metadata.name=") or None
        return [
            job
            for (ns, job_name), job in self.jobs.items()
            if ns == namespace
            and name in (None, job_name)
            and _labels_match(job["metadata"].get("labels", {}), query.get("labelSelector", ""))
        ]

    async def _list_jobs(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        query = dict(request.query)
        if query.get("watch") in ("true", "1", "True"):
            return await self._watch_jobs(request, namespace, query)
        items = self._selected_jobs(namespace, query)
        return web.json_response(
            {
                "apiVersion": "batch/v1",
                "kind": "JobList",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }
        )

    async def _watch_jobs(self, request: web.Request, namespace: str, query: dict[str, str]) -> web.StreamResponse:
        name = query.get("fieldSelector", "").removeprefix("metadata.name=") or None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        since = int(query.get("resourceVersion") or 0)
        watcher = _Watcher(namespace, name)
        if since and since < self._oldest_watchable:
            gone = status_object(410, "Expired", f"too old resource version: {since} ({self._oldest_watchable})")
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        for version, event_namespace, event, job in self._history:
            if version > since and event_namespace == namespace and name in (None, job["metadata"]["name"]):
                watcher.queue.put_nowait({"type": event, "object": job})
        self._watchers.append(watcher)
        try:
            timeout = float(query.get("timeoutSeconds") or 3600)
            async with asyncio.timeout(timeout):
                while (event_data := await watcher.queue.get()) is not None:
                    await response.write(json.dumps(event_data).encode() + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass  # the server's watch timeout, or the client went away
        finally:
            self._watchers.remove(watcher)
        return response

    async def _delete_job(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        policy = request[_BODY].get("propagationPolicy") or request.query.get("propagationPolicy") or "Orphan"
        if not self.delete_job(name, namespace, policy):
            message = f'jobs.batch "{name}" not found'
            return web.json_response(status_object(404, "NotFound", message), status=404)
        details = {"name": name, "group": "batch", "kind": "jobs"}
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success", "details": details})

    async def _list_pods(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        selector = request.query.get("labelSelector", "")
        items = [
            pod
            for (ns, _), pod in self.pods.items()
            if ns == namespace and _labels_match(pod["metadata"].get("labels", {}), selector)
        ]
        return web.json_response(
            {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": str(self._version)}, "items": items}
        )
