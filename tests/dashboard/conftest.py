from __future__ import annotations

import pytest
from client.live import Service, shared_service


@pytest.fixture
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Service:
    return shared_service(request, tmp_path_factory)
