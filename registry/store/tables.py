"""The registry's tables, as SQLAlchemy 2 typed ORM classes: experiments, their splits, their models, datasets,
registered versions, aliases and promotions.

Every row carries ``row_version``, SQLAlchemy's ``version_id_col``: each UPDATE or DELETE says ``WHERE
row_version = <the version read>`` and bumps it, so a writer that decided from a row another writer has changed
since fails (StaleDataError) instead of overwriting; the store then runs its unit of work again on fresh rows
(registry/store/database.py). That is the registry's concurrency control, the same on SQLite and PostgreSQL.

JSON columns hold what the seed's documents hold as lists and objects (directives, parameters, stats, metrics);
times are whole seconds since the epoch, as the seed's ``createtime`` / ``traintime`` / ``deploytime`` are.

The schema here is the one the newest migration (registry/store/migrations/versions/) makes; a test compares them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAME_CHARS = 128
ID_CHARS = 32
PATH_CHARS = 2048
STATE_CHARS = 32
REASON_CHARS = 2000
SHA256_CHARS = 64
FORMAT_CHARS = 16
ALIAS_CHARS = 32


class Base(DeclarativeBase):
    pass


class ExperimentRow(Base):
    __tablename__ = "experiments"

    name: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    srcpath: Mapped[str | None] = mapped_column(String(PATH_CHARS), index=True)
    outcome: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    outcome_type: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    directives: Mapped[list[str]] = mapped_column(JSON, default=list)
    create_time: Mapped[int] = mapped_column(BigInteger)
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form


class DatasetRow(Base):
    """A dataset the registry has read (seed 001): one row per srcpath and content (sha256), so a file changed under
    the same srcpath is a new version, and the splits made of the old one still name the bytes they were made of."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("srcpath", "sha256", name="uq_datasets_srcpath_sha256"),)

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    srcpath: Mapped[str] = mapped_column(String(PATH_CHARS), index=True)
    sha256: Mapped[str] = mapped_column(String(SHA256_CHARS))
    format: Mapped[str] = mapped_column(String(FORMAT_CHARS))
    sample_count: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    columns: Mapped[list[str]] = mapped_column(JSON, default=list)
    label_counts: Mapped[dict[str, int] | None] = mapped_column(JSON)
    create_time: Mapped[int] = mapped_column(BigInteger)  # when this version was first read
    description: Mapped[str] = mapped_column(Text, default="")
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form


class SplitRow(Base):
    __tablename__ = "splits"

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    experiment_name: Mapped[str] = mapped_column(
        String(NAME_CHARS), ForeignKey("experiments.name", ondelete="CASCADE"), index=True
    )
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column("type", String(STATE_CHARS))  # "random" or "first"
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    directives: Mapped[list[str]] = mapped_column(JSON, default=list)
    schema: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    training_path: Mapped[str | None] = mapped_column(String(PATH_CHARS))
    test_path: Mapped[str | None] = mapped_column(String(PATH_CHARS))
    stats: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(STATE_CHARS))
    reason: Mapped[str | None] = mapped_column(String(REASON_CHARS))  # why it failed
    # The dataset version it was made of (lineage): the id of its DatasetRow, and its sha256 kept here too.
    dataset_id: Mapped[str | None] = mapped_column(String(ID_CHARS), ForeignKey("datasets.id"), index=True)
    dataset_sha256: Mapped[str | None] = mapped_column(String(SHA256_CHARS))
    create_time: Mapped[int] = mapped_column(BigInteger)
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    experiment_name: Mapped[str] = mapped_column(
        String(NAME_CHARS), ForeignKey("experiments.name", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    split_id: Mapped[str | None] = mapped_column(String(ID_CHARS), ForeignKey("splits.id"), index=True)
    directives: Mapped[list[str]] = mapped_column(JSON, default=list)
    algorithm: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    evaluation_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    features: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(STATE_CHARS))
    reason: Mapped[str | None] = mapped_column(String(REASON_CHARS))  # why its split or training failed
    training_run: Mapped[str | None] = mapped_column(String(NAME_CHARS))  # the launcher's id of its training run
    create_time: Mapped[int] = mapped_column(BigInteger)
    train_time: Mapped[int | None] = mapped_column(BigInteger)
    deploy_time: Mapped[int | None] = mapped_column(BigInteger)
    # When its training started: a run still TRAINING long after is failed (the registry running it stopped).
    train_start_time: Mapped[int | None] = mapped_column(BigInteger)
    serving_name: Mapped[str | None] = mapped_column(String(NAME_CHARS))  # the name it is deployed under
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form


class ModelVersionRow(Base):
    """A registered model version (seed 001): what one training run of a model made, never changed afterwards.
    ``artifact_*`` is its manifest, ``model_metadata`` what it is (task, classes, framework), ``lineage`` what it
    was made of (dataset and its sha256, split, directives, training run, modelplane version)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("models.id", ondelete="CASCADE"), index=True)
    experiment_name: Mapped[str] = mapped_column(
        String(NAME_CHARS), ForeignKey("experiments.name", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per model
    artifact_url: Mapped[str] = mapped_column(String(PATH_CHARS))
    artifact_sha256: Mapped[str] = mapped_column(String(SHA256_CHARS))
    artifact_name: Mapped[str] = mapped_column(String(NAME_CHARS))
    artifact_size_bytes: Mapped[int] = mapped_column(BigInteger)
    evaluation_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    fitted_parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    create_time: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text, default="")
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form


class AliasRow(Base):
    """An experiment's alias (``production``, ``candidate``, or a label) on one registered version
    (registry/promotion_rules.py says why aliases are per experiment). ``serving_name`` is the name the alias
    deployed the version under (None for a label)."""

    __tablename__ = "aliases"

    experiment_name: Mapped[str] = mapped_column(
        String(NAME_CHARS), ForeignKey("experiments.name", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(ALIAS_CHARS), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    serving_name: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    update_time: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text, default="")
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form


class AliasMoveRow(Base):
    """A move of a serving alias (production, candidate) in flight: claimed before the scheduler is asked to deploy,
    removed once the alias is recorded or the deploy failed. A second move of the same alias to another version
    meanwhile is refused (409) instead of racing the first to the scheduler; a claim older than the deploy timeout
    (its registry stopped) is taken over."""

    __tablename__ = "alias_moves"

    experiment_name: Mapped[str] = mapped_column(
        String(NAME_CHARS), ForeignKey("experiments.name", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(ALIAS_CHARS), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(ID_CHARS))
    version: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text, default="")
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form


class PromotionRow(Base):
    """One promotion of a candidate version to production through a canary (registry/promotion_rules.py's
    table). Its models are named, not foreign keys: a model deleted mid-canary leaves the row, so the canary can
    still be aborted (the scheduler still runs it)."""

    __tablename__ = "promotions"

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    experiment_name: Mapped[str] = mapped_column(
        String(NAME_CHARS), ForeignKey("experiments.name", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(STATE_CHARS))
    stable_name: Mapped[str] = mapped_column(String(NAME_CHARS))  # the name clients call (and the experiment's)
    production_model_id: Mapped[str] = mapped_column(String(ID_CHARS))
    production_version: Mapped[int] = mapped_column(Integer)
    candidate_model_id: Mapped[str] = mapped_column(String(ID_CHARS))
    candidate_version: Mapped[int] = mapped_column(Integer)
    candidate_serving_name: Mapped[str] = mapped_column(String(NAME_CHARS))
    percent: Mapped[int] = mapped_column(Integer)  # of the stable name's traffic to the candidate
    reason: Mapped[str | None] = mapped_column(String(REASON_CHARS))  # why the last step asked of it failed
    create_time: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text, default="")
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form


class ServingRow(Base):
    """What the scheduler last said of a name the registry deployed (registry/service/serving.py): its state
    (registry/ports.py's ServingState), the scheduler's reason, and when the registry recorded it. Keyed by the
    scheduler's model name: a model's own name and an experiment's stable name are each one row."""

    __tablename__ = "serving"

    name: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    state: Mapped[str] = mapped_column(String(STATE_CHARS))
    reason: Mapped[str] = mapped_column(String(REASON_CHARS), default="")
    seen: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text, default="")
    row_version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's declarative form
