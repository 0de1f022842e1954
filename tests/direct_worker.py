"""The fixtures of a test module that calls the worker's code directly on a real, migrated
PostgreSQL database (no broker: Celery's in-memory transport), one database per module.

    settings, sessions, tenant_id = direct_worker_fixtures("chaos", heartbeat_interval_s=0.5)

gives the module its ``settings`` (`jobs.settings.Settings`, with auth off; keyword arguments override
any setting), ``sessions`` (a session factory) and ``tenant_id`` (a tenant named ``<name>-tests``).
"""

from __future__ import annotations

from typing import Any

import pytest

import migrations
from jobs import repository
from jobs.db import session_factory
from jobs.settings import Settings


def direct_worker_fixtures(name: str, **overrides: Any):
    @pytest.fixture(scope="module")
    def settings(make_postgres_database, tmp_path_factory) -> Settings:
        url = make_postgres_database(f"revtune_{name}")
        migrations.upgrade(url)
        values = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 5, **overrides}
        return Settings(
            database_url=url,
            broker_url="memory://",
            data_dir=tmp_path_factory.mktemp(f"{name}-data"),
            auth="off",
            **values,
        )

    @pytest.fixture(scope="module")
    def sessions(settings):
        return session_factory(settings)

    @pytest.fixture(scope="module")
    def tenant_id(sessions) -> str:
        with sessions() as session:
            tenant = repository.get_or_create_tenant(session, f"{name}-tests")
            session.commit()
            return tenant.id

    return settings, sessions, tenant_id
