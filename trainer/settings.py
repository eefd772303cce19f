"""Everything the trainer process can be told, in one place, with its flags. The flags of the model store
(model_store_settings.py) and of the Kubernetes launcher (kubernetes_settings.py) are declared next to what they
build; build_parser and parse_settings here gather every flag into one parser and one TrainerSettings.

Every flag can also be set as ``MODELPLANE_TRAINER_<FLAG>`` (or ``MODELPLANE_<FLAG>``) in the environment or
in the ``[trainer]`` table of a TOML file given with ``--config`` (modelplane/config.py). Secrets are never flags
(a flag shows in the process list, modelplane/secret_inputs.py): the S3 secret key comes from a file
(``--s3-secret-key-file``) or the environment (``MODELPLANE_TRAINER_S3_SECRET_KEY``, ``MODELPLANE_S3_SECRET_KEY``,
or ``AWS_SECRET_ACCESS_KEY`` as a fallback); a ``--redis-url`` holding a password is refused (set
``MODELPLANE_TRAINER_REDIS_URL`` or the config file's ``redis-url`` instead). ``--s3-secret-key`` is refused with
a message saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
from modelplane.flag_types import address, bounded_int, byte_size, seconds
from modelplane.kafka_flags import add_session_timeout_flag
from modelplane.process_flags import add_process_flags
from modelplane.secret_inputs import refuse_secret_flags
from modelplane.spec.training_status import DEFAULT_STATUS_TOPIC
from modelplane.transport import TransportError, TransportSecurity
from modelplane.transport_flags import add_serving_tls_flags, add_tls_flags, security_from, serving_security_from
from trainer.kubernetes_settings import KubernetesLauncherOptions, add_kubernetes_flags, kubernetes_options_from
from trainer.model_store_settings import ModelStoreSettings, add_model_store_flags, model_store_from
from trainer.run.jobs import DEFAULT_ARTIFACT_NAME

# The Redis key a design schema is stored under; ``{token}`` is the event's model_key_token.
DEFAULT_DESIGN_KEY_TEMPLATE = "modelplane:design:{token}"
DEFAULT_REDIS_PREFIX = "modelplane:trainer:"
DEFAULT_TRAINING_TOPIC = "modelplane.training.events"
DEFAULT_INFERENCE_STORE_TOPIC = "modelplane.inference.store"
DEFAULT_GROUP = "modelplane-trainer"
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's own rule for topic names
_ARTIFACT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class TrainerSettings:
    kafka_bootstrap: str
    training_topic: str
    status_topic: str
    inference_store_topic: str
    consumer_group: str
    session_timeout_ms: int
    max_event_bytes: int
    redis_url: str
    design_key_template: str
    redis_prefix: str
    s3: ModelStoreSettings
    artifact_name: str
    work_dir: Path
    datasets_root: Path | None
    # Where runs see the datasets volume (a Kubernetes Job's mount); dataset paths are rewritten to it.
    run_datasets_root: Path | None
    launcher: str
    kubernetes: KubernetesLauncherOptions | None
    max_concurrent_runs: int
    max_attempts: int
    retry_backoff_seconds: float
    run_timeout_seconds: float
    lease_seconds: float
    dedupe_ttl_seconds: float
    shutdown_grace_seconds: float
    auto_deploy: bool
    scheduler: Address
    security: TransportSecurity
    deploy_requirements: tuple[str, ...]
    deploy_storage_secret: str
    status_listen: Address
    serving: TransportSecurity  # the status API's TLS (--serve-tls-*)
    ready_file: Path | None
    keep_job_dirs: bool
    log_level: str
    log_json: bool
    # Identities and roles of the status API's callers (modelplane/auth), and the token this trainer presents to
    # the scheduler when it deploys (a file; else MODELPLANE_AUTH_TOKEN; else none, or its client certificate).
    auth: AuthSettings = field(default_factory=AuthSettings)
    token_file: Path | None = None


def _topic(text: str) -> str:
    if not _TOPIC.match(text) or text in {".", ".."}:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kafka topic name: use 1-249 of A-Z a-z 0-9 . _ -")
    return text


def _key_template(text: str) -> str:
    if text.count("{token}") != 1 or text.replace("{token}", "").count("{") or text.replace("{token}", "").count("}"):
        raise argparse.ArgumentTypeError(f"{text!r} must contain '{{token}}' exactly once and no other braces")
    return text


def _artifact(text: str) -> str:
    if not _ARTIFACT.match(text) or ".." in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file name: letters, digits, '.', '_', '-'")
    return text


def _retry_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: give 0 <= seconds <= 3600")
    return value


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    kafka = parser.add_argument_group("kafka")
    kafka.add_argument("--kafka-bootstrap", default="127.0.0.1:9092", metavar="HOST:PORT[,...]")
    kafka.add_argument("--training-topic", type=_topic, default=DEFAULT_TRAINING_TOPIC, help="events to train")
    kafka.add_argument("--status-topic", type=_topic, default=DEFAULT_STATUS_TOPIC, help="ModelTrainingStatus out")
    kafka.add_argument(
        "--inference-store-topic",
        type=_topic,
        default=DEFAULT_INFERENCE_STORE_TOPIC,
        help="InferenceStoreMessage out, for schemas whose output_store is inference_store",
    )
    kafka.add_argument("--consumer-group", default=DEFAULT_GROUP, help="every trainer replica shares one group")
    add_session_timeout_flag(kafka)
    kafka.add_argument(
        "--max-event-bytes",
        type=byte_size(1024, 64 * 1024 * 1024),
        default="4MiB",
        metavar="SIZE",
        help="larger training events are refused as poison (default 4MiB)",
    )
    redis = parser.add_argument_group("redis")
    redis.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", metavar="URL")
    redis.add_argument(
        "--design-key-template",
        type=_key_template,
        default=DEFAULT_DESIGN_KEY_TEMPLATE,
        metavar="TEMPLATE",
        help="the Redis key of a design schema; {token} is the event's model_key_token "
        f"(default {DEFAULT_DESIGN_KEY_TEMPLATE!r})",
    )
    redis.add_argument(
        "--redis-prefix",
        default=DEFAULT_REDIS_PREFIX,
        metavar="PREFIX",
        help=f"prefix of the trainer's own keys: event claims and run records (default {DEFAULT_REDIS_PREFIX!r})",
    )
    add_model_store_flags(parser)
    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--artifact-name",
        type=_artifact,
        default=DEFAULT_ARTIFACT_NAME,
        help=f"the artifact's file name (default {DEFAULT_ARTIFACT_NAME})",
    )
    runs.add_argument("--work-dir", type=Path, metavar="DIR", help="job folders (default .modelplane/trainer)")
    runs.add_argument(
        "--datasets-root",
        type=Path,
        metavar="DIR",
        help="the mounted dataset volume; events' dataset_path must lie inside it (unset: dataset_path refused)",
    )
    runs.add_argument(
        "--run-datasets-root",
        type=Path,
        metavar="DIR",
        help="where runs see the datasets volume (default: --datasets-root; with --launcher=kubernetes, the "
        "Job's --k8s-dataset-mount)",
    )
    runs.add_argument(
        "--launcher",
        choices=("local", "warm", "kubernetes"),
        default="local",
        help="where runs execute: a local child process (a fresh interpreter per run), a child forked from a warm "
        "fork server that has imported scikit-learn and pandas once (same limits, ~3 s less start-up per run), "
        "or a Kubernetes Job (default local)",
    )
    runs.add_argument("--max-concurrent-runs", type=bounded_int(1, 256), default=2, metavar="N")
    runs.add_argument(
        "--max-attempts",
        type=bounded_int(1, 20),
        default=3,
        metavar="N",
        help="tries of a run whose failure is retryable (killed, deadline, infrastructure) (default 3)",
    )
    runs.add_argument("--retry-backoff", type=_retry_seconds, default=2.0, metavar="SECONDS")
    runs.add_argument("--run-timeout", type=seconds(7 * 86_400), default=3600.0, metavar="SECONDS")
    runs.add_argument(
        "--lease",
        type=seconds(3600),
        default=60.0,
        metavar="SECONDS",
        help="an event's claim expires this long after its trainer stops renewing it (crash) (default 60)",
    )
    runs.add_argument(
        "--dedupe-ttl",
        type=seconds(365 * 86_400),
        default=30 * 86_400.0,
        metavar="SECONDS",
        help="how long a finished event's id is remembered, so a duplicate is not trained (default 30 days)",
    )
    runs.add_argument("--shutdown-grace", type=seconds(86_400), default=30.0, metavar="SECONDS")
    runs.add_argument("--keep-job-dirs", action="store_true", help="keep job folders after a run (debugging)")
    add_kubernetes_flags(parser)
    deploy = parser.add_argument_group("auto-deploy")
    deploy.add_argument(
        "--auto-deploy",
        action="store_true",
        help="LoadModel every trained model on the scheduler (an event can ask with header modelplane-auto-deploy)",
    )
    deploy.add_argument("--scheduler", type=address, default="127.0.0.1:9004", metavar="HOST:PORT")
    deploy.add_argument("--deploy-requirements", default="sklearn", metavar="LIST", help="comma-separated")
    deploy.add_argument(
        "--deploy-storage-secret",
        default="",
        metavar="NAME",
        help="storageSecretName of deployed models: the agents' secret holding the model store's S3 settings",
    )
    parser.add_argument(
        "--status-listen",
        type=address,
        default="127.0.0.1:9600",
        metavar="HOST:PORT",
        help="the run status HTTP API (GET /runs, /runs/ID, /healthz) (default 127.0.0.1:9600; port 0 picks one)",
    )
    add_process_flags(parser, section="trainer", ready_file_help="write the status API address here")
    add_tls_flags(parser, server=False)
    add_serving_tls_flags(parser)
    add_auth_flags(parser)
    add_client_token_flag(parser)
    return parser


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> TrainerSettings:
    environ = os.environ if environ is None else environ
    refuse_secret_flags(
        parser,
        argv,
        removed={
            "--s3-secret-key": "put the key in a file and give --s3-secret-key-file FILE, or set "
            "MODELPLANE_TRAINER_S3_SECRET_KEY in the environment"
        },
        url_flags={
            "--redis-url": "set MODELPLANE_TRAINER_REDIS_URL in the environment, or redis-url in the --config file"
        },
    )
    options = parse_layered(parser, "trainer", argv, environ)
    model_store = model_store_from(parser, options, environ)
    requirements = tuple(item.strip() for item in options.deploy_requirements.split(",") if item.strip())
    work_dir = (options.work_dir or Path(".modelplane") / "trainer").absolute()
    datasets_root = options.datasets_root.resolve() if options.datasets_root else None
    kubernetes = kubernetes_options_from(parser, options)
    run_datasets_root = options.run_datasets_root or (
        Path(kubernetes.dataset_mount_path) if kubernetes is not None else datasets_root
    )
    settings = TrainerSettings(
        kafka_bootstrap=options.kafka_bootstrap,
        training_topic=options.training_topic,
        status_topic=options.status_topic,
        inference_store_topic=options.inference_store_topic,
        consumer_group=options.consumer_group,
        session_timeout_ms=options.session_timeout_ms,
        max_event_bytes=options.max_event_bytes,
        redis_url=options.redis_url,
        design_key_template=options.design_key_template,
        redis_prefix=options.redis_prefix,
        s3=model_store,
        artifact_name=options.artifact_name,
        work_dir=work_dir,
        datasets_root=datasets_root,
        run_datasets_root=run_datasets_root,
        launcher=options.launcher,
        kubernetes=kubernetes,
        max_concurrent_runs=options.max_concurrent_runs,
        max_attempts=options.max_attempts,
        retry_backoff_seconds=options.retry_backoff,
        run_timeout_seconds=options.run_timeout,
        lease_seconds=options.lease,
        dedupe_ttl_seconds=options.dedupe_ttl,
        shutdown_grace_seconds=options.shutdown_grace,
        auto_deploy=options.auto_deploy,
        scheduler=options.scheduler,
        security=security_from(options),
        deploy_requirements=requirements or ("sklearn",),
        deploy_storage_secret=options.deploy_storage_secret,
        status_listen=options.status_listen,
        serving=serving_security_from(options),
        ready_file=options.ready_file,
        keep_job_dirs=options.keep_job_dirs,
        log_level=options.log_level,
        log_json=options.log_json,
        token_file=options.auth_token_file,
    )
    try:
        settings.security.validate()
        if settings.auto_deploy:
            settings.security.check_plaintext_allowed([settings.scheduler])
        settings.serving.validate()
        settings.serving.check_plaintext_allowed([settings.status_listen])
        auth = auth_settings_from(options, [settings.status_listen])
        check_authenticated_exposure([settings.status_listen], settings.serving, auth)
        client_token(settings.token_file)  # a token file that cannot be used stops the trainer at start
    except TransportError as error:
        parser.error(str(error))
    return dataclasses.replace(settings, auth=auth)
