"""The FAKE Kubernetes API (tests/support/fake_kubernetes_api.py) with the part of the Job controller the Kubernetes
Job launcher's tests drive.

Jobs and Pods are ordinary kinds of the generic store; this layer adds what the Job controller and the garbage
collector would do with them:

- a create of a Job starts its pod (labels ``job-name``, ``batch.kubernetes.io/job-name``, ``controller-uid``)
  and marks the Job active; the create's answer is the Job as stored, before the controller touched it;
- :meth:`FakeJobController.complete`, :meth:`~FakeJobController.fail_pod` and
  :meth:`~FakeJobController.exceed_deadline` end the running pod and move the Job's status as the Job controller
  does, applying the Job's own ``podFailurePolicy`` (FailJob rules on exit codes) and ``backoffLimit``;
- deleting a Job with ``propagationPolicy`` Background or Foreground deletes its pods too (the batch/v1 default,
  with no policy, orphans them).

What it does not do: parallelism or completions above one, pod failure rules on conditions, Foreground's
``foregroundDeletion`` finalizer, ``ttlSecondsAfterFinished``, or real pods.
"""

from __future__ import annotations

import copy
import uuid

from tests.support.fake_kubernetes_api import JOBS, PODS, FakeKubernetesApi, JsonObject, Kind, now


class FakeJobController(FakeKubernetesApi):
    """The generic fake API server plus a Job controller the test drives. Start it with :meth:`start`."""

    # -- what tests drive and inspect -------------------------------------------------------------------------

    def job(self, name: str, namespace: str = "default") -> JsonObject:
        """The stored Job (a copy); the test fails when there is none."""
        job = self.get(JOBS, name, namespace)
        assert job is not None, f"there is no Job {namespace}/{name}"
        return job

    def pods_of(self, name: str, namespace: str = "default") -> list[JsonObject]:
        return [pod for pod in self.objects(PODS, namespace) if pod["metadata"]["labels"].get("job-name") == name]

    def complete(self, name: str, namespace: str = "default") -> None:
        """The running pod exits 0 and the Job controller marks the Job Complete."""
        self._terminate(self._running_pod(name, namespace), 0, "Completed", "")
        status = self.job(name, namespace)["status"]
        status.update(active=0, succeeded=status.get("succeeded", 0) + 1, completionTime=now())
        status["conditions"] = [
            *status.get("conditions", []),
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now()},
        ]
        self.set_status(JOBS, name, status, namespace)

    def fail_pod(self, name: str, exit_code: int, message: str = "", namespace: str = "default") -> None:
        """The running pod exits with ``exit_code``; then the Job's podFailurePolicy and backoffLimit decide,
        as the Job controller does: FailJob at once, or count the failure and start a new pod, or give up."""
        pod = self._running_pod(name, namespace)
        self._terminate(pod, exit_code, "Error" if exit_code < 128 else "OOMKilled", message)
        job = self.job(name, namespace)
        status = job["status"]
        status.update(active=0, failed=status.get("failed", 0) + 1)
        if _fail_job_rule_matches(job["spec"], exit_code):
            message = (
                f"Container train for pod {pod['metadata']['name']} failed "
                f"with exit code {exit_code} matching FailJob rule at index 0"
            )
            self._fail_job(job, "PodFailurePolicy", message)
        elif status["failed"] > job["spec"].get("backoffLimit", 6):
            self._fail_job(job, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        else:
            self._start_pod(self.set_status(JOBS, name, status, namespace))

    def exceed_deadline(self, name: str, namespace: str = "default") -> None:
        """activeDeadlineSeconds passed: the controller kills the pod (SIGTERM, exit 143) and fails the Job."""
        self._terminate(self._running_pod(name, namespace), 143, "Error", "")
        job = self.job(name, namespace)
        job["status"].update(active=0, failed=job["status"].get("failed", 0) + 1)
        self._fail_job(job, "DeadlineExceeded", "Job was active longer than specified deadline")

    def delete_job(self, name: str, namespace: str = "default", policy: str = "Background") -> None:
        """Delete the Job as someone running kubectl delete does: by default its pods go with it."""
        self._delete(self._require(JOBS, namespace, name), JOBS, policy)

    # -- the controller's reactions to the store ----------------------------------------------------------------

    def _create(self, kind: Kind, namespace: str, obj: JsonObject) -> JsonObject:
        created = super()._create(kind, namespace, obj)
        if kind != JOBS:
            return created
        answer = copy.deepcopy(created)  # as the API server answers a create: before the controller touched it
        self._start_pod(created)
        return answer

    def _delete(self, obj: JsonObject, kind: Kind, propagation_policy: str | None = None) -> JsonObject:
        deleted = super()._delete(obj, kind, propagation_policy)
        # batch/v1 Jobs orphan their pods unless the delete asks otherwise (kubectl asks for Background).
        if kind == JOBS and propagation_policy in ("Background", "Foreground"):
            metadata = deleted["metadata"]
            for pod in self.pods_of(metadata["name"], metadata["namespace"]):
                self.remove(PODS, pod["metadata"]["name"], metadata["namespace"])
        return deleted

    def _start_pod(self, job: JsonObject) -> None:
        metadata = job["metadata"]
        template = job["spec"]["template"]
        labels = {
            **template.get("metadata", {}).get("labels", {}),
            "job-name": metadata["name"],
            "batch.kubernetes.io/job-name": metadata["name"],
            "controller-uid": metadata["uid"],
        }
        pod = {
            "metadata": {"name": f"{metadata['name']}-{uuid.uuid4().hex[:5]}", "labels": labels},
            "spec": copy.deepcopy(template["spec"]),
        }
        created = self._create(PODS, metadata["namespace"], pod)
        self.set_status(PODS, created["metadata"]["name"], {"phase": "Running"}, metadata["namespace"])
        status = copy.deepcopy(job["status"])
        status["active"] = 1
        status.setdefault("startTime", now())
        self.set_status(JOBS, metadata["name"], status, metadata["namespace"])

    def _fail_job(self, job: JsonObject, reason: str, message: str) -> None:
        status = job["status"]
        status["conditions"] = [
            *status.get("conditions", []),
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()},
        ]
        self.set_status(JOBS, job["metadata"]["name"], status, job["metadata"]["namespace"])

    def _running_pod(self, name: str, namespace: str) -> JsonObject:
        running = [pod for pod in self.pods_of(name, namespace) if pod["status"]["phase"] in ("Pending", "Running")]
        assert running, f"job {name} has no running pod"
        return running[-1]

    def _terminate(self, pod: JsonObject, exit_code: int, reason: str, message: str) -> None:
        terminated = {"exitCode": exit_code, "reason": reason, "finishedAt": now()}
        if message:
            terminated["message"] = message
        container = {
            "name": "train",
            "ready": False,
            "restartCount": 0,
            "image": "",
            "imageID": "",
            "state": {"terminated": terminated},
        }
        status = {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [container]}
        self.set_status(PODS, pod["metadata"]["name"], status, pod["metadata"]["namespace"])


def _fail_job_rule_matches(spec: JsonObject, exit_code: int) -> bool:
    """Whether the Job's podFailurePolicy says FailJob for ``exit_code`` (the first rule on exit codes that
    matches decides, as in the Job controller)."""
    for rule in spec.get("podFailurePolicy", {}).get("rules", []):
        on_codes = rule.get("onExitCodes")
        if on_codes is None:
            continue
        inside = exit_code in on_codes.get("values", [])
        matches = inside if on_codes.get("operator") == "In" else not inside and exit_code != 0
        if matches:
            return bool(rule.get("action") == "FailJob")
    return False
