"""Alembic environment: target metadata is `jobs.models`; SQLite runs in batch mode.

The connection comes from `migrations.upgrade` (``config.attributes["connection"]``); run by the
plain ``alembic`` command, the URL comes from ``REVTUNE_DATABASE_URL`` (via `jobs.settings`).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from jobs.models import Base

target_metadata = Base.metadata


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    from jobs.settings import get_settings

    engine = create_engine(get_settings().database_url)
    try:
        with engine.connect() as connection:
            _configure(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run()
