"""What to fetch (ArtifactSource) and where it lives (the parsed location)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

from agent.artifacts.errors import ArtifactError

SUPPORTED_SCHEMES = "an absolute local path, file://, s3://, http://, https://"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class ArtifactSource:
    """One model version's artifacts, as a ModelSpec describes them.

    ``storage_secret_name`` and ``storage_rclone_config`` are the two choices of ModelSpec's
    StorageConfig (they are only used for s3://). ``sha256`` is the expected digest of an http(s)
    download (or of a local archive file); it may also be given as a ``#sha256=HEX`` fragment of ``uri``.
    """

    uri: str
    artifact_version: int | None = None
    storage_secret_name: str | None = None
    storage_rclone_config: str | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class LocalLocation:
    path: Path
    sha256: str | None


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # without leading or trailing slashes; "" is the whole bucket

    @property
    def display(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class HttpLocation:
    url: str  # without the fragment
    display: str  # the URL without credentials or query, for messages and the cache marker
    file_name: str | None  # the last component of the URL path, if it makes a usable file name
    sha256: str | None


Location = LocalLocation | S3Location | HttpLocation


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment, which may hold credentials (presigned URLs do)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"***@{netloc}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _expected_sha256(source: ArtifactSource, fragment: str, where: str) -> str | None:
    from_fragment: str | None = None
    if fragment.startswith("sha256="):
        from_fragment = fragment.removeprefix("sha256=")
        if not _SHA256_HEX.fullmatch(from_fragment):
            raise ArtifactError(f"the '#sha256=' fragment of {where} is not 64 hexadecimal digits")
        from_fragment = from_fragment.lower()
    given = source.sha256
    if given is not None:
        if not _SHA256_HEX.fullmatch(given):
            raise ArtifactError(f"the expected sha256 for {where} is not 64 hexadecimal digits")
        given = given.lower()
        if from_fragment is not None and from_fragment != given:
            raise ArtifactError(f"{where}: the sha256 field and the '#sha256=' fragment of the URI disagree")
    return given or from_fragment


def _file_location(source: ArtifactSource, uri: str) -> LocalLocation:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ArtifactError(f"file URI {uri!r} must be file:///absolute/path (got host {parts.netloc!r})")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ArtifactError(f"file URI {uri!r} must hold an absolute path")
    return LocalLocation(Path(path), _expected_sha256(source, parts.fragment, path))


def _s3_location(source: ArtifactSource, uri: str) -> S3Location:
    parts = urlsplit(uri)
    if not parts.netloc:
        raise ArtifactError(f"S3 URI {uri!r} names no bucket: expected s3://bucket/prefix")
    if source.sha256 is not None or parts.fragment.startswith("sha256="):
        raise ArtifactError(f"{uri}: an expected sha256 applies to http(s) downloads and local archives only")
    return S3Location(parts.netloc, parts.path.strip("/"))


def _http_location(source: ArtifactSource, uri: str) -> HttpLocation:
    parts = urlsplit(uri)
    display = redact_url(uri)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        raise ArtifactError(f"bad URL {display}: {exc}") from exc
    if not host:
        raise ArtifactError(f"URL {display} names no host")
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    name = PurePosixPath(unquote(parts.path)).name
    usable = name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
    return HttpLocation(url, display, name if usable else None, _expected_sha256(source, parts.fragment, display))


def parse_location(source: ArtifactSource) -> Location:
    """Where ``source.uri`` points, or an ArtifactError saying why it cannot be fetched."""
    uri = source.uri.strip()
    if not uri:
        raise ArtifactError(f"the model URI is empty; supported are {SUPPORTED_SCHEMES}")
    if uri.startswith("/"):
        path, marker, digest = uri.rpartition("#sha256=")  # '#' is otherwise a legal file-name character
        if not marker:
            path, digest = uri, ""
        return LocalLocation(Path(path), _expected_sha256(source, marker.lstrip("#") + digest, path))
    try:
        scheme = urlsplit(uri).scheme.lower()
        if scheme == "file":
            return _file_location(source, uri)
        if scheme == "s3":
            return _s3_location(source, uri)
        if scheme in ("http", "https"):
            return _http_location(source, uri)
    except ValueError as exc:
        raise ArtifactError(f"cannot parse the model URI {redact_url(uri)}: {exc}") from exc
    if scheme:
        raise ArtifactError(
            f"unsupported URI scheme {scheme!r} in {redact_url(uri)}; supported are {SUPPORTED_SCHEMES}"
        )
    raise ArtifactError(f"model URI {uri!r} is a relative path; supported are {SUPPORTED_SCHEMES}")
