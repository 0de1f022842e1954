"""Shared fixtures: real databases for the service tests.

- ``postgres_server``: the admin URL of the PostgreSQL server on 127.0.0.1:5432 (user postgres);
- ``make_postgres_database``: creates a fresh, empty database (dropped at the end of the session);
- ``database_url``: parametrised over ``sqlite`` and ``postgresql``: a migrated database with every
  table emptied before the test; one database per backend per session keeps the suite fast;
- ``redis_url``: a Redis database number only these tests use, flushed before and after.

Servers that are down skip the tests that need them, with the reason, except under ``CI=true``,
where they fail: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import delete

# pytest puts tests/ on sys.path (the e2e helpers import as `e2e.*`), which makes tests/api,
# tests/jobs and tests/worker namespace-package candidates for `api`, `jobs` and `worker`. A regular
# package anywhere on sys.path beats a namespace one, so with the repository root on it the real
# packages win however pytest is started (`pytest`, `python -m pytest`, from any folder).
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

PG_ADMIN_URL = os.environ.get("REVTUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REVTUNE_TEST_REDIS", "redis://127.0.0.1:6379")
# Redis database numbers: 12 here (api/jobs tests); 13 and 14 belong to the e2e and worker tests.
REDIS_DB_TESTS = 12


def unavailable(what: str, error: BaseException) -> None:
    """Skip (or, under CI, fail) because ``what`` cannot be reached."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true but unavailable: {error}")
    pytest.skip(f"{what} unavailable ({error}); start it or set CI=true to make this a failure")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as e:
        unavailable(f"PostgreSQL at {PG_ADMIN_URL}", e)
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def make_postgres_database(postgres_server: str) -> Iterator[Callable[[str], str]]:
    """``make(prefix) -> SQLAlchemy URL`` of a new empty database; all are dropped at session end."""
    created: list[str] = []

    def make(prefix: str = "revtune_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    yield make
    from jobs import db

    db.dispose()
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _migrated_databases() -> dict[str, str]:
    """backend -> URL of the session's migrated database of that backend."""
    return {}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory, _migrated_databases) -> str:
    """A migrated database of the parametrised backend, emptied before each test."""
    import migrations
    from jobs import db
    from jobs.models import Base

    backend = request.param
    if backend not in _migrated_databases:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'revtune.db'}"
        else:
            url = request.getfixturevalue("make_postgres_database")("revtune_test")
        migrations.upgrade(url)
        _migrated_databases[backend] = url
    url = _migrated_databases[backend]
    with db.session_factory(url)() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))
        session.commit()
    return url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    url = f"{REDIS_URL}/{REDIS_DB_TESTS}"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.RedisError as e:
        unavailable(f"Redis at {REDIS_URL}", e)
    yield url
    client.flushdb()
    client.close()
