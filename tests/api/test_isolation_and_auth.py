"""Tenants never see each other (404 on every endpoint), keys are required and revocable, POSTs are
rate-limited, and CORS is off unless configured."""

from __future__ import annotations

import io
import time

import numpy as np
from api_support import TINY_SPEC, TestClient, problems, run, submit

from api import create_app
from jobs import repository


def _alice_resources(service) -> tuple[str, str]:
    buffer = io.BytesIO()
    np.savez(buffer, X=np.ones((20, 3)), y=np.arange(20) % 2)
    ds = service.alice.post(
        "/v1/datasets",
        files={"file": ("d.npz", buffer.getvalue(), "application/octet-stream")},
        data={"name": "a"},
    ).json()
    job = submit(service.alice)
    run(service, job["id"], 1)
    return job["id"], ds["id"]


def test_every_endpoint_hides_another_tenants_resources(service):
    job_id, dataset_id = _alice_resources(service)
    calls = [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/steps"),
        ("GET", f"/v1/jobs/{job_id}/hyperparameters"),
        ("GET", f"/v1/jobs/{job_id}/hyperparameters/learning_rate"),
        ("GET", f"/v1/jobs/{job_id}/hyperparameters/learning_rate?format=npy"),
        ("GET", f"/v1/datasets/{dataset_id}"),
        ("DELETE", f"/v1/datasets/{dataset_id}"),
    ]
    for method, path in calls:
        theirs = service.bob.request(method, path)
        assert theirs.status_code == 404, (method, path, theirs.text)
        # The same answer as for an id that does not exist at all: nothing to learn from it.
        missing = service.bob.request(method, path.replace(job_id, "0" * 32).replace(dataset_id, "0" * 32))
        assert missing.status_code == 404
    assert service.bob.get("/v1/jobs").json() == {"items": [], "next_cursor": None}
    assert service.bob.get("/v1/jobs", params={"status": "succeeded"}).json()["items"] == []
    assert service.bob.get("/v1/datasets").json() == {"items": []}
    spec = {**TINY_SPEC, "dataset": {"id": dataset_id, "train": 10, "valid": 5}}
    assert "body.dataset.id" in problems(service.bob.post("/v1/jobs", json=spec))
    # And alice still has everything.
    assert service.alice.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    assert service.alice.get(f"/v1/datasets/{dataset_id}").status_code == 200


def test_every_v1_endpoint_needs_a_key(service):
    calls = [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/x"),
        ("POST", "/v1/jobs/x/cancel"),
        ("DELETE", "/v1/jobs/x"),
        ("GET", "/v1/jobs/x/steps"),
        ("GET", "/v1/jobs/x/hyperparameters"),
        ("GET", "/v1/jobs/x/hyperparameters/l2"),
        ("GET", "/v1/datasets"),
        ("POST", "/v1/datasets"),
        ("GET", "/v1/datasets/x"),
        ("DELETE", "/v1/datasets/x"),
        ("GET", "/v1/templates"),
        ("GET", "/v1/templates/chaos-sweep"),
    ]
    for method, path in calls:
        reply = service.anonymous.request(method, path)
        assert reply.status_code == 401, (method, path)
        assert reply.headers["www-authenticate"] == "Bearer"
    assert "revtune keys create" in service.anonymous.get("/v1/jobs").json()["detail"]
    for headers in (
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer rt_x_y"},
        {"X-API-Key": "nonsense"},
    ):
        assert service.anonymous.get("/v1/jobs", headers=headers).status_code == 401


def test_a_revoked_key_stops_working_at_once_despite_the_cache(service):
    assert service.alice.get("/v1/jobs").status_code == 200  # verified and cached
    key_id = repository.parse_api_key(service.keys["alice"])[0]
    with service.sessions() as s:
        assert repository.revoke_api_key(s, key_id)
        s.commit()
    reply = service.alice.get("/v1/jobs")
    assert reply.status_code == 401 and "revoked" in reply.json()["detail"]
    assert service.bob.get("/v1/jobs").status_code == 200


def test_verified_keys_are_cached_so_argon2_runs_once(service, monkeypatch):
    calls = []
    real = repository.authenticate
    monkeypatch.setattr(repository, "authenticate", lambda s, key: calls.append(key) or real(s, key))
    for _ in range(3):
        assert service.alice.get("/v1/jobs").status_code == 200
    assert len(calls) == 1


def test_posts_beyond_the_rate_limit_get_429_per_tenant(service):
    limited = create_app(
        service.settings.model_copy(update={"post_rate_limit": 3}), enqueue=lambda job_id: None
    )
    with (
        TestClient(limited, headers={"Authorization": f"Bearer {service.keys['alice']}"}) as alice,
        TestClient(limited, headers={"Authorization": f"Bearer {service.keys['bob']}"}) as bob,
    ):
        start = time.monotonic()
        assert [alice.post("/v1/jobs", json=TINY_SPEC).status_code for _ in range(4)] == [201, 201, 201, 429]
        refused = alice.post("/v1/jobs", json=TINY_SPEC)
        assert refused.status_code == 429
        # the first POST frees its slot of the 60 s window: Retry-After is the rest of it, rounded up
        assert 60 - (time.monotonic() - start) - 0.01 <= int(refused.headers["retry-after"]) <= 60
        assert alice.get("/v1/jobs").status_code == 200, "reads are not limited"
        assert bob.post("/v1/jobs", json=TINY_SPEC).status_code == 201, "each tenant has its own budget"


def test_failed_authentications_are_limited_per_address_without_verifying(service, monkeypatch):
    limited = create_app(
        service.settings.model_copy(update={"auth_failure_limit": 3}), enqueue=lambda job_id: None
    )
    calls = []
    real = repository.authenticate
    monkeypatch.setattr(repository, "authenticate", lambda s, key: calls.append(key) or real(s, key))
    alice_key = service.keys["alice"]
    wrong = alice_key[:-4] + ("AAAA" if not alice_key.endswith("AAAA") else "BBBB")
    with TestClient(limited) as client:
        with TestClient(limited, headers={"Authorization": f"Bearer {alice_key}"}) as alice:
            assert alice.get("/v1/jobs").status_code == 200  # verified and cached before the attack
            bad = {"Authorization": f"Bearer {wrong}"}
            start = time.monotonic()
            codes = [client.get("/v1/jobs", headers=bad).status_code for _ in range(5)]
            assert codes == [401, 401, 401, 429, 429]
            assert len(calls) == 4, "refused addresses cost no argon2 verification"
            refused = client.get("/v1/jobs", headers=bad)
            assert "REVTUNE_AUTH_FAILURE_LIMIT" in refused.json()["detail"]
            # the first failure frees its slot of the 60 s window: Retry-After is the rest of it
            assert 60 - (time.monotonic() - start) - 0.01 <= int(refused.headers["retry-after"]) <= 60
            assert alice.get("/v1/jobs").status_code == 200, "a key verified before stays usable"


def test_cors_is_off_by_default_and_on_only_for_listed_origins(service):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    reply = service.anonymous.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in reply.headers
    reply = service.alice.get("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in reply.headers

    app = create_app(
        service.settings.model_copy(update={"cors_origins": ["https://ok.example"]}), enqueue=print
    )
    with TestClient(app) as client:
        ok = client.options("/v1/jobs", headers={**preflight, "Origin": "https://ok.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ok.example"
        evil = client.options("/v1/jobs", headers=preflight)
        assert "access-control-allow-origin" not in evil.headers


def test_auth_off_serves_one_local_tenant(service):
    app = create_app(service.settings.model_copy(update={"auth": "off"}), enqueue=lambda job_id: None)
    with TestClient(app) as client:
        job = submit(client)
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
    assert service.alice.get(f"/v1/jobs/{job['id']}").status_code == 404
    with service.sessions() as s:
        assert repository.get_job(s, service.tenant(repository.LOCAL_TENANT), job["id"]).id == job["id"]
