"""The scheduler's Lease in the Kubernetes API, through ``kubernetes.aio`` (modelplane/kubernetes_api.py opens the
client): read it, create it free, and write it under optimistic concurrency.

Every write is a JSON merge patch that carries the ``resourceVersion`` last read: the API server applies it only
to that version and answers 409 Conflict otherwise, so of two replicas that read the same version and both write,
exactly one wins (:class:`LeaseConflict` for the other). The times are written as the API server's MicroTime
text (six fractional digits, UTC): the client's own serialisation of a datetime drops the fraction when it is
zero, which a real API server refuses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio.client.exceptions import ApiException

from scheduler.leadership.lease_records import (
    AGENT_ADDRESS_ANNOTATION,
    API_ADDRESS_ANNOTATION,
    LeaseRecord,
)

MERGE_PATCH = "application/merge-patch+json"


class LeaseApiError(Exception):
    """The API server could not be asked, or refused for a reason other than a lost race (unreachable, 5xx,
    401/403: then the message says so, for the service account's RBAC)."""


class LeaseConflict(Exception):  # noqa: N818 - what happened, not a failure of ours
    """The Lease changed since it was read (409), or was deleted: someone else wrote it first."""


def micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubernetesLeases:
    """One Lease, ``namespace/name``, in the API server ``api`` talks to."""

    def __init__(self, api: k8s.ApiClient, namespace: str, name: str) -> None:
        self._api = k8s.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name

    def __str__(self) -> str:
        return f"lease {self.namespace}/{self.name}"

    async def read(self) -> LeaseRecord | None:
        """The Lease as stored, or None when there is none."""
        try:
            lease = await self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise self._failed("read", error) from None
        except (aiohttp.ClientError, OSError) as error:  # OSError: TimeoutError too
            raise LeaseApiError(f"cannot read {self}: {error or type(error).__name__}") from None
        return _record(lease)

    async def create_free(self) -> None:
        """Create the Lease with no holder (a replica then acquires it like any free Lease). One that exists
        already (another replica was first) is left as it is."""
        body = k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace), spec=k8s.V1LeaseSpec())
        try:
            await self._api.create_namespaced_lease(self.namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise self._failed("create", error) from None
        except (aiohttp.ClientError, OSError) as error:  # OSError: TimeoutError too
            raise LeaseApiError(f"cannot create {self}: {error or type(error).__name__}") from None

    async def write(self, record: LeaseRecord) -> LeaseRecord:
        """Store ``record`` over the version it was read as (``record.resource_version``); returns what is stored.
        Raises LeaseConflict when the Lease changed or went meanwhile, LeaseApiError when it cannot be written."""
        leader = record.leader()
        patch: dict[str, Any] = {
            "metadata": {
                "resourceVersion": record.resource_version,
                "annotations": {
                    API_ADDRESS_ANNOTATION: leader.api if leader else None,
                    AGENT_ADDRESS_ANNOTATION: leader.agent if leader else None,
                },
            },
            "spec": {
                "holderIdentity": record.holder or None,
                "leaseDurationSeconds": record.lease_duration_seconds,
                "acquireTime": micro_time(record.acquire_time) if record.acquire_time else None,
                "renewTime": micro_time(record.renew_time) if record.renew_time else None,
                "leaseTransitions": record.transitions,
            },
        }
        try:
            lease = await self._api.patch_namespaced_lease(self.name, self.namespace, patch, _content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status == 409:
                raise LeaseConflict(f"{self} changed since it was read") from None
            if error.status == 404:
                raise LeaseConflict(f"{self} was deleted") from None
            raise self._failed("write", error) from None
        except (aiohttp.ClientError, OSError) as error:  # OSError: TimeoutError too
            raise LeaseApiError(f"cannot write {self}: {error or type(error).__name__}") from None
        return _record(lease)

    def _failed(self, what: str, error: ApiException) -> LeaseApiError:
        hint = ""
        if error.status in (401, 403):
            hint = " (the scheduler's service account needs get, create and patch on leases in this namespace)"
        return LeaseApiError(f"cannot {what} {self}: {error.status} {error.reason}{hint}")


def _record(lease: k8s.V1Lease) -> LeaseRecord:
    metadata = lease.metadata or k8s.V1ObjectMeta()
    spec = lease.spec or k8s.V1LeaseSpec()
    return LeaseRecord(
        holder=spec.holder_identity or None,
        lease_duration_seconds=spec.lease_duration_seconds,
        acquire_time=_aware(spec.acquire_time),
        renew_time=_aware(spec.renew_time),
        transitions=spec.lease_transitions or 0,
        annotations=dict(metadata.annotations or {}),
        resource_version=metadata.resource_version,
        uid=metadata.uid,
    )


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
