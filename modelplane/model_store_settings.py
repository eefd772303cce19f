"""An S3 model store (:class:`ModelStoreSettings`: modelplane/s3.py's S3Settings, a bucket, a key prefix and a
request timeout) and its ``--s3-*`` flags, the same for every process that has one (the trainer writes trained
models there, the registry reads ``s3://`` datasets and writes the models it trains there).

The secret key is never a flag (modelplane/secret_inputs.py): it comes from ``--s3-secret-key-file`` or the
environment (``MODELPLANE_<SECTION>_S3_SECRET_KEY``, ``MODELPLANE_S3_SECRET_KEY``, ``AWS_SECRET_ACCESS_KEY``, the
first set winning). ``--s3-secret-key`` is refused with a message saying so (:func:`refuse_s3_secret_flag`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelplane.flag_types import seconds
from modelplane.s3 import S3Settings
from modelplane.secret_inputs import SecretFileError, read_secret_file, refuse_secret_flags

DEFAULT_BUCKET = "modelplane-models"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelStoreSettings(S3Settings):
    """The model store: the S3 store of ``--s3-*`` and where in it trained models go."""

    bucket: str
    prefix: str
    timeout_seconds: float = 60.0  # per request, connect and read (modelplane/s3.py)


def secret_key_variables(section: str) -> tuple[str, ...]:
    """Where the S3 secret key may come from when no --s3-secret-key-file is given, the first set winning."""
    return (f"MODELPLANE_{section.upper()}_S3_SECRET_KEY", "MODELPLANE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")


def add_model_store_flags(
    parser: argparse.ArgumentParser, *, section: str, default_endpoint: str | None, default_prefix: str, what: str
) -> None:
    """The ``--s3-*`` flags; ``what`` says what the store is for (the group's title). Without a default endpoint,
    the process has no S3 store unless ``--s3-endpoint`` is given."""
    s3 = parser.add_argument_group(what)
    endpoint_help = None if default_endpoint else "the S3 store (none unless given)"
    s3.add_argument("--s3-endpoint", default=default_endpoint, metavar="HOST:PORT", help=endpoint_help)
    s3.add_argument("--s3-access-key", default=os.environ.get("AWS_ACCESS_KEY_ID", ""), metavar="KEY")
    s3.add_argument(
        "--s3-secret-key-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the S3 secret key (else the environment: {', '.join(secret_key_variables(section))}); "
        "never a flag, which would show in the process list",
    )
    s3.add_argument("--s3-bucket", default=DEFAULT_BUCKET, metavar="BUCKET", help="created when missing")
    s3.add_argument(
        "--s3-prefix",
        default=default_prefix,
        metavar="PREFIX",
        help=f"key prefix of every stored model ({default_prefix})",
    )
    s3.add_argument("--s3-secure", action="store_true", help="HTTPS to the S3 endpoint")
    s3.add_argument("--s3-region", default="us-east-1")
    s3.add_argument(
        "--s3-timeout",
        type=seconds(3600),
        default=60.0,
        metavar="SECONDS",
        help="connect and read timeout of each S3 request (tried 3 times: a silent S3 costs about 3x this per request)",
    )


def refuse_s3_secret_flag(parser: argparse.ArgumentParser, argv: Sequence[str], section: str) -> dict[str, str]:
    """Exit with a usage error when ``--s3-secret-key`` is given; the ``removed`` entry, for callers refusing
    more flags at once."""
    removed = {
        "--s3-secret-key": "put the key in a file and give --s3-secret-key-file FILE, or set "
        f"{secret_key_variables(section)[0]} in the environment"
    }
    refuse_secret_flags(parser, argv, removed=removed)
    return removed


def _secret_key(
    parser: argparse.ArgumentParser, key_file: Path | None, environ: Mapping[str, str], section: str
) -> str:
    if key_file is not None:
        try:
            return read_secret_file(key_file, "--s3-secret-key-file")
        except SecretFileError as error:
            parser.error(str(error))
    return next((environ[name] for name in secret_key_variables(section) if environ.get(name)), "")


def model_store_from(
    parser: argparse.ArgumentParser, options: argparse.Namespace, environ: Mapping[str, str], section: str
) -> ModelStoreSettings | None:
    """The model store the parsed ``--s3-*`` flags name, None without an endpoint (a bad one is a parser error)."""
    endpoint = (options.s3_endpoint or "").strip()
    if not endpoint:
        return None
    if endpoint.startswith(("http://", "https://")):
        parser.error("--s3-endpoint is HOST:PORT; use --s3-secure for HTTPS")
    if "/" in endpoint or "@" in endpoint:
        parser.error("--s3-endpoint is HOST:PORT, without a path or credentials")
    return ModelStoreSettings(
        endpoint=endpoint,
        origin=f"the {section}'s --s3-* settings",
        access_key=options.s3_access_key,
        secret_key=_secret_key(parser, options.s3_secret_key_file, environ, section),
        bucket=options.s3_bucket,
        prefix=options.s3_prefix.strip("/"),
        secure=options.s3_secure,
        region=options.s3_region,
        timeout_seconds=options.s3_timeout,
    )
