"""Database migrations (Alembic), packaged with revtune; target metadata is `jobs.models`.

- `upgrade(url)`: bring the database to the newest revision (what ``revtune db upgrade`` and
  ``revtune serve`` run); idempotent.
- `current(url)`: the database's revision (None: never migrated); `head()`: the newest one.
- `check(url)`: None when the database is at head, else a message telling the user what to run;
  the API calls it at start-up and refuses to serve an old schema.
- `differences(url)`: what differs between the migrated database and `jobs.models` (empty when
  the migrations are complete); the tests assert it is empty on both databases.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

HERE = Path(__file__).resolve().parent
UPGRADE_COMMAND = "revtune db upgrade"


def config() -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def _engine(url: str) -> Engine:
    return create_engine(url)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (default: the newest)."""
    cfg = config()
    engine = _engine(database_url)
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def head() -> str:
    heads = ScriptDirectory.from_config(config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads ({heads}); merge them")
    return heads[0]


def current(database_url: str) -> str | None:
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def check(database_url: str) -> str | None:
    """None if the schema is current; otherwise what is wrong and the command that fixes it."""
    found, newest = current(database_url), head()
    if found == newest:
        return None
    if found is None:
        return f"the database has no revtune schema yet: run `{UPGRADE_COMMAND}`"
    if found not in {rev.revision for rev in ScriptDirectory.from_config(config()).walk_revisions()}:
        return f"the database is at revision {found}, newer than this revtune ({newest}): upgrade revtune"
    return f"the database schema is at revision {found}, older than {newest}: run `{UPGRADE_COMMAND}`"


def differences(database_url: str) -> list:
    """Alembic's autogenerate diff between the database and `jobs.models` (empty: they agree)."""
    from jobs.models import Base

    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            ctx = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
