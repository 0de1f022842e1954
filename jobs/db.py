"""Engines and sessions from a database URL (PostgreSQL or SQLite).

One engine per URL per process (`engine`), so every caller shares its connection pool. SQLite gets
the pragmas a server needs: WAL (the API reads while a worker writes), foreign keys (the schema's
cascades) and a busy timeout (writers wait for each other instead of failing with "database is
locked"). PostgreSQL connections are pinged before use, so a restarted server costs one error at
most, not a pool of dead connections.

Sessions never autocommit: the caller owns the transaction (``with sessions() as s: ...; s.commit()``).
"""

from __future__ import annotations

import sqlite3
import threading

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_S = 30


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine(url: str) -> Engine:
    """The process's engine for ``url`` (created on first use)."""
    with _lock:
        if url not in _engines:
            _engines[url] = _create(url)
        return _engines[url]


def _create(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def session_factory(settings_or_url) -> sessionmaker[Session]:
    """A session factory for a `jobs.settings.Settings` or a URL. ``expire_on_commit=False``: rows
    read in a unit of work stay readable after its commit (the API serialises them afterwards)."""
    url = settings_or_url if isinstance(settings_or_url, str) else settings_or_url.database_url
    return sessionmaker(engine(url), expire_on_commit=False)


def dispose(url: str | None = None) -> None:
    """Close the pool of ``url``'s engine (all engines if None) and forget it: for tests that drop
    their database, and for a process that forked."""
    with _lock:
        for key in [url] if url is not None else list(_engines):
            eng = _engines.pop(key, None)
            if eng is not None:
                eng.dispose()
