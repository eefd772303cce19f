"""Archives built for tests: tar and zip files with any member (links and devices included), and decompression
bombs that are small to build and huge to extract. Used by the archive, artifact, disk and agent tests."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

Member = tuple[str, bytes] | tarfile.TarInfo


def make_tar(members: Iterable[Member], compression: Literal["", "gz", "bz2", "xz"] = "gz") -> bytes:
    """A tar archive; a (name, data) pair is a regular file, a TarInfo is written as given (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    if compression == "gz":
        return gzip.compress(raw)
    if compression == "bz2":
        return bz2.compress(raw)
    if compression == "xz":
        return lzma.compress(raw)
    return raw


def tar_link(name: str, target: str, *, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def make_zip(members: Iterable[tuple[str, bytes]], *, symlinks: Iterable[tuple[str, str]] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members:
            zipped.writestr(name, data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zipped.writestr(info, target)
    return buffer.getvalue()


BombKind = Literal["tar.gz", "tar.bz2", "tar.xz", "zip", "sparse-tar"]
BOMB_KINDS: tuple[BombKind, ...] = ("tar.gz", "tar.bz2", "tar.xz", "zip", "sparse-tar")
_BOMB_CHUNK = 16 << 20


def tar_file_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _tar_files(files: Sequence[tuple[str, bytes]]) -> bytes:
    """Tar members without the end-of-archive blocks, so more can follow."""
    out = bytearray()
    for name, data in files:
        out += tar_file_header(name, len(data)) + data + bytes(-len(data) % tarfile.BLOCKSIZE)
    return bytes(out)


def sparse_tar_member(name: str, size: int) -> bytes:
    """An old-GNU sparse member: one 512-byte block of data stored, ``size`` bytes when read (the rest holes)."""
    header = bytearray(tar_file_header(name, tarfile.BLOCKSIZE))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = b"%011o\0" % (size - tarfile.BLOCKSIZE)  # the one stored run: offset ...
    header[398:410] = b"%011o\0" % tarfile.BLOCKSIZE  # ... and length
    header[483:495] = b"%011o\0" % size  # the real size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + bytes(tarfile.BLOCKSIZE)


def _concatenated(compress: Callable[[bytes], bytes], head: bytes, zeros: int) -> bytes:
    """``head`` then ``zeros`` zero bytes as concatenated compressed streams (gzip, bzip2 and xz readers
    read on across stream ends): one compressed chunk of zeros is reused, so no 1 GiB is ever compressed."""
    whole, rest = divmod(zeros, _BOMB_CHUNK)
    chunk = compress(bytes(_BOMB_CHUNK)) if whole else b""
    return compress(head) + chunk * whole + (compress(bytes(rest)) if rest else b"")


def _deflated_zeros(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes and its CRC-32, from one full-flushed block reused."""
    whole, rest = divmod(size, _BOMB_CHUNK)
    crc = 0
    for _ in range(whole):
        crc = zlib.crc32(bytes(_BOMB_CHUNK), crc)
    crc = zlib.crc32(bytes(rest), crc)
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = block.compress(bytes(_BOMB_CHUNK)) + block.flush(zlib.Z_FULL_FLUSH) if whole else b""
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    return chunk * whole + tail.compress(bytes(rest)) + tail.flush(), crc


def _zip_with_deflated(files: Sequence[tuple[str, bytes]], name: str, size: int) -> bytes:
    """A zip of ``files`` and then ``name`` holding ``size`` zero bytes (deflated; under 4 GiB, no zip64)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for file_name, data in files:
            zipped.writestr(file_name, data)
    data, crc = _deflated_zeros(size)
    encoded = name.encode()
    stored = buffer.getvalue()
    end = stored.rindex(b"PK\x05\x06")
    _, _, _, _, count, central_size, central_at, _ = struct.unpack_from("<IHHHHIIH", stored, end)
    local_at = central_at  # the new member goes where the central directory was
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(encoded), 0)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size, len(encoded), 0, 0, 0, 0, 0,
        local_at,
    )  # fmt: skip
    body = stored[:central_at] + local + encoded + data
    directory = stored[central_at : central_at + central_size] + central + encoded
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count + 1, count + 1, len(directory), len(body), 0)
    return body + directory + eocd


def zero_bomb(kind: BombKind, size: int, files: Sequence[tuple[str, bytes]] = (), name: str = "zeros.bin") -> bytes:
    """A small archive of ``kind`` holding ``files`` and then ``name``: ``size`` zero bytes when extracted.

    Built in well under a second even for gigabytes (nothing of that size is ever held or compressed).
    """
    if kind == "zip":
        return _zip_with_deflated(files, name, size)
    if kind == "sparse-tar":
        return _tar_files(files) + sparse_tar_member(name, size) + bytes(2 * tarfile.BLOCKSIZE)
    head = _tar_files(files) + tar_file_header(name, size)
    # The member's data, its padding and the end-of-archive blocks are all zeros.
    zeros = size + (-size % tarfile.BLOCKSIZE) + 2 * tarfile.BLOCKSIZE
    compress: dict[str, Callable[[bytes], bytes]] = {"tar.gz": gzip.compress, "tar.bz2": bz2.compress,
                                                     "tar.xz": lzma.compress}  # fmt: skip
    return _concatenated(compress[kind], head, zeros)


def files_under(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}
