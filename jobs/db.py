"""Engines and sessions from a database URL (PostgreSQL or SQLite).

One engine per URL (and deadlines) per process (`engine`), so every caller shares its connection
pool. SQLite gets the pragmas a server needs: WAL (the API reads while a worker writes), foreign
keys (the schema's cascades) and a busy timeout (writers wait for each other instead of failing
with "database is locked", but no longer than the statement deadline). PostgreSQL connections are
pinged before use, so a restarted server costs one error at most, not a pool of dead connections.

Every database call has a deadline (``REVTUNE_DATABASE_TIMEOUT_S``, ``..._CONNECT_TIMEOUT_S``):
PostgreSQL connections are opened with libpq's ``connect_timeout``, the server cancels a statement
after ``statement_timeout``, TCP keepalives and ``tcp_user_timeout`` drop a connection whose peer
vanished (instead of the kernel's quarter of an hour), and a request waits at most the statement
deadline for a connection from a full pool. Parameters the URL sets itself (``?connect_timeout=``,
``?options=``...) win. Behind PgBouncer, the ``options`` startup parameter must be allowed
(``ignore_startup_parameters = options``), or set ``statement_timeout`` on the role instead. Not
covered: a PostgreSQL server that is frozen but whose kernel still acknowledges (``kill -STOP``);
libpq has no client-side read deadline, and a frozen server enforces no statement timeout.

Sessions never autocommit: the caller owns the transaction (``with sessions() as s: ...; s.commit()``).
"""

from __future__ import annotations

import functools
import math
import sqlite3
import threading

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings

DEFAULT_TIMEOUT_S: float = Settings.model_fields["database_timeout_s"].default
DEFAULT_CONNECT_TIMEOUT_S: float = Settings.model_fields["database_connect_timeout_s"].default
# Kept for callers of the old name: SQLite's busy timeout is the statement deadline.
SQLITE_BUSY_TIMEOUT_S = DEFAULT_TIMEOUT_S


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record, *, busy_timeout_s: float) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


_engines: dict[tuple[str, float, float], Engine] = {}
_lock = threading.Lock()


def engine(
    url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
) -> Engine:
    """The process's engine for ``url`` with these deadlines (created on first use): ``timeout_s``
    per statement (and per wait for a pooled connection), ``connect_timeout_s`` per connect."""
    key = (url, float(timeout_s), float(connect_timeout_s))
    with _lock:
        if key not in _engines:
            _engines[key] = _create(url, timeout_s, connect_timeout_s)
        return _engines[key]


def _create(url: str, timeout_s: float, connect_timeout_s: float) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout_s})
        event.listen(eng, "connect", functools.partial(_sqlite_pragmas, busy_timeout_s=timeout_s))
        return eng
    connect_args = _postgres_deadlines(parsed, timeout_s, connect_timeout_s)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        pool_timeout=timeout_s,
        connect_args=connect_args,
    )


def _postgres_deadlines(parsed, timeout_s: float, connect_timeout_s: float) -> dict:
    """libpq parameters bounding every wait on the server (psycopg and psycopg2 take them all)."""
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() not in ("psycopg", "psycopg2"):
        return {}
    timeout_ms = max(1, int(timeout_s * 1000))
    wanted = {
        "connect_timeout": max(2, math.ceil(connect_timeout_s)),  # libpq: whole seconds, 2 at least
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": timeout_ms,
    }
    args = {k: v for k, v in wanted.items() if k not in parsed.query}
    # Ours first: in a startup ``options`` string a later ``-c`` wins, so the URL's own still does.
    options = f"-c statement_timeout={timeout_ms}"
    theirs = parsed.query.get("options")
    args["options"] = f"{options} {theirs}" if isinstance(theirs, str) and theirs else options
    return args


def session_factory(settings_or_url) -> sessionmaker[Session]:
    """A session factory for a `jobs.settings.Settings` or a URL. ``expire_on_commit=False``: rows
    read in a unit of work stay readable after its commit (the API serialises them afterwards)."""
    if isinstance(settings_or_url, str):
        return sessionmaker(engine(settings_or_url), expire_on_commit=False)
    settings = settings_or_url
    eng = engine(
        settings.database_url,
        timeout_s=settings.database_timeout_s,
        connect_timeout_s=settings.database_connect_timeout_s,
    )
    return sessionmaker(eng, expire_on_commit=False)


def dispose(url: str | None = None) -> None:
    """Close the pool of ``url``'s engine (all engines if None) and forget it: for tests that drop
    their database, and for a process that forked."""
    with _lock:
        for key in [k for k in _engines if url is None or k[0] == url]:
            _engines.pop(key).dispose()
