from __future__ import annotations

import pytest

from client.live import Service, shared_service
from revtune import Client


@pytest.fixture
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Service:
    return shared_service(request, tmp_path_factory)


@pytest.fixture
def client(service: Service):
    with Client(service.url, timeout=30) as c:
        yield c
