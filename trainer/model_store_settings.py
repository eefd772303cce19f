"""The trainer's model store: the S3 store (``--s3-*``) trained models are written to. Its settings and flags are
modelplane/model_store_settings.py's, shared with the registry; here, the trainer's defaults (an endpoint on
127.0.0.1:9000, keys under ``models/``)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from modelplane.model_store_settings import ModelStoreSettings
from modelplane.model_store_settings import add_model_store_flags as add_s3_flags
from modelplane.model_store_settings import model_store_from as s3_store_from

__all__ = ["ModelStoreSettings", "add_model_store_flags", "model_store_from"]

SECTION = "trainer"


def add_model_store_flags(parser: argparse.ArgumentParser) -> None:
    add_s3_flags(
        parser, section=SECTION, default_endpoint="127.0.0.1:9000", default_prefix="models", what="model store (S3)"
    )


def model_store_from(
    parser: argparse.ArgumentParser, options: argparse.Namespace, environ: Mapping[str, str]
) -> ModelStoreSettings:
    """The model store the parsed ``--s3-*`` flags name (a bad one is a parser error)."""
    store = s3_store_from(parser, options, environ, SECTION)
    if store is None:
        parser.error("--s3-endpoint is empty: the trainer needs its model store")
    return store
