"""Secrets reach a process from files or the environment, never from command-line flags (a flag shows in ``ps``).

``refuse_secret_flags`` turns a secret on the command line into a usage error that says the new way, before
anything else reads the arguments: a removed flag (``--s3-secret-key``) would otherwise be taken by argparse as
an abbreviation of its ``-file`` successor, and a URL flag may carry a password (``redis://:pw@host``).
``read_secret_file`` reads one secret from a file with a size limit; its errors name the file, never the content.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

MAX_SECRET_FILE_BYTES = 64 * 1024


class SecretFileError(ValueError):
    """A secret file that cannot be used; the message names the file and why, never what it holds."""


def _values_of(argv: Sequence[str], flag: str) -> list[str | None]:
    """Every value ``flag`` is given in ``argv`` (None when it is last, with no value after it)."""
    values: list[str | None] = []
    for index, argument in enumerate(argv):
        if argument == "--":
            break
        if argument == flag:
            values.append(argv[index + 1] if index + 1 < len(argv) else None)
        elif argument.startswith(flag + "="):
            values.append(argument[len(flag) + 1 :])
    return values


def url_has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def refuse_secret_flags(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    removed: Mapping[str, str],
    url_flags: Mapping[str, str] | None = None,
) -> None:
    """Exit with a usage error if ``argv`` gives a removed secret flag or a URL flag with a password.

    ``removed`` and ``url_flags`` map each flag to what to do instead. The message never repeats the value."""
    for flag, instead in removed.items():
        if _values_of(argv, flag):
            parser.error(f"{flag} is not accepted: a secret on the command line shows in the process list; {instead}")
    for flag, instead in (url_flags or {}).items():
        if any(value is not None and url_has_password(value) for value in _values_of(argv, flag)):
            parser.error(f"{flag} holds a password: a secret on the command line shows in the process list; {instead}")


def read_secret_file(path: Path, what: str) -> str:
    """The secret in ``path`` without its trailing line break. Raises SecretFileError naming ``what`` and the file."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SECRET_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SecretFileError(f"{what}: no file {path}") from None
    except IsADirectoryError:
        raise SecretFileError(f"{what}: {path} is a folder, expected a file") from None
    except OSError as error:
        raise SecretFileError(f"{what}: cannot read {path}: {error.strerror or type(error).__name__}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretFileError(f"{what}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes; is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{what}: {path} is not UTF-8 text") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise SecretFileError(f"{what}: {path} is empty")
    return secret
