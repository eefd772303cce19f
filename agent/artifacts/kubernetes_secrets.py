"""A Model's storage secret (``secretName``, the Scheduler API's ``storageSecretName``) read from a Kubernetes
Secret in the agent's own namespace, with the pod's ServiceAccount: the credentials reach only the agent that
downloads the artifact, never the scheduler or the controller.

A storage Secret has one of two shapes (its ``type`` does not matter; ``Opaque`` is usual):

- **an rclone remote** (Seldon Core v2's shape): exactly one key, of any name, whose value is the remote's
  config, as YAML or JSON (``type: s3``, ``parameters: {provider, access_key_id, secret_access_key,
  endpoint, region}``; the keys may also sit at the top level beside ``type``) or as INI with one section.
  Only ``type: s3`` is supported (storage_config.py says which keys count).
- **AWS-style keys**: ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``, optionally ``AWS_SESSION_TOKEN``,
  ``AWS_ENDPOINT_URL`` (or ``S3_ENDPOINT``; default AWS itself) and ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``),
  and nothing else (a misspelt key would otherwise be silently unused).

Limits: the API's answer may be at most 256 KiB and each value at most 64 KiB once decoded, UTF-8 text. The
Secret is read on every load that names it (a rotated Secret takes effect at the next load; loads are rare).
Every failure is an ArtifactError that names the Secret, its namespace and what to do, never a value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import Any

import aiohttp
import yaml
from kubernetes.aio import client as k8s

from agent.artifacts.errors import ArtifactError
from agent.artifacts.storage_config import flatten_config_object, parse_config_text
from modelplane import bounded_yaml

MAX_SECRET_RESPONSE_BYTES = 256 * 1024
MAX_SECRET_VALUE_BYTES = 64 * 1024
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_AWS_KEYS = {
    "AWS_ACCESS_KEY_ID": "access_key_id",
    "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    "AWS_SESSION_TOKEN": "session_token",
    "AWS_ENDPOINT_URL": "endpoint",
    "S3_ENDPOINT": "endpoint",
    "AWS_REGION": "region",
    "AWS_DEFAULT_REGION": "region",
}


class KubernetesSecrets:
    """Storage secrets from the Secrets of ``namespace``, through ``api`` (kept open by the agent)."""

    def __init__(self, api: k8s.ApiClient, namespace: str, *, timeout_seconds: float = 30) -> None:
        self._core = k8s.CoreV1Api(api)
        self.namespace = namespace
        self._timeout = timeout_seconds

    async def storage_values(self, secret_name: str) -> tuple[dict[str, str], str]:
        """The rclone-style keys of the storage secret ``secret_name``, and where they came from (for messages)."""
        origin = f"storage secret {secret_name[:80]!r} (Kubernetes Secret in namespace {self.namespace!r})"
        if len(secret_name) > 253 or not _SUBDOMAIN.fullmatch(secret_name):
            raise ArtifactError(f"{origin}: not a Kubernetes Secret name (lower-case letters, digits, '-' and '.')")
        data = await self._read(secret_name, origin)
        return storage_values_from(data, origin), origin

    async def _read(self, name: str, origin: str) -> dict[str, str]:
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._core.read_namespaced_secret_without_preload_content(name, self.namespace)
                try:
                    body = await _bounded_body(response, origin)
                    status = response.status
                finally:
                    response.release()
        except TimeoutError:
            raise ArtifactError(f"{origin}: the Kubernetes API did not answer within {self._timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as error:
            raise ArtifactError(f"{origin}: cannot reach the Kubernetes API ({type(error).__name__})") from None
        if status == 404:
            raise ArtifactError(f"{origin}: no such Secret; create it in the namespace the agent runs in")
        if status in (401, 403):
            raise ArtifactError(
                f"{origin}: the Kubernetes API refused to show it (HTTP {status}); the agent's ServiceAccount needs "
                f"'get' on secrets in namespace {self.namespace!r}"
            )
        if status != 200:
            raise ArtifactError(f"{origin}: the Kubernetes API answered HTTP {status}")
        try:
            secret = json.loads(body)
        except ValueError:
            raise ArtifactError(f"{origin}: the Kubernetes API's answer is not JSON") from None
        data = secret.get("data") if isinstance(secret, dict) else None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ArtifactError(f"{origin}: the Secret's data is not a map")
        return {str(key): _decoded(key, value, origin) for key, value in data.items()}


async def _bounded_body(response: Any, origin: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_SECRET_RESPONSE_BYTES:
            raise ArtifactError(
                f"{origin}: the Secret is larger than {MAX_SECRET_RESPONSE_BYTES // 1024} KiB; a storage Secret holds "
                "one small config"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decoded(key: object, value: object, origin: str) -> str:
    if not isinstance(value, str):
        raise ArtifactError(f"{origin}: key {str(key)[:60]!r} is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ArtifactError(f"{origin}: key {str(key)[:60]!r} is not valid base64") from None
    if len(raw) > MAX_SECRET_VALUE_BYTES:
        raise ArtifactError(f"{origin}: key {str(key)[:60]!r} is larger than {MAX_SECRET_VALUE_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{origin}: key {str(key)[:60]!r} is not UTF-8 text") from None


def storage_values_from(data: dict[str, str], origin: str) -> dict[str, str]:
    """A Secret's decoded data (one of the two shapes in the module's docstring) -> rclone-style S3 keys."""
    if not data:
        raise ArtifactError(f"{origin}: the Secret holds no data")
    if "AWS_ACCESS_KEY_ID" in data or "AWS_SECRET_ACCESS_KEY" in data:
        return _aws_values(data, origin)
    if len(data) != 1:
        keys = ", ".join(sorted(key[:40] for key in data)[:10])
        raise ArtifactError(
            f"{origin}: the Secret holds {len(data)} keys ({keys}); a storage Secret holds one rclone config (one "
            "key, any name) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    ((key, text),) = data.items()
    return _rclone_values(text, f"{origin} key {key[:40]!r}")


def _aws_values(data: dict[str, str], origin: str) -> dict[str, str]:
    unknown = sorted(key[:40] for key in data if key not in _AWS_KEYS)
    if unknown:
        raise ArtifactError(
            f"{origin}: an AWS-style storage Secret holds only {', '.join(_AWS_KEYS)}; it also has "
            f"{', '.join(unknown[:10])}"
        )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not data.get(key, "").strip():
            raise ArtifactError(f"{origin}: {key} is missing or empty (AWS-style Secrets need both keys)")
    values = {"type": "s3"}
    for key, value in data.items():
        values.setdefault(_AWS_KEYS[key], value.strip())
    return values


def _rclone_values(text: str, origin: str) -> dict[str, str]:
    stripped = text.strip()
    first_line = next((line.strip() for line in stripped.splitlines() if line.strip()[:1] not in ("", "#", ";")), "")
    if stripped.startswith("{") or first_line.startswith("["):
        return parse_config_text(stripped, origin)  # JSON, or INI with one [section]
    try:
        loaded = bounded_yaml.safe_load(stripped)
    except yaml.YAMLError as error:  # its text quotes the config: only the problem and the line are kept
        problem = getattr(error, "problem", None) or "cannot parse"
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ArtifactError(f"{origin}: the rclone config is neither JSON, INI nor YAML ({problem}{where})") from None
    return flatten_config_object(loaded, origin)
