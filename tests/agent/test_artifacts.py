"""ArtifactStore: local folders and archives, real S3 (SeaweedFS), http(s) archives, the cache, concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pytest
from aiohttp import web

from agent.artifacts import ArtifactError, ArtifactSource, ArtifactStore, ExtractLimits
from agent.artifacts.storage_config import resolve_s3_settings
from tests.support.archives import files_under, make_tar, make_zip, tar_link
from tests.support.http_stand_ins import serving
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, S3Server

# The session's SeaweedFS (the s3_server fixture), shared with the other modules that use it.
pytest_plugins = ["tests.support.real_components"]

# -- helpers ------------------------------------------------------------------------------------------------


def make_store(
    tmp_path: Path,
    *,
    secrets_dir: Path | None = None,
    environ: dict[str, str] | None = None,
    limits: ExtractLimits | None = None,
    timeout_seconds: float = 30,
    cache_limit_bytes: int = 1 << 30,
) -> ArtifactStore:
    """A store over ``tmp_path/cache`` that sees no host environment unless a test gives one."""
    return ArtifactStore(
        tmp_path / "cache",
        secrets_dir=secrets_dir,
        environ={} if environ is None else environ,
        limits=limits or ExtractLimits(),
        timeout_seconds=timeout_seconds,
        cache_limit_bytes=cache_limit_bytes,
    )


def cache_entries(store: ArtifactStore) -> list[str]:
    return sorted(os.listdir(store.cache_dir)) if store.cache_dir.exists() else []


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


VERSIONED = {
    "1/model-settings.json": b'{"name": "m"}',
    "1/model.bin": b"one",
    "2/model.bin": b"two",
    "10/model.bin": b"ten",
    "notes/readme.txt": b"not a version",
}

# -- local paths --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
async def test_local_folder_version_selection(tmp_path: Path, as_uri: bool) -> None:
    model = write_tree(tmp_path / "my model", VERSIONED)
    uri = model.as_uri() if as_uri else str(model)
    store = make_store(tmp_path)
    assert await store.fetch(ArtifactSource(uri)) == model / "10"  # highest by number, not by text
    assert await store.fetch(ArtifactSource(uri, artifact_version=2)) == model / "2"
    with pytest.raises(ArtifactError, match=r"no version folder 3; numbered folders present: 1, 2, 10"):
        await store.fetch(ArtifactSource(uri, artifact_version=3))
    (model / "model-settings.json").write_text("{}")
    assert await store.fetch(ArtifactSource(uri)) == model  # a settings file at the top: the folder itself
    assert await store.fetch(ArtifactSource(uri, artifact_version=1)) == model / "1"  # explicit still wins
    assert cache_entries(store) == []  # used in place, never copied


async def test_local_folder_with_any_plain_file_is_served_itself(tmp_path: Path) -> None:
    model = write_tree(tmp_path / "m", {"model.joblib": b"x", "3/model.joblib": b"y", ".hidden": b"z"})
    store = make_store(tmp_path)
    assert await store.fetch(ArtifactSource(str(model))) == model
    (model / "model.joblib").unlink()
    assert await store.fetch(ArtifactSource(str(model))) == model / "3"  # hidden files do not count


async def test_local_archive_is_extracted_into_the_cache_once(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(make_tar([("model/1/model.bin", b"v1"), ("model/2/model.bin", b"v2")]))
    store = make_store(tmp_path)
    folder = await store.fetch(ArtifactSource(archive.as_uri()))
    assert store.cache_dir in folder.parents
    assert folder.name == "2"  # the single top folder 'model' is unwrapped, then the highest version chosen
    assert files_under(folder) == {"model.bin": b"v2"}
    marker = folder.parent.parent.parent / ".complete"
    stamp = marker.stat().st_mtime_ns
    assert await store.fetch(ArtifactSource(str(archive), artifact_version=1)) == folder.parent / "1"
    assert marker.stat().st_mtime_ns == stamp  # reused, not extracted again

    archive.write_bytes(make_tar([("model/3/model.bin", b"v3")]))
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))
    folder = await store.fetch(ArtifactSource(str(archive)))
    assert files_under(folder) == {"model.bin": b"v3"}


async def test_only_folders_inside_the_caches_entries_are_its_own_whatever_the_path_says(tmp_path: Path) -> None:
    """What the store owns may be hard-linked into a server's repository; a user's folder must be copied. A path
    that names the cache but leads elsewhere (``..``, a link) is the user's folder."""
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(make_tar([("model.bin", b"weights")]))
    store = make_store(tmp_path)
    cached = await store.fetch(ArtifactSource(str(archive)))
    mine = write_tree(tmp_path / "mine", {"model.bin": b"the user's own"})
    (store.cache_dir / "link").symlink_to(mine)
    assert store.owns(cached)
    assert not store.owns(store.cache_dir / ".." / "mine")
    assert not store.owns(cached / ".." / ".." / ".." / ".." / "mine")
    assert not store.owns(store.cache_dir / "link")
    assert not store.owns(store.cache_dir)  # the cache folder itself is no entry
    # The same path given as a model's URI is used in place, and is still not the store's.
    used = await store.fetch(ArtifactSource(str(store.cache_dir / ".." / "mine")))
    assert not store.owns(used)


async def test_a_marker_that_points_outside_its_entry_is_not_trusted(tmp_path: Path) -> None:
    """A marker names the tree inside its entry; one that names a path outside (damaged, or edited) makes the
    entry incomplete: fetched again, never served from wherever the marker points."""
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(make_tar([("model.bin", b"weights")]))
    outside = write_tree(tmp_path / "outside", {"model.bin": b"not from the archive"})
    folder = await make_store(tmp_path).fetch(ArtifactSource(str(archive)))
    entry = folder.parent
    marker = json.loads((entry / ".complete").read_text())
    marker["tree"] = f"../../{outside.name}"  # CACHE/KEY/../../outside
    (entry / ".complete").write_text(json.dumps(marker))

    restarted = make_store(tmp_path)
    again = await restarted.fetch(ArtifactSource(str(archive)))
    assert again.resolve().is_relative_to(restarted.cache_dir.resolve()), again
    assert files_under(again) == {"model.bin": b"weights"}
    assert restarted.owns(again)


async def test_local_archive_sha256_is_checked(tmp_path: Path) -> None:
    data = make_zip([("model.onnx", b"onnx")])
    archive = tmp_path / "model.zip"
    archive.write_bytes(data)
    store = make_store(tmp_path)
    assert files_under(await store.fetch(ArtifactSource(str(archive), sha256=sha256(data)))) == {"model.onnx": b"onnx"}
    with pytest.raises(ArtifactError, match=f"expected {'0' * 64}, got {sha256(data)}"):
        await store.fetch(ArtifactSource(f"{archive}#sha256={'0' * 64}"))


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("relative/path", "relative path; supported are an absolute local path, file://, s3://, http://, https://"),
        ("gs://bucket/model", "unsupported URI scheme 'gs'"),
        ("", "the model URI is empty"),
        ("file://host/x", "must be file:///absolute/path"),
        ("s3:///prefix", "names no bucket"),
        ("http:///x", "names no host"),
        ("/no/such/folder", "/no/such/folder does not exist"),
    ],
)
async def test_bad_uris(tmp_path: Path, uri: str, needle: str) -> None:
    with pytest.raises(ArtifactError) as caught:
        await make_store(tmp_path).fetch(ArtifactSource(uri))
    assert needle in str(caught.value)


async def test_local_plain_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(make_zip([("a", b"a")]))  # a zip underneath, but a model file
    with pytest.raises(ArtifactError, match="is not a folder or a tar/zip archive"):
        await make_store(tmp_path).fetch(ArtifactSource(str(tmp_path / "model.pt")))


# -- storage configs (no server needed) ---------------------------------------------------------------------

STORE_NAME = "model-store"  # the name of a storage secret

SECRET = "s3cr3t-do-not-print"  # noqa: S105 -- a test value that must never appear in messages


@pytest.mark.parametrize(
    ("config", "endpoint", "secure"),
    [
        (
            json.dumps({"type": "s3", "access_key_id": "k", "secret_access_key": SECRET, "endpoint": "http://h:9000"}),
            "h:9000",
            False,
        ),
        (f"[store]\ntype = s3\naccess_key_id = k\nsecret_access_key = {SECRET}\nendpoint = https://h\n", "h", True),
        (
            json.dumps({"type": "s3", "name": "s3", "parameters": {"provider": "minio", "env_auth": False,
                        "access_key_id": "k", "secret_access_key": SECRET, "endpoint": "h:443"}}),
            "h:443",
            True,  # no scheme: https, as in rclone
        ),
        (json.dumps({"type": "s3", "access_key_id": "k", "secret_access_key": SECRET}), "s3.amazonaws.com", True),
    ],
)  # fmt: skip
def test_storage_config_formats(config: str, endpoint: str, secure: bool) -> None:
    settings = resolve_s3_settings(rclone_config=config, secret_name=None, secrets_dir=None, environ={})
    assert (settings.endpoint, settings.secure, settings.access_key, settings.secret_key) == (
        endpoint,
        secure,
        "k",
        SECRET,
    )
    assert SECRET not in repr(settings)


def s3_config(**changes: str | None) -> str:
    """A JSON storage config holding SECRET; a change to None drops the key."""
    values = {"type": "s3", "access_key_id": "k", "secret_access_key": SECRET, "endpoint": "http://h"} | changes
    return json.dumps({key: value for key, value in values.items() if value is not None})


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ('{"type": "gcs"}', "unsupported storage type 'gcs'; only 's3' is supported"),
        ('{"access_key_id": "k"}', "has no 'type'"),
        (s3_config(access_key_id=None), "no 'access_key_id'"),
        (s3_config(secret_access_key=None), "no 'secret_access_key'"),
        (s3_config(provider="minio", endpoint=None), "no 'endpoint'"),
        (s3_config(endpoint="ftp://h"), "must be http:// or https://"),
        (s3_config(endpoint="http://h:port"), "bad S3 endpoint"),
        (s3_config(endpoint="http://h/path"), "without a path"),
        (s3_config(endpoint=f"http://u:{SECRET}@h"), "must not hold credentials"),
        (f'{{"type": "s3", "secret_access_key": "{SECRET}",', "not valid JSON"),
        (f"type = s3\nsecret_access_key = {SECRET}\n", "neither JSON nor INI"),
        (f"[a]\ntype = s3\n[b]\nsecret_access_key = {SECRET}\n", "exactly one [section], found 2"),
        (f"[a]\ntype = s3\n{SECRET}\n", "not 'key = value' (line 3)"),
        ("   ", "the storage config is empty"),
    ],
)  # fmt: skip
def test_storage_config_errors_never_show_secrets(config: str, needle: str) -> None:
    with pytest.raises(ArtifactError) as caught:
        resolve_s3_settings(rclone_config=config, secret_name=None, secrets_dir=None, environ={})
    assert needle in str(caught.value)
    assert SECRET not in str(caught.value)


def test_storage_secret_lookup(tmp_path: Path) -> None:
    config = '{"type": "s3", "access_key_id": "from-file", "secret_access_key": "x", "endpoint": "http://h"}'
    (tmp_path / STORE_NAME).write_text(config)
    environ = {"MODELPLANE_SECRET_MODEL_STORE": config.replace("from-file", "from-env")}
    name, absent, escaping = STORE_NAME, "other", "../etc/passwd"
    found = resolve_s3_settings(rclone_config=None, secret_name=name, secrets_dir=tmp_path, environ=environ)
    assert found.access_key == "from-file"
    found = resolve_s3_settings(rclone_config=None, secret_name=name, secrets_dir=None, environ=environ)
    assert found.access_key == "from-env"
    with pytest.raises(ArtifactError, match=r"'other' not found: no file .*other and no environment variable"):
        resolve_s3_settings(rclone_config=None, secret_name=absent, secrets_dir=tmp_path, environ=environ)
    with pytest.raises(ArtifactError, match="invalid storage secret name"):
        resolve_s3_settings(rclone_config=None, secret_name=escaping, secrets_dir=tmp_path, environ={})
    with pytest.raises(ArtifactError, match="not both"):
        resolve_s3_settings(rclone_config=config, secret_name=name, secrets_dir=tmp_path, environ={})


MODEL_OBJECTS = {
    "iris/1/model-settings.json": b'{"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel"}',
    "iris/1/model.joblib": b"version one",
    "iris/2/model-settings.json": b'{"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel"}',
    "iris/2/model.joblib": b"version two",
    "iris/2/extra/deep/file.txt": b"deep",
    "iris-other/1/model.joblib": b"a sibling prefix that must not be fetched",
}
IRIS_V2 = {
    "model-settings.json": MODEL_OBJECTS["iris/2/model-settings.json"],
    "model.joblib": b"version two",
    "extra/deep/file.txt": b"deep",
}


@pytest.mark.parametrize("how", ["json", "ini", "secret-file", "secret-env", "aws-env"])
async def test_s3_fetch_with_each_credential_source(s3_server: S3Server, tmp_path: Path, how: str) -> None:
    bucket = s3_server.new_bucket(MODEL_OBJECTS)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    environ: dict[str, str] = {}
    source = ArtifactSource(f"s3://{bucket}/iris/")
    if how == "json":
        source = replace(source, storage_rclone_config=s3_server.rclone_json())
    elif how == "ini":
        source = replace(source, storage_rclone_config=s3_server.rclone_ini())
    elif how == "secret-file":
        (secrets_dir / STORE_NAME).write_text(s3_server.rclone_ini())
        source = replace(source, storage_secret_name=STORE_NAME)
    elif how == "secret-env":
        environ["MODELPLANE_SECRET_MODEL_STORE"] = s3_server.rclone_json()
        source = replace(source, storage_secret_name=STORE_NAME)
    else:
        environ |= {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        environ["AWS_ENDPOINT_URL"] = s3_server.endpoint
    store = make_store(tmp_path, secrets_dir=secrets_dir, environ=environ)
    folder = await store.fetch(source)
    assert folder.name == "2"
    assert files_under(folder) == IRIS_V2
    assert store.downloads == 5  # every object under iris/, none from iris-other/
    one = await store.fetch(replace(source, artifact_version=1))
    assert one == folder.parent / "1"
    assert files_under(one) == {
        "model-settings.json": MODEL_OBJECTS["iris/1/model-settings.json"],
        "model.joblib": b"version one",
    }
    assert store.downloads == 5  # the same prefix: the cache
    with pytest.raises(ArtifactError, match=r"no version folder 7; numbered folders present: 1, 2"):
        await store.fetch(replace(source, artifact_version=7))


async def test_s3_wrong_credentials_are_refused_even_with_a_cached_copy(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket(MODEL_OBJECTS)
    wrong, wrong_name, absent = "definitely-not-the-secret", "wrong", "absent"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / wrong_name).write_text(s3_server.rclone_json(secret_key=wrong))
    store = make_store(tmp_path, secrets_dir=secrets_dir)
    uri = f"s3://{bucket}/iris"
    await store.fetch(ArtifactSource(uri, storage_rclone_config=s3_server.rclone_json()))
    for source in (
        ArtifactSource(uri, storage_secret_name=wrong_name),
        ArtifactSource(uri, storage_rclone_config=s3_server.rclone_ini(secret_key=wrong)),
    ):
        with pytest.raises(ArtifactError) as caught:
            await store.fetch(source)
        message = str(caught.value)
        assert "refused" in message
        assert "check the credentials" in message
        assert wrong not in message
        assert SECRET_KEY not in message
    with pytest.raises(ArtifactError, match="storage secret 'absent' not found"):
        await store.fetch(ArtifactSource(uri, storage_secret_name=absent))


async def test_s3_concurrent_fetches_of_one_prefix_download_once(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket(MODEL_OBJECTS)
    store = make_store(tmp_path)
    source = ArtifactSource(f"s3://{bucket}/iris", storage_rclone_config=s3_server.rclone_json())
    first, second = await asyncio.gather(store.fetch(source), store.fetch(replace(source, artifact_version=1)))
    assert (first.name, second.name) == ("2", "1")
    assert store.downloads == 5


async def test_s3_missing_prefix_and_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket(MODEL_OBJECTS)
    store = make_store(tmp_path)
    config = s3_server.rclone_json()
    with pytest.raises(ArtifactError) as caught:
        await store.fetch(ArtifactSource(f"s3://{bucket}/no/such/model", storage_rclone_config=config))
    assert f"bucket {bucket!r}, prefix 'no/such/model'" in str(caught.value)
    with pytest.raises(ArtifactError, match=r"does not exist|NoSuchBucket"):
        await store.fetch(ArtifactSource("s3://no-such-bucket-here/iris", storage_rclone_config=config))
    assert cache_entries(store) == []


async def test_s3_single_object_uri(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket(MODEL_OBJECTS)
    store = make_store(tmp_path)
    source = ArtifactSource(f"s3://{bucket}/iris/2/model.joblib", storage_rclone_config=s3_server.rclone_json())
    folder = await store.fetch(source)
    assert files_under(folder) == {"model.joblib": b"version two"}


async def test_s3_cache_reuses_until_an_object_changes(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket(MODEL_OBJECTS)
    source = ArtifactSource(f"s3://{bucket}/iris", storage_rclone_config=s3_server.rclone_json())
    store = make_store(tmp_path)
    folder = await store.fetch(source)
    assert store.downloads == 5
    marker = json.loads((folder.parent.parent / ".complete").read_text())
    assert marker["uri"] == f"s3://{bucket}/iris"
    assert set(marker["objects"]) == {"1/model-settings.json", "1/model.joblib", "2/model-settings.json",
                                      "2/model.joblib", "2/extra/deep/file.txt"}  # fmt: skip
    assert SECRET_KEY not in json.dumps(marker)

    assert await store.fetch(source) == folder
    assert store.downloads == 5  # listed, ETags equal: nothing downloaded

    restarted = make_store(tmp_path)  # a new process over the same cache folder
    assert await restarted.fetch(source) == folder
    assert restarted.downloads == 0

    s3_server.put(bucket, "iris/2/model.joblib", b"version two, retrained")
    folder = await store.fetch(source)
    assert store.downloads == 10  # an ETag changed: the prefix is fetched again
    assert (folder / "model.joblib").read_bytes() == b"version two, retrained"
    s3_server.put(bucket, "iris/3/model.joblib", b"version three")
    assert (await store.fetch(source)).name == "3"
    assert [name for name in cache_entries(store) if name.startswith(".")] == []  # no temporary folders left


async def test_s3_declared_sizes_over_a_limit_are_refused_before_anything_is_downloaded(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket({"big/a.bin": bytes(3000), "big/b.bin": bytes(3000)})
    source = ArtifactSource(f"s3://{bucket}/big", storage_rclone_config=s3_server.rclone_json())
    store = make_store(tmp_path, limits=ExtractLimits(max_total_bytes=5000))
    with pytest.raises(ArtifactError, match=r"holds 6000 bytes, over the per-model size limit of 5000 bytes"):
        await store.fetch(source)
    cramped = make_store(tmp_path, cache_limit_bytes=5000)
    with pytest.raises(ArtifactError, match=r"the artifact cache is full: its limit is 5000 bytes"):
        await cramped.fetch(source)
    assert (store.downloads, cramped.downloads) == (0, 0)
    assert cache_entries(store) == []


async def test_s3_unreachable_endpoint_is_an_artifact_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]  # bound, never listening: connections are refused
        config = json.dumps({"type": "s3", "access_key_id": "k", "secret_access_key": SECRET,
                             "endpoint": f"http://127.0.0.1:{port}", "region": "us-east-1"})  # fmt: skip
        with pytest.raises(ArtifactError) as caught:
            await make_store(tmp_path, timeout_seconds=5).fetch(
                ArtifactSource("s3://bucket/model", storage_rclone_config=config)
            )
    assert f"listing s3://bucket/model/ on http://127.0.0.1:{port} failed" in str(caught.value)
    assert SECRET not in str(caught.value)


# -- an http server -----------------------------------------------------------------------------------------


@dataclass
class HttpFiles:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)  # GETs per path
    bodies: Counter[str] = field(default_factory=Counter)  # 200 answers with a body, per path
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # answers wait while it is clear
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first request

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture
async def http_files() -> AsyncIterator[HttpFiles]:
    """Serves ``files`` on 127.0.0.1 with ETags and If-None-Match, counting requests."""
    served = HttpFiles(base="")
    served.gate.set()

    async def handle(request: web.Request) -> web.StreamResponse:
        served.requests[request.path] += 1
        served.arrived.set()
        await served.gate.wait()
        body = served.files.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        etag = f'"{sha256(body)[:20]}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        served.bodies[request.path] += 1
        return web.Response(body=body, headers={"ETag": etag}, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serving(app) as served.base:
        try:
            yield served
        finally:
            served.gate.set()


TAR_MODEL = make_tar([("mnist/1/model.onnx", b"onnx v1"), ("mnist/2/model.onnx", b"onnx v2"),
                      ("mnist/config.pbtxt", b'name: "mnist"')])  # fmt: skip
ZIP_MODEL = make_zip([("model-settings.json", b"{}"), ("model.joblib", b"joblib")])


async def test_http_archives_with_verified_sha256(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files |= {"/m/mnist.tar.gz": TAR_MODEL, "/m/sk.zip": ZIP_MODEL, "/m/latest": ZIP_MODEL}
    store = make_store(tmp_path)
    folder = await store.fetch(ArtifactSource(http_files.url("/m/mnist.tar.gz"), sha256=sha256(TAR_MODEL).upper()))
    assert folder.name == "mnist"  # unwrapped single top folder, which holds config.pbtxt: served itself
    assert files_under(folder) == {"1/model.onnx": b"onnx v1", "2/model.onnx": b"onnx v2",
                                   "config.pbtxt": b'name: "mnist"'}  # fmt: skip
    assert (await store.fetch(ArtifactSource(http_files.url("/m/mnist.tar.gz#sha256=" + sha256(TAR_MODEL)),
                                             artifact_version=2))) == folder / "2"  # fmt: skip
    assert http_files.requests["/m/mnist.tar.gz"] == 1  # a pinned digest is reused without asking again

    folder = await store.fetch(ArtifactSource(http_files.url("/m/sk.zip") + f"#sha256={sha256(ZIP_MODEL)}"))
    assert files_under(folder) == {"model-settings.json": b"{}", "model.joblib": b"joblib"}
    folder = await store.fetch(ArtifactSource(http_files.url("/m/latest")))  # no suffix: zip by content
    assert files_under(folder) == {"model-settings.json": b"{}", "model.joblib": b"joblib"}
    marker = json.loads((folder.parent / ".complete").read_text())
    assert marker["sha256"] == sha256(ZIP_MODEL)
    assert marker["etag"]
    assert store.downloads == 3


async def test_http_wrong_sha256_leaves_nothing(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/m.tgz"] = TAR_MODEL
    store = make_store(tmp_path)
    wrong = "ab" * 32
    with pytest.raises(ArtifactError) as caught:
        await store.fetch(ArtifactSource(http_files.url("/m.tgz"), sha256=wrong))
    assert f"expected {wrong}, got {sha256(TAR_MODEL)}" in str(caught.value)
    assert cache_entries(store) == []
    with pytest.raises(ArtifactError, match="disagree"):
        await store.fetch(ArtifactSource(http_files.url("/m.tgz") + f"#sha256={wrong}", sha256=sha256(TAR_MODEL)))
    with pytest.raises(ArtifactError, match="not 64 hexadecimal digits"):
        await store.fetch(ArtifactSource(http_files.url("/m.tgz"), sha256="abc"))


async def test_http_without_sha256_revalidates_with_etag(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/model.joblib"] = b"weights v1"
    store = make_store(tmp_path)
    source = ArtifactSource(http_files.url("/model.joblib"))
    folder = await store.fetch(source)
    assert files_under(folder) == {"model.joblib": b"weights v1"}  # a single file, kept under its name
    assert await store.fetch(source) == folder
    assert (http_files.requests["/model.joblib"], http_files.bodies["/model.joblib"]) == (2, 1)  # 304
    http_files.files["/model.joblib"] = b"weights v2"
    folder = await store.fetch(source)
    assert (folder / "model.joblib").read_bytes() == b"weights v2"
    assert http_files.bodies["/model.joblib"] == 2
    assert store.downloads == 2


async def test_http_model_file_that_is_a_zip_is_not_unpacked(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/net.pt"] = ZIP_MODEL
    folder = await make_store(tmp_path).fetch(ArtifactSource(http_files.url("/net.pt")))
    assert files_under(folder) == {"net.pt": ZIP_MODEL}


def _nothing_escaped(tmp_path: Path, store: ArtifactStore) -> None:
    assert sorted(os.listdir(tmp_path)) == ["cache"]
    assert cache_entries(store) == []
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ([("ok.txt", b"ok"), ("../evil", b"x")], "member '../evil' has a '..' component"),
        ([("ok.txt", b"ok"), ("../../evil", b"x")], "member '../../evil' has a '..' component"),
        ([("ok.txt", b"ok"), tar_link("link", "../../../evil"), ("link/x", b"x")], "member 'link' is a symbolic link"),
        ([("ok.txt", b"ok"), tar_link("hard", "/etc/passwd", hard=True)], "member 'hard' is a hard link"),
    ],
)
async def test_http_hostile_tar_is_refused(
    http_files: HttpFiles, tmp_path: Path, members: list[tuple[str, bytes]], needle: str
) -> None:
    data = make_tar(members)
    http_files.files["/evil.tar.gz"] = data
    store = make_store(tmp_path)
    with pytest.raises(ArtifactError) as caught:
        await store.fetch(ArtifactSource(http_files.url("/evil.tar.gz"), sha256=sha256(data)))
    assert needle in str(caught.value)
    _nothing_escaped(tmp_path, store)


async def test_http_absolute_members_are_refused(http_files: HttpFiles, tmp_path: Path) -> None:
    target = tmp_path / "abs-evil"
    http_files.files["/abs.tgz"] = make_tar([("fine", b"ok"), (str(target), b"x")])
    http_files.files["/abs.zip"] = make_zip([("fine", b"ok"), (str(target), b"x")])
    store = make_store(tmp_path)
    for path in ("/abs.tgz", "/abs.zip"):
        with pytest.raises(ArtifactError) as caught:
            await store.fetch(ArtifactSource(http_files.url(path)))
        assert f"member {str(target)!r} is an absolute path" in str(caught.value)
        assert not target.exists()
        _nothing_escaped(tmp_path, store)


async def test_http_limits(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/many.zip"] = make_zip([(f"f{i}.bin", b"x") for i in range(20)])
    http_files.files["/big.tgz"] = make_tar([("big.bin", bytes(50_000))])
    http_files.files["/bomb.zip"] = make_zip([("zeros.bin", bytes(5_000_000))])
    http_files.files["/huge.bin"] = bytes(200_000)
    limits = ExtractLimits(max_total_bytes=100_000, max_files=10, max_file_bytes=20_000)
    store = make_store(tmp_path, limits=limits)
    for path, needle in [
        ("/many.zip", "over the limit of 10"),
        ("/big.tgz", "'big.bin' is 50000 bytes, over the per-file limit of 20000"),
        ("/bomb.zip", "over the per-file limit of 20000"),
        ("/huge.bin", "over the limit of"),
    ]:
        with pytest.raises(ArtifactError) as caught:
            await store.fetch(ArtifactSource(http_files.url(path)))
        assert needle in str(caught.value), path
        _nothing_escaped(tmp_path, store)


async def test_http_status_errors_never_show_credentials(http_files: HttpFiles, tmp_path: Path) -> None:
    url = http_files.url("/missing.tgz").replace("http://", "http://user:hunter2@") + "?token=SIGNATURE"
    with pytest.raises(ArtifactError) as caught:
        await make_store(tmp_path).fetch(ArtifactSource(url))
    message = str(caught.value)
    assert "returned 404 Not Found" in message
    assert "hunter2" not in message
    assert "SIGNATURE" not in message


@pytest.mark.timeout(30)
async def test_http_server_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts connections; nobody ever reads or answers
        port = silent.getsockname()[1]
        store = make_store(tmp_path, timeout_seconds=0.5)
        with pytest.raises(ArtifactError, match=r"timed out: no connection, response or data within 0.5s"):
            await store.fetch(ArtifactSource(f"http://127.0.0.1:{port}/model.tgz"))
    assert cache_entries(store) == []


async def test_http_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(ArtifactError, match=f"HTTP GET http://127.0.0.1:{port}/m.tgz failed"):
            await make_store(tmp_path).fetch(ArtifactSource(f"http://127.0.0.1:{port}/m.tgz"))


def watch_flights(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch, callers: int) -> asyncio.Event:
    """An event set once ``callers`` fetches have joined a flight (white-box: the store has no public hook).

    The store's ``_single_flight`` joins or starts a flight without suspending, so when the event's waiter runs,
    every caller counted is on its flight."""
    joined = asyncio.Event()
    entered = 0
    single_flight = store._single_flight

    async def counted(flight: str, work: Callable[[], Awaitable[Path]]) -> Path:
        nonlocal entered
        entered += 1
        if entered == callers:
            joined.set()
        return await single_flight(flight, work)

    monkeypatch.setattr(store, "_single_flight", counted)
    return joined


class ContendedLock(asyncio.Lock):
    """An entry lock that says when someone had to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited_on = asyncio.Event()

    async def acquire(self) -> Literal[True]:
        if self.locked():
            self.waited_on.set()  # the waiter is queued before the event's own waiter can run
        return await super().acquire()


def watch_entry_locks(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> dict[str, ContendedLock]:
    """The store's entry locks, as ContendedLocks (white-box: the store has no public hook)."""
    locks: dict[str, ContendedLock] = {}
    monkeypatch.setattr(store, "_entry_lock", lambda key: locks.setdefault(key, ContendedLock()))
    return locks


async def test_http_concurrent_fetches_download_once(
    http_files: HttpFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http_files.files["/shared.tgz"] = TAR_MODEL
    http_files.gate.clear()
    store = make_store(tmp_path)
    both_joined = watch_flights(store, monkeypatch, callers=2)
    source = ArtifactSource(http_files.url("/shared.tgz"))  # no digest: a caller of its own would ask again
    first = asyncio.create_task(store.fetch(source))
    second = asyncio.create_task(store.fetch(replace(source, artifact_version=1)))
    await asyncio.wait_for(http_files.arrived.wait(), 20)  # hang guard only
    await asyncio.wait_for(both_joined.wait(), 20)  # both wait on the one download, which the gate holds
    assert not first.done()
    assert not second.done()
    http_files.gate.set()
    one, two = await asyncio.gather(first, second)
    assert (one.name, two.name) == ("mnist", "1")
    assert two.parent == one
    assert http_files.requests["/shared.tgz"] == 1
    assert store.downloads == 1


async def test_cancelled_caller_does_not_cancel_the_shared_download(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/shared.tgz"] = TAR_MODEL
    http_files.gate.clear()
    store = make_store(tmp_path)
    source = ArtifactSource(http_files.url("/shared.tgz"))
    impatient = asyncio.create_task(store.fetch(source))
    patient = asyncio.create_task(store.fetch(source))
    await asyncio.wait_for(http_files.arrived.wait(), 20)
    impatient.cancel()
    http_files.gate.set()
    folder = await patient
    assert files_under(folder)["2/model.onnx"] == b"onnx v2"
    assert impatient.cancelled()
    assert http_files.requests["/shared.tgz"] == 1


async def test_unusable_cache_folder_is_an_artifact_error(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/m.zip"] = ZIP_MODEL
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(ArtifactError, match="cannot store the artifacts in"):
        await make_store(tmp_path).fetch(ArtifactSource(http_files.url("/m.zip")))


async def test_restart_reuses_complete_entries_and_removes_leftovers(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/m.zip"] = ZIP_MODEL
    source = ArtifactSource(http_files.url("/m.zip"), sha256=sha256(ZIP_MODEL))
    folder = await make_store(tmp_path).fetch(source)
    cache = tmp_path / "cache"
    (cache / ".tmp-0123456789abcdef-aaaaaa" / "data").mkdir(parents=True)  # a fetch killed midway
    (cache / ("f" * 64) / "data").mkdir(parents=True)  # an entry without its marker
    restarted = make_store(tmp_path)
    assert await restarted.fetch(source) == folder
    assert http_files.requests["/m.zip"] == 1
    assert restarted.downloads == 0
    assert cache_entries(restarted) == [folder.parent.name]


# -- holds, the cache's limit, restarts -----------------------------------------------------------------------


async def test_an_entry_goes_when_its_last_holder_releases_it(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/m.tgz"] = TAR_MODEL
    store = make_store(tmp_path)
    source = ArtifactSource(http_files.url("/m.tgz"))
    first = await store.fetch(source, holder="a_1")
    assert await store.fetch(replace(source, artifact_version=1), holder="b_1") == first / "1"
    assert store.held_key("a_1") == store.held_key("b_1") is not None
    assert store.cache_bytes > 0
    await store.release("a_1")
    assert files_under(first)["2/model.onnx"] == b"onnx v2"  # still there: b_1 holds it
    await store.release("b_1")
    await store.release("b_1")  # twice: nothing more to do
    assert cache_entries(store) == []
    assert store.cache_bytes == 0


async def test_a_release_while_another_holder_fetches_the_same_source_keeps_the_entry(
    http_files: HttpFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http_files.files["/m.tgz"] = TAR_MODEL
    store = make_store(tmp_path)
    locks = watch_entry_locks(store, monkeypatch)
    source = ArtifactSource(http_files.url("/m.tgz"))  # no digest: every fetch asks the server again
    folder = await store.fetch(source, holder="a_1")
    http_files.gate.clear()
    http_files.arrived.clear()
    second = asyncio.create_task(store.fetch(source, holder="b_1"))
    await asyncio.wait_for(http_files.arrived.wait(), 20)  # b_1's fetch is under way (hang guard only)
    [lock] = locks.values()
    release = asyncio.create_task(store.release("a_1"))
    await asyncio.wait_for(lock.waited_on.wait(), 20)  # the release waits for the entry b_1's fetch is using
    assert not release.done()
    http_files.gate.set()
    assert await second == folder  # 304: the same entry
    await release
    assert files_under(folder)["2/model.onnx"] == b"onnx v2"
    await store.release("b_1")
    assert cache_entries(store) == []


async def test_a_failed_fetch_holds_nothing_and_leaves_nothing(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/m.tgz"] = TAR_MODEL
    store = make_store(tmp_path)
    with pytest.raises(ArtifactError, match="no version folder 7"):
        await store.fetch(ArtifactSource(http_files.url("/m.tgz"), artifact_version=7), holder="m_1")
    assert store.held_key("m_1") is None
    assert cache_entries(store) == []
    assert store.cache_bytes == 0


async def test_the_cache_limit_counts_downloads_as_they_are_written(http_files: HttpFiles, tmp_path: Path) -> None:
    http_files.files["/weights.bin"] = os.urandom(3_000_000)
    store = make_store(tmp_path, cache_limit_bytes=1_000_000)
    with pytest.raises(ArtifactError) as caught:
        await store.fetch(ArtifactSource(http_files.url("/weights.bin")), holder="w_1")
    message = str(caught.value)
    assert "the artifact cache is full: its limit is 1000000 bytes (the agent's --max-cache-disk)" in message
    assert "0 bytes are cached for 0 model artifact(s)" in message
    assert cache_entries(store) == []
    assert store.cache_bytes == 0


async def test_a_cache_limit_beyond_the_free_disk_is_warned_about_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit cannot promise disk the filesystem does not have: an agent whose --max-cache-disk is more than
    the cache's filesystem has free says so when it starts (loads then fail for want of disk, not at the limit)."""
    free = shutil.disk_usage(tmp_path).free
    with caplog.at_level(logging.WARNING, logger="agent.artifacts.store"):
        await make_store(tmp_path / "fits", cache_limit_bytes=1 << 20).keep_only({})
        assert caplog.records == []
        await make_store(tmp_path / "too-big", cache_limit_bytes=free + (1 << 40)).keep_only({})
    [warning] = caplog.records
    message = warning.getMessage()
    assert f"--max-cache-disk is {free + (1 << 40)} bytes" in message, message
    assert str(tmp_path / "too-big") in message, message


async def test_a_restarted_store_counts_what_the_cache_holds_and_keeps_only_what_is_held(
    http_files: HttpFiles, tmp_path: Path
) -> None:
    http_files.files |= {"/a.bin": os.urandom(600_000), "/b.bin": os.urandom(600_000)}
    before = make_store(tmp_path, cache_limit_bytes=1_000_000)
    await before.fetch(ArtifactSource(http_files.url("/a.bin")), holder="a_1")
    key = before.held_key("a_1")
    assert key is not None
    held = before.cache_bytes
    assert held > 600_000

    after = make_store(tmp_path, cache_limit_bytes=1_000_000)  # a new process over the same cache
    with pytest.raises(ArtifactError) as caught:  # the limit counts what the earlier process cached
        await after.fetch(ArtifactSource(http_files.url("/b.bin")), holder="b_1")
    assert f"{held} bytes are cached for 1 model artifact(s)" in str(caught.value)
    assert after.cache_bytes == held

    await after.keep_only({"a_1": key})  # the agent adopted a_1: its artifact stays
    assert cache_entries(after) == [key]
    await after.keep_only({})  # nothing adopted: nothing stays
    assert cache_entries(after) == []
    assert after.cache_bytes == 0
    await after.fetch(ArtifactSource(http_files.url("/b.bin")), holder="b_1")
