"""``revtune keys ... --data-dir DIR``: the keys go to the database of the server at DIR, the one
``revtune serve --data-dir DIR`` uses, and a folder where no server ran gets no database of its own."""

from __future__ import annotations

import sqlite3

import pytest

import migrations
from jobs.settings import get_settings
from revtune.cli import main


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A shell in another folder, with no REVTUNE_* variable naming the server's data."""
    for name in ("REVTUNE_DATA_DIR", "REVTUNE_DATABASE_URL", "REVTUNE_BROKER_URL", "REVTUNE_ENV"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    get_settings.cache_clear()
    yield tmp_path / "elsewhere"
    get_settings.cache_clear()


@pytest.fixture
def server_dir(tmp_path):
    """The data dir of a server that has run: `revtune serve` migrates DIR/revtune.db at start."""
    folder = tmp_path / "server-data"
    folder.mkdir()
    migrations.upgrade(f"sqlite:///{folder / 'revtune.db'}")
    return folder


def test_keys_use_the_database_of_the_server_at_the_data_dir(elsewhere, server_dir, capsys):
    assert main(["keys", "create", "--tenant", "alice", "--data-dir", str(server_dir)]) == 0
    out = capsys.readouterr().out
    key_id = out.split()[1]
    with sqlite3.connect(server_dir / "revtune.db") as db:
        assert db.execute("SELECT id FROM api_keys").fetchall() == [(key_id,)]

    assert main(["keys", "list", "--data-dir", str(server_dir)]) == 0
    assert key_id in capsys.readouterr().out
    assert main(["keys", "revoke", key_id, "--data-dir", str(server_dir)]) == 0
    assert not (elsewhere / ".revtune").exists(), "the keys commands made a data dir of their own"


def test_no_database_at_the_data_dir_is_refused_naming_it_and_creating_nothing(elsewhere, tmp_path, capsys):
    for args in (["keys", "create", "--tenant", "alice"], ["keys", "list"], ["keys", "revoke", "k"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        looked = elsewhere.resolve() / ".revtune"
        assert f"there is no database {looked / 'revtune.db'}" in err
        assert f"no revtune server has run with the data dir {looked} (the default)" in err
        assert "--data-dir DIR" in err and "REVTUNE_DATABASE_URL" in err
        assert "db upgrade" not in err, "it must not suggest making a database no server reads"
        assert not looked.exists()

    wrong = tmp_path / "not-the-server"
    assert main(["keys", "list", "--data-dir", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert f"there is no database {wrong / 'revtune.db'}: no revtune server has run with" in err
    assert f"the data dir {wrong} (from --data-dir)" in err
    assert not wrong.exists()


def test_a_database_without_revtune_tables_is_refused_the_same_way(elsewhere, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    sqlite3.connect(folder / "revtune.db").close()  # what an older `revtune keys` left behind
    assert main(["keys", "list", "--data-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"revtune.db has no revtune tables: no revtune server has run with the data dir {folder}" in err
    assert "--data-dir DIR" in err and "db upgrade" not in err


def test_revtune_database_url_overrides_the_data_dir_as_it_does_for_serve(
    elsewhere, server_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("REVTUNE_DATABASE_URL", f"sqlite:///{server_dir / 'revtune.db'}")
    assert main(["keys", "create", "--tenant", "bob", "--data-dir", str(tmp_path / "other")]) == 0
    with sqlite3.connect(server_dir / "revtune.db") as db:
        assert db.execute("SELECT count(*) FROM api_keys").fetchone() == (1,)

    monkeypatch.setenv("REVTUNE_DATABASE_URL", f"sqlite:///{tmp_path / 'missing.db'}")
    assert main(["keys", "list", "--data-dir", str(server_dir)]) == 2
    err = capsys.readouterr().err
    assert f"there is no database {tmp_path / 'missing.db'}: no revtune server has used" in err
    assert "which REVTUNE_DATABASE_URL names (it overrides --data-dir" in err
