"""The trainer's model store: the S3 store (``--s3-*``) trained models are written to, and its flags. The secret key
is never a flag (modelplane/secret_inputs.py): it comes from ``--s3-secret-key-file`` or the environment."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelplane.flag_types import seconds
from modelplane.s3 import S3Settings
from modelplane.secret_inputs import SecretFileError, read_secret_file

# Where the S3 secret key may come from when no --s3-secret-key-file is given, the first set winning.
S3_SECRET_KEY_VARIABLES = ("MODELPLANE_TRAINER_S3_SECRET_KEY", "MODELPLANE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelStoreSettings(S3Settings):
    """The model store: the S3 store of ``--s3-*`` and where in it trained models go."""

    bucket: str
    prefix: str
    timeout_seconds: float = 60.0  # per request, connect and read (modelplane/s3.py)


def add_model_store_flags(parser: argparse.ArgumentParser) -> None:
    s3 = parser.add_argument_group("model store (S3)")
    s3.add_argument("--s3-endpoint", default="127.0.0.1:9000", metavar="HOST:PORT")
    s3.add_argument("--s3-access-key", default=os.environ.get("AWS_ACCESS_KEY_ID", ""), metavar="KEY")
    s3.add_argument(
        "--s3-secret-key-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the S3 secret key (else the environment: {', '.join(S3_SECRET_KEY_VARIABLES)}); "
        "never a flag, which would show in the process list",
    )
    s3.add_argument("--s3-bucket", default="modelplane-models", metavar="BUCKET", help="created when missing")
    s3.add_argument("--s3-prefix", default="models", metavar="PREFIX", help="key prefix of every stored model")
    s3.add_argument("--s3-secure", action="store_true", help="HTTPS to the S3 endpoint")
    s3.add_argument("--s3-region", default="us-east-1")
    s3.add_argument(
        "--s3-timeout",
        type=seconds(3600),
        default=60.0,
        metavar="SECONDS",
        help="connect and read timeout of each S3 request (tried 3 times: a silent S3 costs about 3x this per "
        "request, and --max-attempts such waits before a run is reported failed)",
    )


def _secret_key(parser: argparse.ArgumentParser, key_file: Path | None, environ: Mapping[str, str]) -> str:
    """The S3 secret key: from ``--s3-secret-key-file``, else the first of S3_SECRET_KEY_VARIABLES set."""
    if key_file is not None:
        try:
            return read_secret_file(key_file, "--s3-secret-key-file")
        except SecretFileError as error:
            parser.error(str(error))
    return next((environ[name] for name in S3_SECRET_KEY_VARIABLES if environ.get(name)), "")


def model_store_from(
    parser: argparse.ArgumentParser, options: argparse.Namespace, environ: Mapping[str, str]
) -> ModelStoreSettings:
    """The model store the parsed ``--s3-*`` flags name (a bad one is a parser error)."""
    secret_key = _secret_key(parser, options.s3_secret_key_file, environ)
    if options.s3_endpoint.startswith(("http://", "https://")):
        parser.error("--s3-endpoint is HOST:PORT; use --s3-secure for HTTPS")
    return ModelStoreSettings(
        endpoint=options.s3_endpoint,
        origin="the trainer's --s3-* settings",
        access_key=options.s3_access_key,
        secret_key=secret_key,
        bucket=options.s3_bucket,
        prefix=options.s3_prefix.strip("/"),
        secure=options.s3_secure,
        region=options.s3_region,
        timeout_seconds=options.s3_timeout,
    )
