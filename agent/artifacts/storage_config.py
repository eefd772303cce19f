"""S3 endpoint and credentials from a ModelSpec's StorageConfig, a secret, or the environment.

A config is the text of an rclone S3 remote, either JSON::

    {"type": "s3", "provider": "minio", "access_key_id": "...", "secret_access_key": "...",
     "endpoint": "http://127.0.0.1:9000", "region": "us-east-1"}

(Seldon's ``{"type": "s3", "name": "...", "parameters": {...}}`` form is accepted too) or INI with one
section holding the same keys. Keys rclone has and S3 fetching does not need are ignored. The
endpoint's scheme decides TLS; an endpoint without a scheme is https, as in rclone. No message here
ever holds a key, a secret or the config text.
"""

from __future__ import annotations

import configparser
import json
import re
from collections.abc import Mapping
from pathlib import Path

from agent.artifacts.errors import ArtifactError
from modelplane.s3 import S3EndpointError, S3Settings, parse_s3_endpoint
from modelplane.storage_secrets import is_redacted

SECRET_ENV_PREFIX = "MODELPLANE_SECRET_"  # noqa: S105 -- a variable-name prefix, not a password
_SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_AWS_ENDPOINT = "https://s3.amazonaws.com"
_TRUE = frozenset({"true", "1", "yes", "on"})


def flatten_config_object(loaded: object, origin: str) -> dict[str, str]:
    if not isinstance(loaded, dict):
        raise ArtifactError(f"{origin}: the storage config must be an object (a map of keys to values)")
    values: dict[str, object] = dict(loaded)
    parameters = values.pop("parameters", None)
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise ArtifactError(f"{origin}: 'parameters' in the storage config must be an object")
        values.update(parameters)
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            flat[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            flat[key] = str(value)
        elif value is not None:
            raise ArtifactError(f"{origin}: storage config key {key!r} must be a string, number or boolean")
    return flat


def parse_config_text(text: str, origin: str) -> dict[str, str]:
    """The key/value pairs of an rclone remote given as JSON or as INI with one section."""
    stripped = text.strip()
    if not stripped:
        raise ArtifactError(f"{origin}: the storage config is empty")
    if stripped.startswith("{"):
        try:
            loaded = json.loads(stripped)
        except json.JSONDecodeError as exc:  # its message names a position, never the text
            raise ArtifactError(
                f"{origin}: the storage config is not valid JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        return flatten_config_object(loaded, origin)
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        parser.read_string(stripped)
    except configparser.MissingSectionHeaderError as exc:
        raise ArtifactError(
            f"{origin}: the storage config is neither JSON nor INI (line {exc.lineno} comes before any [section])"
        ) from None
    except configparser.DuplicateOptionError as exc:
        raise ArtifactError(f"{origin}: the storage config sets {exc.option!r} twice") from None
    except configparser.DuplicateSectionError as exc:
        raise ArtifactError(f"{origin}: the storage config has section [{exc.section}] twice") from None
    except configparser.ParsingError as exc:  # its message quotes the lines, which may hold secrets
        lines = ", ".join(str(number) for number, _ in exc.errors)
        raise ArtifactError(
            f"{origin}: the storage config has lines that are not 'key = value' (line {lines})"
        ) from None
    except configparser.Error as exc:
        raise ArtifactError(f"{origin}: the storage config is not valid INI ({type(exc).__name__})") from None
    sections = parser.sections()
    if len(sections) != 1:
        raise ArtifactError(f"{origin}: an INI storage config must have exactly one [section], found {len(sections)}")
    return dict(parser.items(sections[0]))


def parse_endpoint(value: str, origin: str) -> tuple[str, bool]:
    """``(host[:port], secure)`` from an endpoint URL such as ``http://127.0.0.1:9000`` (modelplane/s3.py)."""
    try:
        return parse_s3_endpoint(value)
    except S3EndpointError as error:
        raise ArtifactError(f"{origin}: {error}") from None


def _env_credentials(environ: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    return (
        environ.get("AWS_ACCESS_KEY_ID") or None,
        environ.get("AWS_SECRET_ACCESS_KEY") or None,
        environ.get("AWS_SESSION_TOKEN") or None,
    )


def settings_from_config(values: Mapping[str, str], origin: str, environ: Mapping[str, str]) -> S3Settings:
    """Validate an rclone S3 remote's keys and turn them into S3Settings."""
    remote_type = values.get("type")
    if remote_type is None:
        raise ArtifactError(f"{origin}: the storage config has no 'type' (expected 's3')")
    if remote_type.strip().lower() != "s3":
        raise ArtifactError(f"{origin}: unsupported storage type {remote_type.strip()!r}; only 's3' is supported")
    access_key = values.get("access_key_id") or None
    secret_key = values.get("secret_access_key") or None
    session_token = values.get("session_token") or None
    if access_key is None and secret_key is None and values.get("env_auth", "").strip().lower() in _TRUE:
        access_key, secret_key, session_token = _env_credentials(environ)
        if access_key is None or secret_key is None:
            raise ArtifactError(
                f"{origin}: env_auth is set but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set"
            )
    elif access_key is None and secret_key is not None:
        raise ArtifactError(f"{origin}: the storage config has 'secret_access_key' but no 'access_key_id'")
    elif access_key is not None and secret_key is None:
        raise ArtifactError(f"{origin}: the storage config has 'access_key_id' but no 'secret_access_key'")
    provider = values.get("provider", "").strip()
    endpoint_text = values.get("endpoint", "").strip()
    if not endpoint_text:
        if provider.lower() not in ("", "aws"):
            raise ArtifactError(f"{origin}: the storage config has no 'endpoint' (required for provider {provider!r})")
        endpoint_text = _AWS_ENDPOINT
    endpoint, secure = parse_endpoint(endpoint_text, origin)
    region = values.get("region", "").strip() or None
    return S3Settings(endpoint, secure, region, origin, access_key, secret_key, session_token)


def secret_env_name(secret_name: str) -> str:
    """``MODELPLANE_SECRET_<NAME>``: upper case, with ``-`` and ``.`` as ``_``."""
    return SECRET_ENV_PREFIX + secret_name.upper().replace("-", "_").replace(".", "_")


def _read_secret(secret_name: str, secrets_dir: Path | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """The secret's text and where it came from."""
    if not _SECRET_NAME.fullmatch(secret_name) or secret_name in (".", ".."):
        raise ArtifactError(f"invalid storage secret name {secret_name!r}: use letters, digits, '.', '-' and '_'")
    looked: list[str] = []
    if secrets_dir is not None:
        path = secrets_dir / secret_name
        looked.append(f"no file {path}")
        try:
            return path.read_text(encoding="utf-8"), f"storage secret {secret_name!r} (file {path})"
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise ArtifactError(f"storage secret {secret_name!r}: {path} is a folder, expected a file") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ArtifactError(f"storage secret {secret_name!r}: cannot read {path}: {reason}") from None
    variable = secret_env_name(secret_name)
    looked.append(f"no environment variable {variable}")
    text = environ.get(variable)
    if text is not None:
        return text, f"storage secret {secret_name!r} (environment {variable})"
    raise ArtifactError(f"storage secret {secret_name!r} not found: {' and '.join(looked)}")


def resolve_s3_settings(
    *,
    rclone_config: str | None,
    secret_name: str | None,
    secrets_dir: Path | None,
    environ: Mapping[str, str],
) -> S3Settings:
    """The settings for one fetch: the inline config, else the named secret, else AWS_* defaults."""
    if rclone_config is not None and secret_name is not None:
        raise ArtifactError("give either a storage rclone config or a storage secret name, not both")
    if rclone_config is not None:
        origin = "storage_rclone_config"
        if is_redacted(rclone_config):
            # The scheduler never stores an inline config; after its restart it has none to send (see
            # scheduler/models/model_records.py) until a client gives it again.
            raise ArtifactError(
                f"{origin}: the scheduler no longer holds this model's inline storage config (it is never stored, "
                "so a scheduler restart drops it): send the model's LoadModel again, or name a storageSecretName"
            )
        return settings_from_config(parse_config_text(rclone_config, origin), origin, environ)
    if secret_name is not None:
        text, origin = _read_secret(secret_name, secrets_dir, environ)
        return settings_from_config(parse_config_text(text, origin), origin, environ)
    origin = "environment defaults (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or S3_ENDPOINT)"
    access_key, secret_key, session_token = _env_credentials(environ)
    if (access_key is None) != (secret_key is None):
        raise ArtifactError(f"{origin}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
    endpoint_text = environ.get("AWS_ENDPOINT_URL") or environ.get("S3_ENDPOINT") or _AWS_ENDPOINT
    endpoint, secure = parse_endpoint(endpoint_text, origin)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
    return S3Settings(endpoint, secure, region, origin, access_key, secret_key, session_token)
