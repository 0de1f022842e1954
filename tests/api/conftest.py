"""The API under test: a real app on a real database (SQLite and PostgreSQL), two tenants with
keys, and a recording fake ``enqueue`` (the real worker runs in the end-to-end tests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from api_support import TestClient
from argon2 import PasswordHasher

from api import create_app
from jobs import repository
from jobs.db import session_factory
from jobs.repository import keys as repository_keys
from jobs.settings import Settings


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    """argon2 at its cheapest: the tests check who gets in, not the hash's cost."""
    monkeypatch.setattr(repository_keys, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    monkeypatch.setattr(repository_keys, "_dummy_hash", None)


@dataclasses.dataclass
class Service:
    settings: Settings
    app: object
    alice: TestClient
    bob: TestClient
    anonymous: TestClient
    enqueued: list[str]
    keys: dict[str, str]

    def sessions(self):
        return session_factory(self.settings)()

    def tenant(self, name: str) -> str:
        with self.sessions() as s:
            return repository.get_or_create_tenant(s, name).id


def make_settings(database_url: str, data_dir, **changes) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{data_dir}/broker.db",
        auth="on",
        max_upload_bytes=256 * 1024,
        post_rate_limit=1000,
        **changes,
    )


@pytest.fixture
def service(database_url, tmp_path) -> Iterator[Service]:
    settings = make_settings(database_url, tmp_path)
    keys = {}
    with session_factory(settings)() as s:
        for name in ("alice", "bob"):
            keys[name] = repository.create_api_key(s, name)[1]
        s.commit()
    enqueued: list[str] = []
    app = create_app(settings, enqueue=enqueued.append)
    with (
        TestClient(app, headers={"Authorization": f"Bearer {keys['alice']}"}) as alice,
        TestClient(app, headers={"X-API-Key": keys["bob"]}) as bob,
        TestClient(app) as anonymous,
    ):
        yield Service(settings, app, alice, bob, anonymous, enqueued, keys)
