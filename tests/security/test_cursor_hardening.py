"""Forged list cursors: GET /v1/jobs?cursor=... with a well-formed base64url JSON pair whose parts
are not what this server issues. Each must be the same clear 422 on ``query.cursor`` that any
other bad cursor gets, never a 500, on SQLite and on PostgreSQL (a datetime that leaves the
representable range once converted to UTC, a NUL that PostgreSQL refuses, a lone surrogate no
driver can encode, an id that is not a job id)."""

from __future__ import annotations

import base64

import pytest
from api_support import TestClient, submit

A_JOB_ID = "0123456789abcdef0123456789abcdef"  # the shape `jobs.models.new_id` gives

# The JSON text of each pair, exactly as sent (base64url-encoded, unpadded, as issued cursors are).
FORGED = [
    r'["0001-01-01T00:00:00+01:00","x"]',  # underflows when normalised to UTC
    r'["9999-12-31T23:59:59-01:00","x"]',  # overflows when normalised to UTC
    r'["2026-01-01T00:00:00+00:00","a\u0000b"]',  # NUL: PostgreSQL refuses it in text
    r'["2026-01-01T00:00:00+00:00","\ud800"]',  # a lone surrogate
    # each check on its own, the other half of the pair being valid
    f'["0001-01-01T00:00:00+01:00","{A_JOB_ID}"]',
    f'["9999-12-31T23:59:59-01:00","{A_JOB_ID}"]',
    r'["2026-01-01T00:00:00+00:00","\u0000"]',
    r'["2026-01-01T00:00:00+00:00","0123456789abcdef0123456789abcde\ud800"]',
    r'["2026-01-01T00:00:00+00:00","0123456789ABCDEF0123456789ABCDEF"]',
    r'["2026-01-01T00:00:00+00:00",""]',
    r'["2026-01-01T00:00:00+00:00",12345]',
    r'["2026-01-01T00:00:00",' + f'"{A_JOB_ID}"]',  # naive
    f'["not a time","{A_JOB_ID}"]',
    f'[null,"{A_JOB_ID}"]',
    f'["2026-01-01T00:00:00+00:00","{A_JOB_ID}","extra"]',
    f'{{"2026-01-01T00:00:00+00:00":"{A_JOB_ID}"}}',
]


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("ascii")).decode().rstrip("=")


@pytest.fixture
def alice(service):
    """Alice, with server errors answered as 500s (the default client would raise them instead)."""
    headers = {"Authorization": f"Bearer {service.keys['alice']}"}
    with TestClient(service.app, headers=headers, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("text", FORGED, ids=[f"forged{i}" for i in range(len(FORGED))])
def test_a_forged_cursor_is_422_naming_the_cursor(service, alice, text):
    submit(service.alice)
    reply = alice.get("/v1/jobs", params={"cursor": _encode(text)})
    assert reply.status_code == 422, (text, reply.status_code, reply.text)
    locs = [".".join(str(p) for p in e["loc"]) for e in reply.json()["detail"]]
    assert locs == ["query.cursor"], (text, reply.text)


def test_issued_cursors_still_page_through_every_job(service, alice):
    made = {submit(service.alice)["id"] for _ in range(3)}
    seen, cursor = [], None
    while True:
        reply = alice.get("/v1/jobs", params={"limit": 1} | ({"cursor": cursor} if cursor else {}))
        assert reply.status_code == 200, reply.text
        page = reply.json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == len(made)
