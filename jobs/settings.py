"""Service configuration: one pydantic-settings class read from ``REVTUNE_*`` environment variables.

=============================  ==============================================================
variable                       meaning (default)
=============================  ==============================================================
``REVTUNE_DATA_DIR``           uploads, and the embedded databases (``./.revtune``)
``REVTUNE_DATABASE_URL``       SQLAlchemy URL (``sqlite:///<data_dir>/revtune.db``)
``REVTUNE_BROKER_URL``         Celery broker (``sqla+sqlite:///<data_dir>/broker.db``)
``REVTUNE_AUTH``               ``on`` (API keys required) or ``off`` (one local tenant) (``on``)
``REVTUNE_ENV``                ``development`` or ``production`` (``development``)
``REVTUNE_MAX_*``              the job-spec limits (`jobs.spec.SpecLimits`); ``_JOB_MEMORY_BYTES``:
                               the most memory one job may need in a worker, as estimated at
                               submit (`hypercore.budget`, the worker's own 1 GiB runtime
                               included), past which a spec is refused with 422 (4 GiB); keep
                               it below the workers' memory limit
``REVTUNE_MAX_UPLOAD_BYTES``   largest dataset upload (100 MiB); the bytes its arrays may declare
                               in their ``.npy`` headers, all together, are at most
                               ``REVTUNE_MAX_UPLOAD_ARRAY_BYTES`` (512 MiB)
``REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB``
                               the hyperparameter snapshots one job may store (128 MiB): fixed
                               ones are stored once; learned ones after every meta-iteration while
                               they fit, else every k-th (k the smallest that fits) and the last
                               (docs/API.md, "Hyperparameters")
``REVTUNE_MAX_JOBS_PER_TENANT``
                               jobs one tenant may keep, whatever their status (500); one more is
                               refused with 409 until a finished one is deleted
``REVTUNE_MAX_DATASET_BYTES_PER_TENANT``
                               bytes of uploaded datasets one tenant may keep (1 GiB); an upload
                               past it is refused with 409 until a dataset is deleted
``REVTUNE_UPLOAD_*``           ``_VALIDATIONS``: uploads one API process validates at once (4); one
                               more waits up to ``_VALIDATION_WAIT_S`` (5 s), then gets 503
``REVTUNE_HEARTBEAT_*_S``      worker heartbeat period and the silence after which a running job
                               is re-queued (10 s, 60 s), both measured by the database's clock
``REVTUNE_MAX_ATTEMPTS``       how many times a job's worker may die (killed, e.g. out of memory)
                               before the job fails instead of being re-queued again (3); a
                               worker's graceful hand-back and a database outage do not count
``REVTUNE_QUEUED_TIMEOUT_S``   a queued job unclaimed this long is enqueued again (120 s), then
                               after twice as long each time, up to
                               ``REVTUNE_QUEUED_MAX_BACKOFF_S`` (1800 s)
``REVTUNE_REAPER_INTERVAL_S``  how often each worker's reaper looks (15 s)
``REVTUNE_MODEL_PLUGINS``      the installed model plugins a worker loads and offers, comma-separated
                               (empty: none; `hypercore.plugins`)
``REVTUNE_*_TIMEOUT_S``        deadlines, so a broker or database that stops answering fails a
                               call instead of holding the API's threads: ``BROKER_SOCKET`` each
                               Redis socket read and connect (2 s); ``PUBLISH`` a whole enqueue,
                               retries included (3 s; past it the job stays ``queued`` for the
                               reaper); ``READINESS`` ``/readyz``'s checks (2 s; past it, 503);
                               ``DATABASE`` one statement (PostgreSQL ``statement_timeout``,
                               SQLite's busy timeout; 15 s); ``DATABASE_CONNECT`` (5 s)
``REVTUNE_READINESS_CACHE_S``  how long ``/readyz`` reuses its answer (2 s)
``REVTUNE_POST_RATE_LIMIT``    POST requests per tenant per minute (120)
``REVTUNE_CORS_ORIGINS``       JSON list of allowed browser origins (none: CORS off)
``REVTUNE_COMPILATION_CACHE``  the workers' on-disk cache of compiled jobs (``<data_dir>/jax-cache``;
                               ``off`` to disable, or a directory): a restarted worker, or a
                               second one on the host, skips most of a job's compilation; its
                               size is ``REVTUNE_COMPILATION_CACHE_MAX_BYTES`` (1 GiB, least
                               recently used entries evicted)
=============================  ==============================================================

``env=production`` refuses to start with auth off or with a database or broker password that is a
well-known default (``revtune``, ``postgres``, ``password``, RabbitMQ's ``guest``, ...), in any
case, URL-encoded or not, given in the URL's user part or as a ``?password=`` query parameter
(libpq and redis-py both read one): what ships in an example file is public.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from jobs.spec import SpecLimits

DEFAULT_DATA_DIR = ".revtune"
# Passwords that appear in examples (ours: docker-compose.yml's fallback) and in every tutorial.
DEFAULT_PASSWORDS = frozenset(
    {"", "revtune", "postgres", "password", "changeme", "secret", "admin", "redis", "guest", "root", "test"}
)

_LIMIT_DEFAULTS = SpecLimits()


class Settings(BaseSettings):
    """Every knob of the API and the workers. Build it once with `get_settings`."""

    model_config = SettingsConfigDict(env_prefix="REVTUNE_", extra="ignore", frozen=True)

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database_url: str = ""
    broker_url: str = ""
    auth: Literal["on", "off"] = "on"
    env: Literal["development", "production"] = "development"

    max_steps: int = Field(_LIMIT_DEFAULTS.max_steps, ge=1)
    max_meta_iterations: int = Field(_LIMIT_DEFAULTS.max_meta_iterations, ge=1)
    max_layers: int = Field(_LIMIT_DEFAULTS.max_layers, ge=1)
    max_hidden_width: int = Field(_LIMIT_DEFAULTS.max_hidden_width, ge=1)
    max_channels: int = Field(_LIMIT_DEFAULTS.max_channels, ge=1)
    max_kernel: int = Field(_LIMIT_DEFAULTS.max_kernel, ge=1)
    max_weights: int = Field(_LIMIT_DEFAULTS.max_weights, ge=1)
    max_hyperparameters: int = Field(_LIMIT_DEFAULTS.max_hyperparameters, ge=1)
    max_dataset_rows: int = Field(_LIMIT_DEFAULTS.max_dataset_rows, ge=1)
    max_features: int = Field(_LIMIT_DEFAULTS.max_features, ge=1)
    max_classes: int = Field(_LIMIT_DEFAULTS.max_classes, ge=2)
    max_job_memory_bytes: int = Field(
        _LIMIT_DEFAULTS.max_job_memory_bytes,
        ge=1,
        description="the most memory one job may need in a worker, as hypercore.budget estimates it at "
        "submit (the worker's own 1 GiB runtime included): a spec past it is refused (422); keep it below "
        "the workers' memory limit, or a job is killed and re-queued onto worker after worker",
    )
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1)
    max_upload_array_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1,
        description="bytes an upload's arrays may take in all, as their .npy headers declare them (rows x "
        "features x item size), checked before any value is read: bounds what a worker loads",
    )
    max_snapshot_bytes_per_job: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="bytes of hyperparameter snapshots one job may store: fixed hyperparameters once, "
        "learned ones after every meta-iteration while they fit, else every k-th and the last",
    )
    max_jobs_per_tenant: int = Field(
        500, ge=1, description="jobs one tenant may keep (any status); one more is refused with 409"
    )
    max_dataset_bytes_per_tenant: int = Field(
        1024 * 1024 * 1024,
        ge=1,
        description="bytes of uploaded datasets one tenant may keep; an upload past it is refused with 409",
    )
    upload_validations: int = Field(
        4, ge=1, description="uploads one API process validates at once (each takes a few MiB, streamed)"
    )
    upload_validation_wait_s: float = Field(
        5.0,
        ge=0,
        description="how long an upload waits for a free validation slot before the API answers 503 "
        "with Retry-After",
    )

    heartbeat_interval_s: float = Field(10.0, gt=0)
    heartbeat_timeout_s: float = Field(60.0, gt=0)
    queued_timeout_s: float = Field(120.0, gt=0)
    queued_max_backoff_s: float = Field(1800.0, gt=0)
    reaper_interval_s: float = Field(15.0, gt=0)
    model_plugins: str = Field(
        "",
        description="REVTUNE_MODEL_PLUGINS: the installed model plugins (entry points `revtune.models`) "
        "a worker loads and offers, comma-separated; empty (the default) enables none, so installing a "
        "package alone enables nothing",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="how many times a job's worker may die running it (heartbeat gone stale: killed by "
        "the out-of-memory killer, kill -9, a lost machine) before the job fails with an error saying so, "
        "instead of going back to the queue to kill worker after worker; a graceful hand-back (a worker "
        "shutting down) and a database outage do not count",
    )

    # Deadlines on the request path: a broker or database that stops answering (frozen, half-open
    # connection) fails a call within these instead of holding the API's threads.
    broker_socket_timeout_s: float = Field(
        2.0,
        ge=1.5,
        description="read and connect timeout of each Redis broker socket operation (above the 1 s BRPOP)",
    )
    publish_timeout_s: float = Field(
        3.0, gt=0, description="the longest a publish may take, retries included; then the reaper enqueues"
    )
    readiness_timeout_s: float = Field(
        2.0, gt=0, description="/readyz answers 503 when its checks take longer than this"
    )
    readiness_cache_s: float = Field(
        2.0, ge=0, description="how long /readyz reuses its last answer (0: each probe checks, one at a time)"
    )
    database_timeout_s: float = Field(
        15.0, gt=0, description="PostgreSQL statement_timeout and SQLite busy timeout, per statement"
    )
    database_connect_timeout_s: float = Field(
        5.0, gt=0, description="PostgreSQL connect timeout (libpq rounds it up to whole seconds, at least 2)"
    )

    post_rate_limit: int = Field(120, ge=1, description="POST requests per tenant per minute")
    auth_cache_s: float = Field(
        60.0, ge=0, description="how long a verified API key is trusted in-process after its last use"
    )
    auth_failure_limit: int = Field(
        100,
        ge=1,
        description="failed API-key verifications per client address per minute before 429; past it, "
        "cached keys are still accepted, and a key whose key id exists is verified unless that key id "
        "failed from the address within the minute (api.deps._verify_key)",
    )
    cors_origins: list[str] = Field(default_factory=list)
    metrics_token: SecretStr | None = Field(
        None, description="if set, /metrics requires `Authorization: Bearer <token>` (Prometheus scrape)"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="with auth off, Host names answered besides localhost, 127.0.0.1 and ::1 (DNS rebinding)",
    )

    compilation_cache: str = Field(
        "",
        description="the workers' compiled-program cache: '' for <data_dir>/jax-cache, 'off', or a directory",
    )
    compilation_cache_max_bytes: int = Field(1 << 30, ge=1)

    @model_validator(mode="after")
    def _complete_and_check(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        # frozen: the derived defaults go in through object.__setattr__, once, here.
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'revtune.db'}")
        if not self.broker_url:
            object.__setattr__(self, "broker_url", f"sqla+sqlite:///{data_dir / 'broker.db'}")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"REVTUNE_HEARTBEAT_TIMEOUT_S ({self.heartbeat_timeout_s}) must exceed "
                f"REVTUNE_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s}), or live jobs get re-queued"
            )
        if self.queued_max_backoff_s < self.queued_timeout_s:
            raise ValueError(
                f"REVTUNE_QUEUED_MAX_BACKOFF_S ({self.queued_max_backoff_s}) must be at least "
                f"REVTUNE_QUEUED_TIMEOUT_S ({self.queued_timeout_s})"
            )
        if self.env == "production":
            self._refuse_unsafe_production()
        return self

    @property
    def compilation_cache_dir(self) -> Path | None:
        """Where the workers keep compiled programs, or None when the cache is off. The cache is
        trusted code: keep it where only the service's user can write (the data directory is)."""
        if self.compilation_cache.strip().lower() == "off":
            return None
        if not self.compilation_cache.strip():
            return self.data_dir / "jax-cache"
        return Path(self.compilation_cache).expanduser().resolve()

    def _refuse_unsafe_production(self) -> None:
        if self.auth == "off":
            raise ValueError(
                "REVTUNE_AUTH=off is refused with REVTUNE_ENV=production: anyone could submit jobs"
            )
        for name in ("database_url", "broker_url"):
            passwords = _passwords(getattr(self, name))
            if any(p.strip().lower() in DEFAULT_PASSWORDS for p in passwords):
                raise ValueError(
                    f"REVTUNE_{name.upper()} uses a well-known default password; "
                    "set a secret one (e.g. POSTGRES_PASSWORD) with REVTUNE_ENV=production"
                )

    @property
    def plugin_live_s(self) -> float:
        """How long a worker's plugin advertisements count after its last reaper pass refreshed them."""
        return max(self.heartbeat_timeout_s, 3 * self.reaper_interval_s)

    @property
    def limits(self) -> SpecLimits:
        """The job-spec limits as `jobs.spec.validate_spec` takes them."""
        return SpecLimits(
            max_steps=self.max_steps,
            max_meta_iterations=self.max_meta_iterations,
            max_layers=self.max_layers,
            max_hidden_width=self.max_hidden_width,
            max_channels=self.max_channels,
            max_kernel=self.max_kernel,
            max_weights=self.max_weights,
            max_hyperparameters=self.max_hyperparameters,
            max_dataset_rows=self.max_dataset_rows,
            max_features=self.max_features,
            max_classes=self.max_classes,
            max_job_memory_bytes=self.max_job_memory_bytes,
        )

    @property
    def datasets_dir(self) -> Path:
        """Uploads live here as ``<dataset id>.npz``: the id is generated, never a user's name."""
        return self.data_dir / "datasets"

    def dataset_path(self, dataset_id: str) -> Path:
        return self.datasets_dir / f"{dataset_id}.npz"


def _passwords(url: str) -> list[str]:
    """The passwords a URL carries (user part and ``password=`` query parameters, decoded); none for
    unix socket, peer or IAM auth and SQLite."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return []
    if parsed.drivername.startswith(("sqlite", "sqla+sqlite")):
        return []
    found = [] if parsed.password is None else [str(parsed.password)]
    query = parsed.query.get("password", ())
    found += [query] if isinstance(query, str) else list(query)
    return found


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once. Tests build `Settings(...)` directly."""
    return Settings()
