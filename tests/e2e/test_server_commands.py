"""``revtune db upgrade`` and ``revtune keys create|list|revoke`` against a SQLite data folder."""

from __future__ import annotations

import pytest

from jobs.settings import get_settings
from revtune.cli import main


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    for name in ("REVTUNE_DATABASE_URL", "REVTUNE_BROKER_URL", "REVTUNE_AUTH", "REVTUNE_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REVTUNE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def test_keys_need_the_schema_and_then_live_through_create_list_revoke(data_dir, capsys):
    assert main(["keys", "list"]) == 2  # no server has run there: nothing to add a key to
    assert f"there is no database {data_dir / 'revtune.db'}" in capsys.readouterr().err

    assert main(["db", "upgrade"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert (data_dir / "revtune.db").is_file()

    assert main(["keys", "create", "--tenant", "alice"]) == 0
    out = capsys.readouterr().out
    key = out.strip().splitlines()[-1]
    key_id = out.split()[1]
    assert key.startswith(f"rt_{key_id}_") and len(key) > 40

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "alice" in listing and key not in listing  # the secret is never shown again

    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", "nope"]) == 2
    assert "no API key with id 'nope'" in capsys.readouterr().err
    main(["keys", "list"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(key_id))
    assert not row.rstrip().endswith("-")  # the revoked column holds a time


def test_an_unreachable_database_is_one_line_not_a_traceback(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("REVTUNE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    get_settings.cache_clear()
    assert main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("revtune: error: cannot use the database at postgresql+psycopg://")
        and "Traceback" not in err
    )
