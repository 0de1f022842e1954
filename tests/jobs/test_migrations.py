"""Migrations: one head, upgrade from empty on both databases, and the result equals the models."""

from __future__ import annotations

from alembic.script import ScriptDirectory

import migrations


def test_there_is_a_single_head():
    assert len(ScriptDirectory.from_config(migrations.config()).get_heads()) == 1
    assert migrations.head()


def test_upgrade_from_empty_matches_the_models_on_both_databases(tmp_path, make_postgres_database):
    for url in (f"sqlite:///{tmp_path / 'fresh.db'}", make_postgres_database("revtune_migrate")):
        assert migrations.current(url) is None
        assert "revtune db upgrade" in migrations.check(url)
        migrations.upgrade(url)
        assert migrations.current(url) == migrations.head() and migrations.check(url) is None
        assert migrations.differences(url) == []
        migrations.upgrade(url)  # idempotent
        assert migrations.current(url) == migrations.head()
