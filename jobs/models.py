"""The database schema (SQLAlchemy 2, typed), portable between PostgreSQL and SQLite.

=================  ============================================================================
table              holds
=================  ============================================================================
tenants            who owns jobs and datasets
api_keys           ``rt_<key_id>_<secret>``: ``id`` is the key id (looked up), the secret is stored
                   only as an argon2 hash; ``revoked_at`` ends it
jobs               the spec (JSON), its ``origin`` (``service`` or ``external``: a library run the
                   client records) and the run's state: status, progress, best objective, the
                   worker's claim (``worker_id``, ``attempts``), ``heartbeat_at`` and ``deaths``
                   (how many of its workers died running it)
steps              one row per finished meta-iteration, the REST ``step`` fields
hyper_snapshots    the hyperparameters after ``meta_iter`` finished meta-iterations, in natural
                   units, one row per name: float64 little-endian bytes plus shape/axes/labels
checkpoints        the latest checkpoint of a job (one row per job): what a resumed run starts from
datasets           an upload's metadata; the arrays live in ``<data_dir>/datasets/<id>.npz``
=================  ============================================================================

Timestamps are timezone-aware UTC on both databases (`UTCDateTime`). The worker protocol's times
(heartbeats, claims, re-queues, finishes) come from the database server's clock (`db_now`), so
processes whose clocks disagree still agree on which heartbeat is stale. Rows of a job cascade when
it is deleted.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import FunctionElement, literal

from jobs.states import Origin, Status


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as naive UTC
    (whose text form sorts chronologically, which the job cursor relies on) and read back as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: revtune stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class db_now(FunctionElement):  # noqa: N801  (a SQL function, named like SQLAlchemy's func.now)
    """The database server's clock plus ``offset_s`` seconds, as a `UTCDateTime` SQL expression:
    ``db_now()`` stamps a row, ``Job.heartbeat_at < db_now(-60)`` finds a heartbeat silent for a
    minute, both by one clock however wrong the callers' clocks are.

    PostgreSQL: ``CURRENT_TIMESTAMP`` (the transaction's start, one value for all its statements)
    plus an interval. SQLite: ``'now'`` (UTC, milliseconds) rendered as the text `UTCDateTime` stores,
    ``YYYY-MM-DD HH:MM:SS.ffffff`` (``strftime``'s ``%f`` gives ``SS.SSS``; ``'000'`` completes the
    microseconds): SQLite compares the stored text, and ``CURRENT_TIMESTAMP``'s ``YYYY-MM-DD
    HH:MM:SS`` would sort before every stored time of the same second.
    """

    type = UTCDateTime()
    name = "db_now"
    inherit_cache = True

    def __init__(self, offset_s: float = 0.0):
        super().__init__(literal(float(offset_s), Float()))


@compiles(db_now)
def _db_now(element: db_now, compiler, **kw) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(CURRENT_TIMESTAMP + {offset} * INTERVAL '1 second')"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler, **kw) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.3f seconds', {offset})) || '000')"


def new_id() -> str:
    return uuid.uuid4().hex


# Named constraints, so that migrations (and SQLite's batch mode) can address them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), bytes: LargeBinary()}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED.value)
    # "service": a worker runs it; "external": a library run whose client records it (never enqueued
    # or claimed; its heartbeat is the recorder's).
    origin: Mapped[str] = mapped_column(String(16), default=Origin.SERVICE.value, server_default="service")
    spec: Mapped[dict[str, Any]]
    meta_iter: Mapped[int] = mapped_column(default=0)
    meta_iterations: Mapped[int]
    best_objective: Mapped[float | None] = mapped_column(Float, default=None)
    best_meta_iter: Mapped[int | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker_id: Mapped[str | None] = mapped_column(String(255), default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    # Claims of this job whose worker died (heartbeat gone stale; not a graceful hand-back): at
    # ``REVTUNE_MAX_ATTEMPTS`` the job fails instead of going back to the queue.
    deaths: Mapped[int] = mapped_column(default=0, server_default="0")
    # What the run found worth telling the user, each ``{"code", "message", "meta_iter"}`` (None: none).
    warnings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A queued job the reaper re-published: when to publish it again if still unclaimed (the wait
    # doubles each time). None: ``enqueued_at`` plus the queued timeout.
    requeue_after: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Step(Base):
    __tablename__ = "steps"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    meta_iter: Mapped[int] = mapped_column(Integer, primary_key=True)
    objective: Mapped[float | None] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    valid_error: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_error: Mapped[float | None] = mapped_column(Float)
    hypergrad_norm: Mapped[float | None] = mapped_column(Float)
    elapsed_s: Mapped[float | None] = mapped_column(Float)
    reversal_exact: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HyperSnapshot(Base):
    __tablename__ = "hyper_snapshots"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    meta_iter: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    shape: Mapped[list[int]] = mapped_column(JSON)
    axes: Mapped[list[str]] = mapped_column(JSON)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    learned: Mapped[bool]
    data: Mapped[bytes]


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    meta_iter: Mapped[int]
    data: Mapped[bytes]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    layout: Mapped[str] = mapped_column(String(8))
    n_rows: Mapped[int]
    n_train: Mapped[int]
    n_valid: Mapped[int]
    n_test: Mapped[int]
    n_features: Mapped[int]
    n_classes: Mapped[int]
    # A multi-task upload: its number of tasks, and (split by the spec's counts) its smallest task's rows.
    n_tasks: Mapped[int] = mapped_column(default=1, server_default="1")
    task_rows: Mapped[int | None]
    # One example's shape: (d,) features, (H, W[, C]) images, (L, C) sequences; None (uploads before
    # 0005): (n_features,).
    example_shape: Mapped[list[int] | None] = mapped_column(JSON, default=None)
    # "class" (integer labels, softmax) or "real" (float targets, squared error).
    target: Mapped[str] = mapped_column(String(8), default="class", server_default="class")
    # The model's output width: n_classes, or a real target's outputs (y's columns); None (uploads
    # before 0005): n_classes.
    n_outputs: Mapped[int | None] = mapped_column(default=None)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelPluginAd(Base):
    """A model plugin one worker process offers (`hypercore.plugins`): written at its start-up, its
    ``seen_at`` refreshed by its reaper's passes, removed when it stops. The API, which cannot import
    plugins, lists and validates against these rows; one whose worker went silent no longer counts."""

    __tablename__ = "model_plugins"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text)
    config_schema: Mapped[dict[str, Any]]
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
