"""Where an experiment's dataset is (seed 002's ``srcpath``): a path under the registry's datasets root (a leading
``/`` is the root's, as the seed writes "/path/to/files"), a ``file://`` URL of a path under that root, or an
``s3://bucket/key`` URL. Nothing outside the root is ever read: ``..`` is refused when the srcpath is given, and
symbolic links are resolved and checked again when the dataset is opened."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import unquote, urlsplit

from registry.errors import InvalidInput

MAX_SRCPATH_CHARS: Final = 2048


def _local_part(srcpath: str) -> str | None:
    """The root-relative path of a local srcpath; None for an S3 URL."""
    if srcpath.startswith("s3://"):
        parts = urlsplit(srcpath)
        if not parts.netloc or not parts.path.strip("/"):
            raise InvalidInput(f"srcpath {srcpath!r}: an S3 URL is s3://BUCKET/KEY")
        return None
    if srcpath.startswith("file://"):
        parts = urlsplit(srcpath)
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"srcpath {srcpath!r}: a file URL names a local path (file:///PATH)")
        return unquote(parts.path)
    if "://" in srcpath:
        raise InvalidInput(f"srcpath {srcpath!r}: give a path under the datasets root, file:///PATH or s3://BUCKET/KEY")
    return srcpath


def check_srcpath(srcpath: str, datasets_root: Path) -> None:
    """Refuse (InvalidInput) a srcpath that is not one of the three forms, or that points outside the root."""
    if not srcpath or len(srcpath) > MAX_SRCPATH_CHARS or any(ord(c) < 0x20 for c in srcpath):
        raise InvalidInput(f"srcpath must be 1-{MAX_SRCPATH_CHARS} printable characters")
    local = _local_part(srcpath)
    if local is None:
        return
    if srcpath.startswith("file://"):
        absolute = PurePosixPath(local)
        root = PurePosixPath(datasets_root.resolve())
        if not absolute.is_absolute() or not absolute.is_relative_to(root):
            raise InvalidInput(f"srcpath {srcpath!r} is outside the datasets root {datasets_root}")
        local = str(absolute.relative_to(root))
    if ".." in PurePosixPath(local).parts:
        raise InvalidInput(f"srcpath {srcpath!r}: '..' is not allowed (paths stay under the datasets root)")


def resolve_srcpath(srcpath: str, datasets_root: Path) -> Path | str:
    """The local file (symbolic links resolved, still under the root) or the S3 URL a srcpath names."""
    check_srcpath(srcpath, datasets_root)
    local = _local_part(srcpath)
    if local is None:
        return srcpath
    root = datasets_root.resolve()
    candidate = Path(local) if srcpath.startswith("file://") else root / local.lstrip("/")
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise InvalidInput(f"srcpath {srcpath!r} leads outside the datasets root {datasets_root}")
    return resolved
