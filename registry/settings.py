"""Everything the registry process can be told, in one place, with its flags (also MODELPLANE_REGISTRY_<FLAG>,
MODELPLANE_<FLAG>, or a TOML file's [registry] table: modelplane/config.py).

S3 (``--s3-*``, the trainer's flags: modelplane/model_store_settings.py) is optional: with ``--s3-endpoint``,
``s3://`` srcpaths are read from that store and the models the registry trains are uploaded to ``--s3-bucket``
(LoadModel's uri then an ``s3://`` URL an agent on any host can fetch); without it, both stay local. The secret key
is never a flag: ``--s3-secret-key-file`` or MODELPLANE_REGISTRY_S3_SECRET_KEY / MODELPLANE_S3_SECRET_KEY /
AWS_SECRET_ACCESS_KEY. ``--kafka-bootstrap`` makes the registry register the runs the trainer reports on its status
topic (registry/trainer_runs/).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelplane.addresses import Address
from modelplane.auth.access_check import AuthSettings
from modelplane.auth_flags import (
    add_auth_flags,
    add_client_token_flag,
    auth_settings_from,
    check_authenticated_exposure,
    client_token,
)
from modelplane.config import parse_layered
from modelplane.flag_types import address, byte_size, seconds
from modelplane.kafka_flags import add_session_timeout_flag
from modelplane.model_store_settings import (
    ModelStoreSettings,
    add_model_store_flags,
    model_store_from,
    refuse_s3_secret_flag,
)
from modelplane.process_flags import add_process_flags
from modelplane.spec.training_status import DEFAULT_STATUS_TOPIC
from modelplane.transport import TransportError, TransportSecurity
from modelplane.transport_flags import add_serving_tls_flags, add_tls_flags, security_from, serving_security_from

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEFAULT_LISTEN = "127.0.0.1:9010"
SECTION = "registry"
DEFAULT_CONSUMER_GROUP = "modelplane-registry"
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's own rule for topic names
_SECRET_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")  # a Kubernetes Secret's name, roughly


@dataclass(frozen=True, slots=True)
class TrainerRunsSettings:
    """Where the trainer reports its runs (Kafka), for registering every model it makes."""

    bootstrap: str
    status_topic: str
    consumer_group: str
    session_timeout_ms: int
    max_message_bytes: int  # a larger status message is skipped (with a warning)


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    listen: Address
    serving: TransportSecurity
    state_dir: Path
    datasets_root: Path
    database: URL  # with any password: log it only through registry.store.database.shown
    split_timeout_seconds: float
    training_timeout_seconds: float
    scheduler: Address | None  # where trained models are deployed; None: deploying answers 503
    scheduler_security: TransportSecurity
    deploy_timeout_seconds: float
    deploy_requirements: tuple[str, ...]
    ready_file: Path | None
    log_level: str
    log_json: bool
    # Who may call what (modelplane/auth): tokens, client certificates and roles, as every serving process has them.
    auth: AuthSettings = field(default_factory=AuthSettings)
    # The token deploys present to the scheduler (a file, read again when it changes; else MODELPLANE_AUTH_TOKEN).
    token_file: Path | None = None
    # S3: s3:// srcpaths are read from it, trained models uploaded to its bucket; None: neither (local folders).
    model_store: ModelStoreSettings | None = None
    # storageSecretName of deployed models: the agents' secret holding the model store's S3 settings ("": none).
    deploy_storage_secret: str = ""
    trainer_runs: TrainerRunsSettings | None = None  # None: the trainer's status topic is not read

    @property
    def splits_dir(self) -> Path:
        return self.state_dir / "splits"


def _topic(text: str) -> str:
    if not _TOPIC.match(text) or text in {".", ".."}:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kafka topic name: use 1-249 of A-Z a-z 0-9 . _ -")
    return text


def _secret_name(text: str) -> str:
    if text and not _SECRET_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a secret name: 1-253 of A-Z a-z 0-9 . _ -")
    return text


def _add_trainer_runs_flags(parser: argparse.ArgumentParser) -> None:
    kafka = parser.add_argument_group("the trainer's runs (Kafka)")
    kafka.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT[,...]",
        help="register every run the trainer reports on --status-topic (needs --s3-endpoint: its model store); "
        "unset: not read",
    )
    kafka.add_argument(
        "--status-topic",
        type=_topic,
        default=DEFAULT_STATUS_TOPIC,
        help=f"the trainer's ModelTrainingStatus topic (default {DEFAULT_STATUS_TOPIC})",
    )
    kafka.add_argument(
        "--consumer-group",
        default=DEFAULT_CONSUMER_GROUP,
        help=f"every registry replica shares one group (default {DEFAULT_CONSUMER_GROUP})",
    )
    add_session_timeout_flag(kafka)
    kafka.add_argument(
        "--max-status-bytes",
        type=byte_size(1024, 16 * 1024 * 1024),
        default="1MiB",
        metavar="SIZE",
        help="a larger status message is skipped with a warning (default 1MiB)",
    )


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--listen",
        type=address,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"the REST API (default {DEFAULT_LISTEN}; port 0 picks one)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=False,
        default=Path(".modelplane/registry"),
        metavar="DIR",
        help="the SQLite database (unless --database) and computed splits (default .modelplane/registry)",
    )
    parser.add_argument(
        "--datasets-root",
        type=Path,
        metavar="DIR",
        help="where srcpaths that are paths are read from; nothing outside it is (default STATE_DIR/datasets)",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="sqlite:///FILE or postgresql://USER@HOST:PORT/DB (default: STATE_DIR/registry.db). Give a password "
        "through MODELPLANE_REGISTRY_DATABASE, PGPASSWORD or a PGPASSFILE, never on the command line",
    )
    parser.add_argument(
        "--split-timeout",
        type=seconds(86_400),
        default=600.0,
        metavar="SECONDS",
        help="a split not computed within this fails (also one whose registry stopped; default 600)",
    )
    parser.add_argument(
        "--training-timeout",
        type=seconds(7 * 86_400),
        default=3600.0,
        metavar="SECONDS",
        help="a training run not finished within this fails (also one whose registry stopped; default 3600)",
    )
    parser.add_argument(
        "--scheduler",
        type=address,
        metavar="HOST:PORT",
        help="the scheduler deploys go to (LoadModel); without it, deploying answers 503",
    )
    parser.add_argument(
        "--deploy-timeout",
        type=seconds(3600),
        default=300.0,
        metavar="SECONDS",
        help="how long a deploy waits for the model to be available (default 300)",
    )
    parser.add_argument(
        "--deploy-requirements",
        default="sklearn",
        metavar="LIST",
        help="comma-separated requirements of deployed models (the servers that can load them; default sklearn)",
    )
    parser.add_argument(
        "--deploy-storage-secret",
        type=_secret_name,
        default="",
        metavar="NAME",
        help="storageSecretName of deployed models: the agents' secret holding the model store's S3 settings "
        "(default none: agents use their own AWS_* environment)",
    )
    add_model_store_flags(
        parser,
        section=SECTION,
        default_endpoint=None,
        default_prefix="registry",
        what="S3 (s3:// datasets; the model store trained models are uploaded to)",
    )
    _add_trainer_runs_flags(parser)
    # As the trainer's: --tls-* (and --auth-token-file) are about the scheduler it calls, --serve-tls-* about the
    # REST API it serves; --insecure allows plaintext off loopback for both.
    add_tls_flags(parser, server=False)
    add_serving_tls_flags(parser)
    add_auth_flags(parser)
    add_client_token_flag(parser)
    add_process_flags(parser, section="registry", ready_file_help="write the listen address here once serving")
    return parser


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> RegistrySettings:
    environ = os.environ if environ is None else environ
    refuse_s3_secret_flag(parser, argv, SECTION)
    options = parse_layered(parser, SECTION, argv, environ)
    # Absolute, as the trainer's work folder: the paths made from them are stored (splits) and handed to training
    # runs, which work in folders of their own.
    state_dir: Path = options.state_dir.absolute()
    model_store = model_store_from(parser, options, environ, SECTION)
    trainer_runs = None
    if options.kafka_bootstrap:
        if model_store is None:
            parser.error("--kafka-bootstrap needs --s3-endpoint: a run is registered from what it stored there")
        trainer_runs = TrainerRunsSettings(
            bootstrap=options.kafka_bootstrap,
            status_topic=options.status_topic,
            consumer_group=options.consumer_group,
            session_timeout_ms=options.session_timeout_ms,
            max_message_bytes=options.max_status_bytes,
        )
    # Imported here, not at the top: every modelplane command builds this parser, and SQLAlchemy would add its
    # memory and import time to the scheduler, the agent and the gateway.
    from registry.store.database import DatabaseUrlError, database_url  # noqa: PLC0415

    try:
        database = database_url(options.database, state_dir)
    except DatabaseUrlError as error:
        parser.error(str(error))
    settings = RegistrySettings(
        listen=options.listen,
        serving=serving_security_from(options),
        state_dir=state_dir,
        datasets_root=options.datasets_root.absolute() if options.datasets_root else state_dir / "datasets",
        database=database,
        split_timeout_seconds=options.split_timeout,
        training_timeout_seconds=options.training_timeout,
        scheduler=options.scheduler,
        scheduler_security=security_from(options),
        token_file=options.auth_token_file,
        deploy_timeout_seconds=options.deploy_timeout,
        deploy_requirements=tuple(item.strip() for item in options.deploy_requirements.split(",") if item.strip()),
        ready_file=options.ready_file,
        log_level=options.log_level,
        log_json=options.log_json,
        model_store=model_store,
        deploy_storage_secret=options.deploy_storage_secret.strip(),
        trainer_runs=trainer_runs,
    )
    try:
        settings.serving.validate()
        settings.serving.check_plaintext_allowed([settings.listen])
        auth = auth_settings_from(options, [settings.listen])
        check_authenticated_exposure([settings.listen], settings.serving, auth)
        if settings.scheduler is not None:
            settings.scheduler_security.validate()
            settings.scheduler_security.check_plaintext_allowed([settings.scheduler])
        client_token(settings.token_file)  # a token file that cannot be used stops the registry at start
    except TransportError as error:
        parser.error(str(error))
    return dataclasses.replace(settings, auth=auth)
