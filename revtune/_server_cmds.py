"""Server-side commands: ``serve``, ``worker``, ``db upgrade``, ``keys create|list|revoke``.

They read the same ``REVTUNE_*`` environment variables as the service (``jobs.settings``); the
service packages are imported inside each command, so ``revtune --help`` stays fast and JAX is
loaded only by ``revtune worker``. The ``keys`` commands take ``--data-dir`` as ``serve`` does and
use the database that ``serve`` would use there; they never create one: a key in a database no
server reads would only be refused later, as a 401 far from its cause.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from revtune._common import CommandError
from revtune.serve import DEFAULT_DATA_DIR


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the API and workers on embedded defaults (SQLite and a SQLite broker in --data-dir)",
        description="Run the API and N workers. Without REVTUNE_DATABASE_URL / REVTUNE_BROKER_URL the "
        "database and the broker are SQLite files in --data-dir. Ctrl-C stops everything.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument(
        "--data-dir",
        default=None,
        help="database, broker and uploads (default $REVTUNE_DATA_DIR or .revtune)",
    )
    serve.add_argument("--workers", type=int, default=1, help="worker processes; 0 runs the API only")
    serve.add_argument(
        "--auth",
        choices=("on", "off"),
        default=None,
        help="API keys required? (default $REVTUNE_AUTH, else off on 127.0.0.1 and on elsewhere)",
    )
    serve.set_defaults(run=_serve)

    worker = subparsers.add_parser(
        "worker",
        help="run one worker (one job at a time) with the REVTUNE_* settings",
        description="Run one Celery worker (solo pool: one job at a time, JAX never forked) and the "
        "reaper that re-queues jobs whose worker died. Scale by starting more.",
    )
    worker.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    worker.set_defaults(run=_worker)

    db = subparsers.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_sub.add_parser("upgrade", help="apply the migrations to REVTUNE_DATABASE_URL")
    upgrade.set_defaults(run=_db_upgrade)

    keys = subparsers.add_parser(
        "keys",
        help="API keys (each bound to one tenant), in the database of the server at --data-dir",
        description="API keys live in the server's database: the one `revtune serve --data-dir DIR` "
        "uses (REVTUNE_DATABASE_URL if set, else DIR/revtune.db), as for `serve`.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--data-dir",
        default=None,
        help="the data dir of the server the keys are for, as given to `revtune serve` "
        f"(default $REVTUNE_DATA_DIR or {DEFAULT_DATA_DIR}); REVTUNE_DATABASE_URL, if set, overrides it",
    )
    create = keys_sub.add_parser(
        "create", help="create a key for a tenant and print it (shown only once)", parents=[server]
    )
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.set_defaults(run=_keys_create)
    list_ = keys_sub.add_parser(
        "list", help="list keys (ids and tenants, never the secrets)", parents=[server]
    )
    list_.set_defaults(run=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id", parents=[server])
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    revoke.set_defaults(run=_keys_revoke)


def _serve(args: argparse.Namespace) -> int:
    from revtune.serve import ServeError, serve

    try:
        return serve(
            host=args.host, port=args.port, data_dir=args.data_dir, workers=args.workers, auth=args.auth
        )
    except ServeError as e:
        raise CommandError(str(e)) from e


def _worker(args: argparse.Namespace) -> int:
    from worker.process import run_worker

    run_worker(loglevel=args.loglevel)
    return 0


def _settings(data_dir: str | None = None):
    """The ``REVTUNE_*`` settings; with ``data_dir``, those of ``revtune serve --data-dir DATA_DIR``:
    the database is REVTUNE_DATABASE_URL when set, else ``DATA_DIR/revtune.db``, as `serve` picks it."""
    from jobs.settings import Settings, get_settings

    try:
        return get_settings() if data_dir is None else Settings(data_dir=Path(data_dir))
    except ValueError as e:
        # pydantic's ValidationError is a ValueError and names the variable that is wrong.
        raise CommandError(f"bad REVTUNE_* configuration: {e}") from e


def _sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite database URL (None: another database, or SQLite in memory)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).resolve()


@contextlib.contextmanager
def _database_errors(settings):
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as e:
        raise CommandError(f"cannot use the database at {_redacted(settings.database_url)}: {e.orig}") from e


def _db_upgrade(args: argparse.Namespace) -> int:
    import migrations

    settings = _settings()
    sqlite_file = _sqlite_file(settings.database_url)
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    with _database_errors(settings):
        migrations.upgrade(settings.database_url)
    print(f"database at {_redacted(settings.database_url)} is up to date")
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _keys_create(args: argparse.Namespace) -> int:
    from jobs import repository

    with _session(args.data_dir) as session:
        key_id, secret = repository.create_api_key(session, args.tenant)
        session.commit()
    print(f"key {key_id} for tenant {args.tenant!r} (shown once; send it as `Authorization: Bearer <key>`):")
    print(secret)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from jobs import repository

    with _session(args.data_dir) as session:
        keys = repository.list_api_keys(session)
    print(f"{'KEY_ID':<24} {'TENANT':<24} {'CREATED':<26} REVOKED")
    for key in keys:
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
        print(f"{key.id:<24} {key.tenant:<24} {key.created_at.isoformat(timespec='seconds'):<26} {revoked}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from jobs import repository

    with _session(args.data_dir) as session:
        if not repository.revoke_api_key(session, args.key_id):
            raise CommandError(f"no API key with id {args.key_id!r} (see `revtune keys list`)")
        session.commit()
    print(f"revoked key {args.key_id}")
    return 0


@contextlib.contextmanager
def _session(data_dir: str | None):
    """A session on the database of the server at ``data_dir`` (`_settings`). A database that is not
    there, or holds no revtune tables, is refused naming what was looked at: the keys are for a
    server, and a key written anywhere else never reaches it, so nothing is created."""
    import migrations
    from jobs.db import session_factory

    settings = _settings(data_dir)
    sqlite_file = _sqlite_file(settings.database_url)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise CommandError(_no_server_database(settings, data_dir, f"there is no database {sqlite_file}"))
    with _database_errors(settings):
        if migrations.current(settings.database_url) is None:
            found = f"the database at {_redacted(settings.database_url)} has no revtune tables"
            raise CommandError(_no_server_database(settings, data_dir, found))
        problem = migrations.check(settings.database_url)
        if problem is not None:
            raise CommandError(problem)
        with session_factory(settings)() as session:
            yield session


def _no_server_database(settings, data_dir: str | None, found: str) -> str:
    """Why the keys commands found no server's database, and how to name the server's."""
    if os.environ.get("REVTUNE_DATABASE_URL"):
        where = (
            "no revtune server has used this database, which REVTUNE_DATABASE_URL names (it overrides "
            "--data-dir, as it does for `revtune serve`)"
        )
    else:
        if data_dir is not None:
            given = "from --data-dir"
        elif os.environ.get("REVTUNE_DATA_DIR"):
            given = "from $REVTUNE_DATA_DIR"
        else:
            given = "the default"
        where = f"no revtune server has run with the data dir {settings.data_dir} ({given})"
    return (
        f"{found}: {where}. A key must go to the database of the server that checks it: use "
        "--data-dir DIR with the data dir that server runs with (`revtune serve` prints it: "
        f"`revtune: data in DIR`; `make serve` uses {DEFAULT_DATA_DIR} in the repository), or set "
        "REVTUNE_DATABASE_URL to the server's database"
    )
