"""Safe extraction of tar and zip archives (agent/artifacts/archives.py)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import stat
import struct
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.artifacts import ArtifactError, ExtractLimits, detect_archive, extract_archive
from agent.artifacts.quota import CacheQuota
from agent.artifacts.safety import Tree, UnsafeName, safe_parts
from tests.support.archives import (
    BOMB_KINDS,
    files_under,
    make_tar,
    make_zip,
    sparse_tar_member,
    tar_file_header,
    tar_link,
    zero_bomb,
)

LIMITS = ExtractLimits()

# -- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder holding only the archive and, if extraction succeeds, the destination."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def write(work: Path, name: str, data: bytes) -> Path:
    path = work / name
    path.write_bytes(data)
    return path


def assert_refused(work: Path, archive: Path, needle: str, limits: ExtractLimits = LIMITS) -> ArtifactError:
    """Extraction fails naming ``needle``, and leaves nothing but the archive in its folder."""
    destination = work / "out"
    with pytest.raises(ArtifactError) as caught:
        extract_archive(archive, destination, limits)
    assert needle in str(caught.value), str(caught.value)
    assert sorted(os.listdir(work)) == [archive.name]
    return caught.value


# -- extraction ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_tar_extracts_files_and_folders(work: Path, compression: Literal["", "gz", "bz2", "xz"]) -> None:
    folder = tarfile.TarInfo("model/1")
    folder.type = tarfile.DIRTYPE
    data = make_tar(
        [folder, ("model/1/weights.bin", b"\x00\x01" * 1000), ("model/model-settings.json", b"{}"), ("./a", b"a")],
        compression,
    )
    archive = write(work, "model.tar" + (f".{compression}" if compression else ""), data)
    assert extract_archive(archive, work / "out", LIMITS) == "tar"
    assert files_under(work / "out") == {
        "a": b"a",
        "model/1/weights.bin": b"\x00\x01" * 1000,
        "model/model-settings.json": b"{}",
    }
    assert sorted(os.listdir(work)) == [archive.name, "out"]  # the temporary folder is gone


def test_zip_extracts_and_ignores_permission_bits(work: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        info = zipfile.ZipInfo("bin/run.sh")
        info.create_system = 3
        info.external_attr = (stat.S_IFREG | 0o4777) << 16  # setuid and world-writable: not reproduced
        zipped.writestr(info, b"#!/bin/sh\n")
        zipped.writestr("m/", b"")
        zipped.writestr("m\\windows\\style.txt", b"w")
    archive = write(work, "a.zip", buffer.getvalue())
    assert extract_archive(archive, work / "out", LIMITS) == "zip"
    assert files_under(work / "out") == {"bin/run.sh": b"#!/bin/sh\n", "m/windows/style.txt": b"w"}
    assert stat.S_IMODE((work / "out/bin/run.sh").stat().st_mode) & 0o7022 == 0


def test_detection_by_name_then_content(work: Path) -> None:
    tar_bytes = make_tar([("a", b"a")])
    zip_bytes = make_zip([("a", b"a")])
    assert detect_archive(write(work, "noext", tar_bytes)) == "tar"
    assert detect_archive(write(work, "noext2", zip_bytes)) == "zip"
    assert detect_archive(write(work, "plain", make_tar([("a", b"a")], ""))) == "tar"
    assert detect_archive(write(work, "blob", b"just bytes")) is None
    # A zip underneath a model format (PyTorch .pt, Keras .keras) is a file, not an archive to unpack.
    assert detect_archive(write(work, "model.pt", zip_bytes)) is None
    assert detect_archive(write(work, "model.pkl.gz", tar_bytes)) is None
    # An archive suffix decides even when the content disagrees (extraction then fails clearly).
    assert detect_archive(write(work, "x.ZIP", b"nope")) == "zip"
    assert detect_archive(write(work, "x.tgz", b"nope")) == "tar"
    assert detect_archive(write(work, "x", b"nope"), name="download.tar.gz") == "tar"


def test_not_an_archive_is_an_error(work: Path) -> None:
    for name, data, needle in [
        ("blob", b"not an archive", "archive 'blob' is not a tar or zip archive"),
        ("bad.tar.gz", b"\x1f\x8b garbage", "cannot extract archive 'bad.tar.gz' as tar"),
        ("bad.zip", b"PK\x03\x04 garbage", "cannot extract archive 'bad.zip' as zip"),
    ]:
        assert_refused(work, write(work, name, data), needle)
        (work / name).unlink()


def test_empty_archive_is_an_error(work: Path) -> None:
    folder = tarfile.TarInfo("only-a-folder")
    folder.type = tarfile.DIRTYPE
    assert_refused(work, write(work, "empty.tar.gz", make_tar([folder])), "holds no files")


def test_destination_must_not_exist(work: Path) -> None:
    archive = write(work, "a.tgz", make_tar([("a", b"a")]))
    (work / "out").mkdir()
    with pytest.raises(ArtifactError, match="already exists"):
        extract_archive(archive, work / "out", LIMITS)


# -- refused members ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil", "'..' component"),
        ("model/../../evil", "'..' component"),
        ("/modelplane-test-evil-absolute", "absolute path"),
        ("C:/Windows/evil", "drive letter"),
        ("..\\evil", "'..' component"),
    ],
)
def test_tar_refuses_escaping_names(work: Path, name: str, reason: str) -> None:
    archive = write(work, "evil.tar.gz", make_tar([("fine.txt", b"ok"), (name, b"pwned")]))
    error = assert_refused(work, archive, repr(name))
    assert reason in str(error)
    assert not (work.parent / "evil").exists()
    assert not Path("/modelplane-test-evil-absolute").exists()


@pytest.mark.parametrize(("name", "reason"), [("../evil", "'..' component"), ("/abs/evil", "absolute path")])
def test_zip_refuses_escaping_names(work: Path, name: str, reason: str) -> None:
    archive = write(work, "evil.zip", make_zip([("fine.txt", b"ok"), (name, b"pwned")]))
    error = assert_refused(work, archive, repr(name))
    assert reason in str(error)
    assert not (work.parent / "evil").exists()


@pytest.mark.parametrize(
    ("link", "needle"),
    [
        (tar_link("escape", "../../etc/passwd"), "symbolic link"),
        (tar_link("inside", "fine.txt"), "symbolic link"),  # links are refused wherever they point
        (tar_link("hard", "fine.txt", hard=True), "hard link"),
        (tar_link("hard-out", "/etc/passwd", hard=True), "hard link"),
    ],
)
def test_tar_refuses_links(work: Path, link: tarfile.TarInfo, needle: str) -> None:
    archive = write(work, "links.tar.gz", make_tar([("fine.txt", b"ok"), link, (f"{link.name}/x", b"through")]))
    error = assert_refused(work, archive, repr(link.name))
    assert needle in str(error)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_refuses_devices_and_fifos(work: Path, kind: bytes) -> None:
    device = tarfile.TarInfo("dev")
    device.type = kind
    archive = write(work, "dev.tar", make_tar([device], ""))
    assert "device file or FIFO" in str(assert_refused(work, archive, "'dev'"))


def test_zip_refuses_symlinks(work: Path) -> None:
    archive = write(work, "links.zip", make_zip([("fine.txt", b"ok")], symlinks=[("escape", "../../etc")]))
    assert "symbolic link" in str(assert_refused(work, archive, "'escape'"))


def test_zip_refuses_encrypted_members(work: Path) -> None:
    data = bytearray(make_zip([("secret.bin", b"x" * 100)]))
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 8, struct.unpack_from("<H", data, central + 8)[0] | 0x1)
    assert "is encrypted" in str(assert_refused(work, write(work, "enc.zip", bytes(data)), "'secret.bin'"))


# -- limits -------------------------------------------------------------------------------------------------


def test_file_count_limit(work: Path) -> None:
    limits = ExtractLimits(max_files=3)
    archive = write(work, "many.tgz", make_tar([(f"f{i}", b"x") for i in range(5)]))
    assert_refused(work, archive, "more than 3 files", limits)
    archive.unlink()
    zipped = write(work, "many.zip", make_zip([(f"f{i}", b"x") for i in range(5)]))
    destination = work / "out"
    with pytest.raises(ArtifactError, match="over the limit of 3"):
        extract_archive(zipped, destination, limits)
    assert not destination.exists()


def test_per_file_and_total_limits(work: Path) -> None:
    limits = ExtractLimits(max_total_bytes=1000, max_file_bytes=500)
    big = write(work, "big.tgz", make_tar([("big.bin", b"x" * 600)]))
    assert_refused(work, big, "over the per-file limit of 500", limits)
    big.unlink()
    total = write(work, "total.zip", make_zip([(f"part{i}", b"x" * 400) for i in range(3)]))
    assert_refused(work, total, "over the per-model size limit of 1000 bytes", limits)


def test_one_file_may_take_the_whole_per_model_limit_unless_a_narrower_per_file_limit_is_given(work: Path) -> None:
    """The agent has one size flag, --max-model-disk: a model that is one big file (a quantised LLM) may use all of
    it. A tar member that claims 5 GiB under a 6 GiB limit is read (and found truncated), never refused by a
    per-file limit nobody set."""
    gib = 1 << 30
    archive = write(work, "one-big-file.tar", tar_file_header("weights.bin", 5 * gib) + bytes(tarfile.BLOCKSIZE))
    unlimited_ratio = 10**12  # the header alone must decide here, not the compression ratio
    error = assert_refused(
        work, archive, "weights.bin", ExtractLimits(max_total_bytes=6 * gib, max_ratio=unlimited_ratio)
    )
    assert "per-file" not in str(error), error
    assert "unexpected end of data" in str(error), error
    narrower = ExtractLimits(max_total_bytes=6 * gib, max_file_bytes=gib, max_ratio=unlimited_ratio)
    assert_refused(work, archive, f"over the per-file limit of {gib}", narrower)


def test_zip_bomb_is_refused_by_size(work: Path) -> None:
    bomb = make_zip([("zeros.bin", bytes(20 * 1024 * 1024))])
    assert len(bomb) < 100_000
    archive = write(work, "bomb.zip", bomb)
    assert_refused(work, archive, "zeros.bin", ExtractLimits(max_file_bytes=1024 * 1024))


def test_zip_with_understated_sizes_is_refused(work: Path) -> None:
    """Headers that claim a tiny file do not let a big one through: bytes are counted, and the CRC is checked."""
    data = bytearray(make_zip([("liar.bin", b"y" * 50_000)]))
    struct.pack_into("<I", data, 22, 10)  # local header: uncompressed size
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)  # central directory: uncompressed size
    assert_refused(work, write(work, "liar.zip", bytes(data)), "liar.bin", ExtractLimits(max_file_bytes=1000))


def test_member_conflicts_are_an_artifact_error(work: Path) -> None:
    archive = write(work, "clash.tgz", make_tar([("a", b"file"), ("a/b", b"under a file")]))
    assert "'a/b' clashes with another member" in str(assert_refused(work, archive, "'a/b'"))
    archive.unlink()
    archive = write(work, "clash2.tgz", make_tar([("a/b", b"in a folder"), ("a", b"where the folder is")]))
    assert "'a' clashes with another member" in str(assert_refused(work, archive, "'a'"))


# -- names --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parts"),
    [("a/b", ("a", "b")), ("./a//b/", ("a", "b")), ("a\\b", ("a", "b")), (".", ()), ("a/./b", ("a", "b"))],
)
def test_safe_parts(name: str, parts: tuple[str, ...]) -> None:
    assert safe_parts(name) == parts


@pytest.mark.parametrize("name", ["/a", "\\a", "a/../b", "..", "c:x", "Z:\\x", "a\x00b"])
def test_unsafe_parts(name: str) -> None:
    with pytest.raises(UnsafeName):
        safe_parts(name)


@pytest.mark.parametrize(
    "parts", [("..", "escaped"), ("a", "..", "..", "escaped"), ("a/../../escaped",), ("", "escaped"), (".", "x")]
)
def test_a_tree_makes_nothing_for_parts_that_are_not_plain_names(tmp_path: Path, parts: tuple[str, ...]) -> None:
    """Tree is the last guard before the disk: it checks every component before it makes a folder, not the
    resolved path after (by then a folder outside its root would exist)."""
    root = tmp_path / "root"
    root.mkdir()
    tree = Tree(root)
    with pytest.raises(UnsafeName):
        tree.folder(parts)
    with pytest.raises(UnsafeName):
        tree.file((*parts, "model.bin"))
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["root"]


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b", "a\x00b"])
def test_a_trees_file_name_is_one_plain_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeName):
        Tree(tmp_path).file(("models", name))


# -- properties ---------------------------------------------------------------------------------------------

_PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_all_inside(folder: Path, destination: Path) -> None:
    """Everything under ``folder`` is the archive or lies inside ``destination``, and no link was made."""
    for path in folder.rglob("*"):
        assert not path.is_symlink(), path
        assert path.name == "archive" or path == destination or destination in path.parents, path


@_PROPERTY_SETTINGS
@given(
    prefix=st.sampled_from([b"", b"\x1f\x8b\x08\x00", b"PK\x03\x04", b"PK\x05\x06", b"BZh9", b"\xfd7zXZ\x00"]),
    body=st.binary(max_size=2048),
    kind=st.sampled_from([None, "tar", "zip"]),
)
def test_arbitrary_bytes_only_raise_artifact_error(
    prefix: bytes, body: bytes, kind: Literal["tar", "zip"] | None
) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        archive = folder / "archive"
        archive.write_bytes(prefix + body)
        destination = folder / "out"
        try:
            extract_archive(archive, destination, ExtractLimits(max_total_bytes=1 << 20), kind=kind)
        except ArtifactError:
            assert sorted(os.listdir(folder)) == ["archive"]
        _assert_all_inside(folder, destination)


@_PROPERTY_SETTINGS
@given(data=st.data())
def test_arbitrary_tar_members_land_inside_or_are_refused(data: st.DataObject) -> None:
    """Corrupting a valid tar in place also reaches the header parser with nearly-valid input."""
    names = data.draw(
        st.lists(
            st.lists(
                st.sampled_from(["a", "b", ".", "..", "/", "\\", ":", "C", "\x00", "é", " ", "-"]), max_size=8
            ).map("".join),
            min_size=1,
            max_size=5,
        )
    )
    try:
        tar_bytes = make_tar([(name, name.encode("utf-8", "replace")) for name in names], "")
    except (ValueError, tarfile.TarError):
        return  # tarfile itself cannot write this name
    if data.draw(st.booleans()):
        position = data.draw(st.integers(min_value=0, max_value=len(tar_bytes) - 1))
        byte = data.draw(st.integers(min_value=0, max_value=255))
        tar_bytes = tar_bytes[:position] + bytes([byte]) + tar_bytes[position + 1 :]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        archive = folder / "archive"
        archive.write_bytes(tar_bytes)
        destination = folder / "out"
        try:
            extract_archive(archive, destination, LIMITS, kind="tar")
        except ArtifactError as exc:
            assert sorted(os.listdir(folder)) == ["archive"]
            assert "archive 'archive'" in str(exc)
        _assert_all_inside(folder, destination)


def _is_unsafe(name: str) -> bool:
    try:
        safe_parts(name)
    except UnsafeName:
        return True
    return False


@_PROPERTY_SETTINGS
@given(
    names=st.lists(
        st.lists(st.sampled_from(["a", "b", ".", "..", "/", "\\", ":", "C", "é", "-"]), max_size=8).map("".join),
        min_size=1,
        max_size=5,
    )
)
def test_unsafe_tar_names_are_always_refused(names: list[str]) -> None:
    """Uncorrupted archives: any member whose name is unsafe makes the whole archive refused, naming it."""
    tar_bytes = make_tar([(name, b"x") for name in names], "")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        archive = folder / "archive"
        archive.write_bytes(tar_bytes)
        destination = folder / "out"
        try:
            extract_archive(archive, destination, LIMITS, kind="tar")
        except ArtifactError:
            assert sorted(os.listdir(folder)) == ["archive"]
        else:
            assert not any(_is_unsafe(name) for name in names), names
            for name in names:
                parts = safe_parts(name)
                if parts:
                    assert destination.joinpath(*parts).exists(), name
        _assert_all_inside(folder, destination)


# -- properties: hostile archives of every kind ----------------------------------------------------------------

# What a member may be. Tar: every type tarfile knows, plus a GNU long name whose header claims huge data.
TAR_TYPES = ("file", "dir", "symlink", "hardlink", "chr", "blk", "fifo", "contiguous", "sparse", "longname")
ZIP_TYPES = ("file", "dir", "symlink", "chr", "fifo", "socket")
_TAR_TYPE_FLAGS = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                   "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE,
                   "contiguous": tarfile.CONTTYPE}  # fmt: skip
_ZIP_MODES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "chr": stat.S_IFCHR,
              "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK}  # fmt: skip
ESCAPE = "escaped"  # the name every escaping member aims at, beside the extraction folder

_components = st.sampled_from(["a", "b", "m", ".", "..", "", "é", "C:", "\\", "\x00", " ", "x" * 300])
member_names = st.one_of(
    st.lists(_components, min_size=1, max_size=6).map("/".join),
    st.sampled_from([f"../{ESCAPE}", f"a/../../{ESCAPE}", f"C:\\{ESCAPE}", f"..\\{ESCAPE}", "/", ".", "a/", "a"]),
    st.integers(min_value=1, max_value=200).map(lambda depth: "d/" * depth + "f"),
)
link_targets = st.sampled_from(["a", f"../{ESCAPE}", f"../../{ESCAPE}", "/etc/passwd", "", "a/../../.."])


@st.composite
def tar_members(draw: st.DrawFn) -> bytes:
    """One member's raw bytes: a header (declaring any size, up to 2**36) and data (maybe shorter)."""
    kind = draw(st.sampled_from(TAR_TYPES))
    name = draw(member_names)
    data = draw(st.binary(max_size=600))
    if kind == "sparse":
        return sparse_tar_member(name or "s", draw(st.integers(min_value=512, max_value=1 << 36)))
    info = tarfile.TarInfo(name)
    declared = draw(st.one_of(st.just(len(data)), st.integers(min_value=0, max_value=1 << 36)))
    if kind == "longname":  # GNU 'L': the next member's name, in as many bytes as the header says
        info.type = tarfile.GNUTYPE_LONGNAME
        info.name = "././@LongLink"
    elif kind != "file":
        info.type = _TAR_TYPE_FLAGS[kind]
        info.linkname = draw(link_targets)
    if kind in ("file", "contiguous", "longname"):
        info.size = declared
    try:
        header = info.tobuf(format=draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])))
    except (ValueError, tarfile.HeaderError, UnicodeEncodeError):
        header = tar_file_header("fallback", len(data))
    body = data if info.size else b""
    return header + body + bytes(-len(body) % tarfile.BLOCKSIZE)


@st.composite
def hostile_tars(draw: st.DrawFn) -> tuple[str, bytes]:
    raw = b"".join(draw(st.lists(tar_members(), min_size=1, max_size=6))) + bytes(2 * tarfile.BLOCKSIZE)
    compression = draw(st.sampled_from(["tar", "tar.gz", "tar.bz2", "tar.xz"]))
    compress: dict[str, Callable[[bytes], bytes]] = {"tar": bytes, "tar.gz": gzip.compress, "tar.bz2": bz2.compress,
                                                     "tar.xz": lzma.compress}  # fmt: skip
    return f"archive.{compression}", compress[compression](raw)


@st.composite
def hostile_zips(draw: st.DrawFn) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for _ in range(draw(st.integers(min_value=1, max_value=6))):
            info = zipfile.ZipInfo(draw(member_names).replace("\x00", "") or "z")
            info.create_system = 3
            info.external_attr = (_ZIP_MODES[draw(st.sampled_from(ZIP_TYPES))] | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # duplicate names are the point
                zipped.writestr(info, draw(st.binary(max_size=600)))
    data = bytearray(buffer.getvalue())
    central = data.find(b"PK\x01\x02")
    if draw(st.booleans()) and central >= 0:  # one entry lies about its size, in both headers
        size = draw(st.integers(min_value=0, max_value=(1 << 32) - 1))
        struct.pack_into("<I", data, central + 24, size)
        local = struct.unpack_from("<I", data, central + 42)[0]
        struct.pack_into("<I", data, local + 22, size)
    return "archive.zip", bytes(data)


bombs = st.builds(
    lambda kind, size: (f"archive.{'tar' if kind == 'sparse-tar' else kind}", zero_bomb(kind, size)),
    st.sampled_from(BOMB_KINDS),
    st.integers(min_value=1, max_value=20_000_000),
)


@st.composite
def damaged(draw: st.DrawFn, archives: st.SearchStrategy[tuple[str, bytes]]) -> tuple[str, bytes]:
    """An archive as made, truncated, or with bytes changed: a download cut short, a disk error."""
    name, data = draw(archives)
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(min_value=0, max_value=len(data) - 1))]
    elif damage == "flip" and data:
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            position = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data = data[:position] + bytes([draw(st.integers(0, 255))]) + data[position + 1 :]
    if draw(st.booleans()):
        name = "archive"  # no suffix: detected by content
    return name, data


small_limits = st.builds(
    ExtractLimits,
    max_total_bytes=st.integers(min_value=1, max_value=3_000_000),
    max_files=st.integers(min_value=1, max_value=40),
    max_file_bytes=st.none() | st.integers(min_value=1, max_value=3_000_000),
    max_ratio=st.integers(min_value=1, max_value=2000),
    ratio_exempt_bytes=st.integers(min_value=1, max_value=2_000_000),
)


_REASON = re.compile(r"'[^']*'|[0-9]+")


def _entries(root: Path) -> list[Path]:
    return [Path(folder, name) for folder, dirs, files in os.walk(root) for name in (*dirs, *files)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    archive=damaged(st.one_of(hostile_tars(), hostile_zips(), bombs)),
    limits=small_limits,
    cache_limit=st.integers(min_value=1, max_value=3_000_000),
)
def test_hostile_archives_stay_inside_within_limits_or_fail_with_an_artifact_error(
    archive: tuple[str, bytes], limits: ExtractLimits, cache_limit: int
) -> None:
    """Whatever an archive holds: extraction writes only regular files and folders inside the destination,
    within every limit (counted byte by byte against the cache too), or fails with an ArtifactError and
    leaves nothing. Any other exception fails the test."""
    name, data = archive
    with tempfile.TemporaryDirectory() as temporary:
        outer = Path(temporary)
        work = outer / "work"
        work.mkdir()
        path = work / name
        path.write_bytes(data)
        destination = work / "out"
        charge = CacheQuota(cache_limit).charge("the test")
        try:
            extract_archive(path, destination, limits, charge=charge)
        except ArtifactError as error:
            event(f"refused: {_REASON.sub('N', str(error).split(': ', 1)[-1])[:60]}")
            assert sorted(os.listdir(work)) == [name]  # nothing left, not even a temporary folder
        else:
            event("extracted")
            entries = _entries(destination)
            files = [entry for entry in entries if stat.S_ISREG(entry.lstat().st_mode)]
            assert all(stat.S_ISDIR(entry.lstat().st_mode) for entry in entries if entry not in files)
            written = sum(entry.lstat().st_size for entry in files)
            assert written <= charge.bytes <= cache_limit  # every byte on disk was counted
            assert written <= limits.max_total_bytes
            assert written <= limits.expansion_limit(len(data))
            assert all(entry.lstat().st_size <= (limits.max_file_bytes or limits.max_total_bytes) for entry in files)
            assert len(entries) <= limits.max_files
        assert sorted(os.listdir(outer)) == ["work"]  # nothing escaped beside the folder ...
        assert not Path(f"/{ESCAPE}").exists()  # ... nor to an absolute path


plain_names = st.lists(st.sampled_from(["a", "b", "c", "é", "w.bin"]), min_size=1, max_size=5).map("/".join)
contents = st.one_of(st.binary(max_size=3000), st.integers(min_value=0, max_value=300_000).map(bytes))


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[str, bytes, dict[str, bytes]]:
    """A valid archive of regular files (names may repeat: the last one wins), and what it should extract to."""
    members = draw(st.lists(st.tuples(plain_names, contents), min_size=1, max_size=8))
    kind = draw(st.sampled_from(["tar", "tar.gz", "tar.bz2", "tar.xz", "zip"]))
    if kind == "zip":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = make_zip(members)
    else:
        compression = kind.removeprefix("tar").removeprefix(".")
        data = make_tar(members, compression)  # type: ignore[arg-type]
    return f"archive.{kind}", data, dict(members)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archive=well_formed(), limits=small_limits, cache_limit=st.integers(min_value=1, max_value=3_000_000))
def test_valid_archives_extract_exactly_or_are_refused_by_a_named_limit(
    archive: tuple[str, bytes, dict[str, bytes]], limits: ExtractLimits, cache_limit: int
) -> None:
    name, data, expected = archive
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        path = work / name
        path.write_bytes(data)
        destination = work / "out"
        charge = CacheQuota(cache_limit).charge("the test")
        try:
            extract_archive(path, destination, limits, charge=charge)
        except ArtifactError as error:
            limits_named = ("limit", "more than", "compression ratio", "clashes with another member")
            assert any(words in str(error) for words in limits_named), str(error)
            event(f"refused: {_REASON.sub('N', str(error).split(': ', 1)[-1])[:50]}")
            assert sorted(os.listdir(work)) == [name]
            return
        event("extracted")
        assert files_under(destination) == {"/".join(safe_parts(key)): value for key, value in expected.items()}
        written = sum(len(value) for value in expected.values())
        assert written <= min(limits.max_total_bytes, limits.expansion_limit(len(data)), charge.bytes, cache_limit)
        assert len(_entries(destination)) <= limits.max_files
