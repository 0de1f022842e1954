"""Attacks on the service: stolen or guessed keys, another tenant's ids on every route, floods,
oversized bodies, cross-site requests, secrets in logs, unsafe production settings.

tests/api/test_isolation_and_auth.py already checks a hand-written list of routes for 404s and
401s, revocation despite the cache, one POST route's 429 and the CORS preflight. Here the routes are
enumerated from the app itself, so an endpoint added later is attacked without anyone remembering
to list it::

    nice -n 19 .venv/bin/python -m pytest tests/security/test_security.py -q
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import pkgutil
import time

import numpy as np
import pytest
from api_support import TINY_SPEC, TestClient, run, submit
from argon2 import PasswordHasher, Type
from argon2.exceptions import VerificationError
from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import ValidationError
from security_support import npz, post_raw, upload
from sqlalchemy import select

import api.routes
from api import create_app, dashboard
from api.limits import MAX_STEP_BYTES
from jobs import repository
from jobs.models import ApiKey
from jobs.repository import keys as repository_keys
from jobs.settings import DEFAULT_PASSWORDS, Settings

# Taken before the autouse fixture swaps in a cheap hasher for speed: what production uses.
PRODUCTION_HASHER = repository_keys._hasher


def routes(app) -> list[tuple[str, str]]:
    """Every (method, path template) the app serves: the OpenAPI schema's operations plus every
    route of every router module in `api.routes` and the dashboard, schema-listed or not. (FastAPI
    nests included routers in private types, so ``app.routes`` alone does not list them.)"""
    found = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    modules = [
        importlib.import_module(f"api.routes.{m.name}") for m in pkgutil.iter_modules(api.routes.__path__)
    ]
    for module in [*modules, dashboard]:
        for route in getattr(module, "router", APIRouter()).routes:
            if isinstance(route, APIRoute):
                found |= {(method, route.path) for method in route.methods - {"HEAD"}}
    return sorted(found)


def test_route_enumeration_sees_what_the_contract_lists(service):
    found = set(routes(service.app))
    assert found == {
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/static/{path:path}"),
        ("GET", "/docs"),
        ("GET", "/docs-assets/{path:path}"),
        ("GET", "/v1/templates"),
        ("GET", "/v1/models"),
        ("GET", "/v1/templates/{name}"),
        ("GET", "/v1/datasets"),
        ("POST", "/v1/datasets"),
        ("GET", "/v1/datasets/{dataset_id}"),
        ("DELETE", "/v1/datasets/{dataset_id}"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("POST", "/v1/jobs/external"),
        ("POST", "/v1/jobs/{job_id}/resume"),
        ("POST", "/v1/jobs/{job_id}/steps"),
        ("POST", "/v1/jobs/{job_id}/heartbeat"),
        ("POST", "/v1/jobs/{job_id}/finish"),
        ("GET", "/v1/jobs/{job_id}/steps"),
        ("GET", "/v1/jobs/{job_id}/hyperparameters"),
        ("GET", "/v1/jobs/{job_id}/hyperparameters/{name}"),
        ("POST", "/v1/jobs/{job_id}/continue"),
        ("GET", "/v1/jobs/{job_id}/export"),
        ("GET", "/v1/jobs/{job_id}/training-examples"),
    }


# ---- API keys ----------------------------------------------------------------------------------


def test_production_hashes_keys_with_argon2id_at_owasp_strength_or_more():
    params = PRODUCTION_HASHER
    assert isinstance(params, PasswordHasher) and params.type is Type.ID
    # OWASP's minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
    assert params.memory_cost >= 19 * 1024 and params.time_cost >= 2 and params.parallelism >= 1


def test_only_an_argon2_hash_of_the_secret_is_stored(service):
    key_id, secret = repository.parse_api_key(service.keys["alice"])
    with service.sessions() as s:
        row = s.get(ApiKey, key_id)
        stored = " ".join(str(v) for v in (row.id, row.tenant_id, row.secret_hash, row.created_at))
        hashes = list(s.scalars(select(ApiKey.secret_hash)))
    assert row.secret_hash.startswith("$argon2id$")
    assert secret not in stored and service.keys["alice"] not in stored
    assert PasswordHasher().verify(row.secret_hash, secret)
    with pytest.raises(VerificationError):
        PasswordHasher().verify(row.secret_hash, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert len(set(hashes)) == len(hashes), "salted: no two keys share a hash"


def test_every_failed_key_costs_exactly_one_argon2_verification(service, monkeypatch):
    """The same work whether the key id exists, is revoked, or the key is garbage: response times
    do not tell an attacker which key ids are real. argon2 compares digests in constant time."""
    verifications = []
    hasher = repository_keys._hasher

    class Counting:
        def hash(self, secret):
            return hasher.hash(secret)

        def verify(self, hash_, secret):
            verifications.append(hash_)
            return hasher.verify(hash_, secret)

    monkeypatch.setattr(repository_keys, "_hasher", Counting())
    key_id, secret = repository.parse_api_key(service.keys["bob"])
    with service.sessions() as s:
        revoked_id, revoked_key = repository.create_api_key(s, "bob")
        repository.revoke_api_key(s, revoked_id)
        s.commit()
    attempts = {
        "wrong secret": f"rt_{key_id}_{'x' * len(secret)}",
        "unknown id": f"rt_{'0' * 16}_{secret}",
        "revoked": revoked_key,
        "malformed": "nonsense",
        "empty secret": f"rt_{key_id}_",
        "another prefix": f"sk_{key_id}_{secret}",
    }
    for what, key in attempts.items():
        verifications.clear()
        reply = service.anonymous.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 401, what
        assert len(verifications) == 1, (what, len(verifications))
        assert key not in reply.text


def test_the_key_cache_holds_digests_never_keys(service):
    assert service.alice.get("/v1/jobs").status_code == 200
    cache = service.app.state.key_cache
    dumped = repr(cache._entries)
    assert cache._entries and service.keys["alice"] not in dumped
    assert repository.parse_api_key(service.keys["alice"])[1] not in dumped


def test_a_revoked_key_gets_401_cached_or_not_and_other_keys_keep_working(service):
    with service.sessions() as s:
        second_id, second = repository.create_api_key(s, "alice")
        s.commit()
    never_cached = TestClient(service.app, headers={"X-API-Key": second})
    alice_key_id = repository.parse_api_key(service.keys["alice"])[0]
    assert service.alice.get("/v1/jobs").status_code == 200  # cached now
    with service.sessions() as s:
        assert repository.revoke_api_key(s, second_id) and repository.revoke_api_key(s, alice_key_id)
        s.commit()
    for client in (service.alice, never_cached):
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/datasets")]:
            reply = client.request(method, path, json=TINY_SPEC if method == "POST" else None)
            assert reply.status_code == 401 and "revoked" in reply.json()["detail"], (method, path)
    assert service.bob.get("/v1/jobs").status_code == 200
    with service.sessions() as s:
        third = repository.create_api_key(s, "alice")[1]
        s.commit()
    assert TestClient(service.app, headers={"X-API-Key": third}).get("/v1/jobs").status_code == 200


# ---- tenants -----------------------------------------------------------------------------------


def _alice_has_everything(service) -> dict[str, str]:
    job = submit(service.alice)
    run(service, job["id"], 2)
    dataset = upload(service.alice, npz(X=np.ones((20, 3)), y=np.arange(20) % 2), name="alices-data").json()
    return {"job_id": job["id"], "dataset_id": dataset["id"], "name": "learning_rate"}


# Path parameters that name a tenant's resource; a route with any other parameter must be added here
# (or to GLOBAL_ROUTES, when it serves no tenant data) or the test below fails.
TENANT_PARAMETERS = {"job_id", "dataset_id", "name"}
GLOBAL_ROUTES = {
    ("GET", "/v1/templates/{name}"),
    ("GET", "/static/{path:path}"),
    ("GET", "/docs-assets/{path:path}"),
}


NOBODYS = {"job_id": "0" * 32, "dataset_id": "1" * 32, "name": "learning_rate"}


def _without_ids(text: str, ids: dict[str, str]) -> str:
    return text.replace(ids["job_id"], "<job>").replace(ids["dataset_id"], "<dataset>")


_REQUIRED = {
    "/v1/jobs/{job_id}/export": ("which=last&to=npz", None),
    "/v1/jobs/{job_id}/training-examples": ("rows=0", None),
    "/v1/jobs/{job_id}/continue": ("", {"iterations": 1}),
}


def test_every_route_with_an_id_is_404_for_another_tenant(service):
    mine = _alice_has_everything(service)
    attacked = []
    for method, path in routes(service.app):
        if "{" not in path or (method, path) in GLOBAL_ROUTES:
            continue
        names = {part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")}
        assert names <= TENANT_PARAMETERS, f"new route {method} {path}: say what its {names} refer to"
        concrete, missing = path, path
        for name in names:
            concrete = concrete.replace(f"{{{name}}}", mine[name])
            missing = missing.replace(f"{{{name}}}", NOBODYS[name])
        # What a route needs to get past its own checks to the tenant's (a 422 would say nothing).
        needs, body = _REQUIRED.get(path, ("", None))
        for query in ("", "format=npy", "format=csv", "meta_iter=1"):
            query = "?" + "&".join(q for q in (needs, query) if q) if needs or query else ""
            reply = service.bob.request(method, concrete + query, json=body)
            assert reply.status_code == 404, (method, concrete + query, reply.status_code)
            # Word for word what a nonexistent id gets: nothing tells bob that alice's id exists.
            nothing = service.bob.request(method, missing + query, json=body)
            assert _without_ids(reply.text, mine) == _without_ids(nothing.text, NOBODYS), (method, path)
        attacked.append((method, path))
    assert sorted(attacked) == [
        ("DELETE", "/v1/datasets/{dataset_id}"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("GET", "/v1/datasets/{dataset_id}"),
        ("GET", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/export"),
        ("GET", "/v1/jobs/{job_id}/hyperparameters"),
        ("GET", "/v1/jobs/{job_id}/hyperparameters/{name}"),
        ("GET", "/v1/jobs/{job_id}/steps"),
        ("GET", "/v1/jobs/{job_id}/training-examples"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("POST", "/v1/jobs/{job_id}/continue"),
        ("POST", "/v1/jobs/{job_id}/finish"),
        ("POST", "/v1/jobs/{job_id}/heartbeat"),
        ("POST", "/v1/jobs/{job_id}/resume"),
        ("POST", "/v1/jobs/{job_id}/steps"),
    ]
    job = service.alice.get(f"/v1/jobs/{mine['job_id']}").json()
    assert job["status"] == "succeeded" and job["meta_iter"] == 2, (
        "bob's DELETE, cancel, continue changed nothing"
    )
    assert service.alice.get(f"/v1/datasets/{mine['dataset_id']}").status_code == 200


def test_no_route_without_an_id_shows_another_tenants_data(service):
    mine = _alice_has_everything(service)
    secrets_of_alice = (mine["job_id"], mine["dataset_id"], "alices-data")
    for method, path in routes(service.app):
        if "{" in path or method != "GET":
            continue
        reply = service.bob.get(path)
        assert reply.status_code == 200, (path, reply.status_code)  # /readyz too: the broker is a file
        assert not any(s in reply.text for s in secrets_of_alice), path
    spec = {**TINY_SPEC, "dataset": {"id": mine["dataset_id"], "train": 10, "valid": 5}}
    reply = service.bob.post("/v1/jobs", json=spec)
    assert reply.status_code == 422 and "no dataset with id" in reply.text
    reply = service.bob.post("/v1/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "shared-key"})
    other = service.alice.post("/v1/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "shared-key"})
    assert reply.status_code == other.status_code == 201, "idempotency keys are per tenant"
    assert reply.json()["id"] != other.json()["id"]


# ---- floods and sizes --------------------------------------------------------------------------


_RECORDER_WRITES = ("steps", "heartbeat", "finish", "resume")  # a library run's (api.routes.external)


def test_every_post_route_is_rate_limited_with_retry_after(service):
    mine = _alice_has_everything(service)
    posts = [path for method, path in routes(service.app) if method == "POST"]
    assert posts, "no POST routes found"
    bodies = {
        "/v1/jobs": {"json": TINY_SPEC},
        "/v1/datasets": {
            "files": {"file": ("d.npz", npz(X=np.ones((20, 3)), y=np.arange(20) % 2))},
            "data": {"name": "d"},
        },
    }
    own_run = {"name": "mine", "model": {"kind": "own"}, "meta": {"iterations": 2}}
    bodies["/v1/jobs/external"] = {"json": own_run}
    bodies["/v1/jobs/{job_id}/steps"] = {"json": {"meta_iter": 0}}
    bodies["/v1/jobs/{job_id}/finish"] = {"json": {"status": "succeeded"}}
    bodies["/v1/jobs/{job_id}/continue"] = {"json": {"iterations": 1}}
    # the first two answers of each route, within its budget: what that route answers anyway (alice's
    # job is a worker's, so a library run's writes are 409)
    allowed = {
        "/v1/jobs": [201, 201],
        "/v1/datasets": [201, 201],
        "/v1/jobs/{job_id}/cancel": [409, 409],
        "/v1/jobs/{job_id}/continue": [202, 409],  # queued again: a second continue waits for its end
        "/v1/jobs/external": [201, 201],
        **{f"/v1/jobs/{{job_id}}/{write}": [409, 409] for write in _RECORDER_WRITES},
    }
    assert sorted(posts) == sorted(allowed)
    for path in posts:
        app = create_app(service.settings.model_copy(update={"post_rate_limit": 2}), enqueue=lambda _: None)
        concrete = path.replace("{job_id}", mine["job_id"])
        with TestClient(app, headers={"Authorization": f"Bearer {service.keys['alice']}"}) as client:
            start = time.monotonic()
            answers = [client.post(concrete, **bodies.get(path, {})) for _ in range(3)]
            elapsed = time.monotonic() - start
        assert [a.status_code for a in answers[:2]] == allowed[path], (path, [a.text for a in answers[:2]])
        refused = answers[2]
        assert refused.status_code == 429, (path, [a.status_code for a in answers])
        # the first POST frees its slot of the 60 s window: Retry-After is the rest of it, rounded up
        assert 60 - elapsed - 0.01 <= int(refused.headers["retry-after"]) <= 60
        assert "at most 2 POSTs per minute" in refused.json()["detail"]


def test_oversized_bodies_are_413_on_every_post_route_before_the_handler_runs(service):
    mine = _alice_has_everything(service)
    before = service.alice.get("/v1/jobs").json()["items"]
    big_json = b'{"name": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    for method, path in routes(service.app):
        if method != "POST":
            continue
        concrete = path.replace("{job_id}", mine["job_id"])
        if path == "/v1/datasets":
            limit = service.settings.max_upload_bytes
            reply = upload(service.alice, b"\0" * (limit + 128 * 1024))
        elif path == "/v1/jobs/{job_id}/steps":  # a library run's hyperparameters: a larger cap
            reply = post_raw(service.alice, concrete, b'{"name": "' + b"x" * MAX_STEP_BYTES + b'"}')
        else:
            reply = post_raw(service.alice, concrete, big_json)
        assert reply.status_code == 413 and "limit" in reply.json()["detail"], (path, reply.status_code)
    assert service.alice.get("/v1/jobs").json()["items"] == before


# ---- browsers ------------------------------------------------------------------------------------


def test_cross_origin_requests_get_no_cors_headers_by_default(service):
    evil = {"Origin": "https://evil.example"}
    for method, path in routes(service.app):
        if "{" in path:
            continue
        reply = service.alice.request(method, path, headers=evil)
        assert not any(h.startswith("access-control-") for h in reply.headers), (method, path)


def test_a_cross_site_simple_post_cannot_submit_a_job_even_with_auth_off(service):
    """A web page can make a browser POST text/plain or a form anywhere without a preflight. With
    auth off (the local default) that would reach the API: the Origin check refuses it (403), and
    even without an Origin a spec must be application/json (415)."""
    app = create_app(service.settings.model_copy(update={"auth": "off"}), enqueue=lambda _: None)
    with TestClient(app) as local:
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            body = json.dumps(TINY_SPEC)
            reply = post_raw(local, "/v1/jobs", body, content_type, Origin="https://evil.example")
            assert reply.status_code == 403 and "access-control-allow-origin" not in reply.headers
            assert post_raw(local, "/v1/jobs", body, content_type).status_code == 415
        assert local.get("/v1/jobs").json()["items"] == []


def test_with_auth_off_cross_site_posts_and_deletes_are_403(service):
    """A form on another site can POST to 127.0.0.1 without a preflight (cancel has no body, an
    upload is multipart): with no key to check, the Origin header is what tells them apart."""
    local_settings = service.settings.model_copy(
        update={"auth": "off", "cors_origins": ["https://ok.example"]}
    )
    app = create_app(local_settings, enqueue=lambda _: None)
    dataset = {
        "files": {"file": ("d.npz", npz(X=np.ones((20, 3)), y=np.arange(20) % 2))},
        "data": {"name": "d"},
    }
    with TestClient(app) as local:
        job = submit(local)
        for origin in ("https://evil.example", "http://localhost.evil.example", "null"):
            evil = {"Origin": origin}
            reply = local.post(f"/v1/jobs/{job['id']}/cancel", headers=evil)
            assert reply.status_code == 403 and "REVTUNE_CORS_ORIGINS" in reply.json()["detail"], origin
            assert local.post("/v1/datasets", headers=evil, **dataset).status_code == 403
            assert local.delete(f"/v1/jobs/{job['id']}", headers=evil).status_code == 403
            assert local.get("/v1/jobs", headers=evil).status_code == 200, "reads are CORS's business"
        assert local.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        assert local.get("/v1/datasets").json()["items"] == []
        assert (
            local.post("/v1/datasets", headers={"Origin": "http://localhost"}, **dataset).status_code == 201
        )
        assert (
            local.post("/v1/datasets", headers={"Origin": "https://ok.example"}, **dataset).status_code == 201
        )
        assert local.post("/v1/datasets", **dataset).status_code == 201, "no Origin: a script, not a browser"
        assert (
            local.post(f"/v1/jobs/{job['id']}/cancel", headers={"Origin": "http://localhost"}).status_code
            == 202
        )
    # With auth on a browser has no key to attach, and the guard is not installed.
    reply = service.alice.post("/v1/jobs", json=TINY_SPEC, headers={"Origin": "https://evil.example"})
    assert reply.status_code == 201


def test_with_auth_off_a_dns_rebound_host_is_refused_reads_and_writes(service):
    """A page on evil.example that rebinds its DNS to 127.0.0.1 is same-origin to the browser, so the
    Origin check passes; the Host header still says evil.example, and is refused (400)."""
    local_settings = service.settings.model_copy(update={"auth": "off", "allowed_hosts": ["revtune.lan"]})
    app = create_app(local_settings, enqueue=lambda _: None)
    with TestClient(app) as local:
        job = submit(local)
        rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
        for method, path in (("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job['id']}"), ("GET", "/")):
            reply = local.request(method, path, headers=rebound)
            assert reply.status_code == 400 and "REVTUNE_ALLOWED_HOSTS" in reply.json()["detail"], path
        assert local.post(f"/v1/jobs/{job['id']}/cancel", headers=rebound).status_code == 400
        assert local.post("/v1/jobs", json=TINY_SPEC, headers=rebound).status_code == 400
        assert local.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        assert len(local.get("/v1/jobs").json()["items"]) == 1
        for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "127.0.0.1", "revtune.lan:80"):
            assert local.get("/v1/jobs", headers={"Host": host}).status_code == 200, host
        for host in ("localhost.evil.example", "127.0.0.1.nip.io", "[::2]:8000"):
            assert local.get("/v1/jobs", headers={"Host": host}).status_code == 400, host
    # With auth on every request needs a key anyway, and the guard is not installed.
    assert service.alice.get("/v1/jobs", headers={"Host": "evil.example"}).status_code == 200


# ---- logs ----------------------------------------------------------------------------------------


def test_api_keys_never_appear_in_the_logs(service, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # everything, SQLAlchemy's statements and parameters included
    with service.sessions() as s:
        key_id, key = repository.create_api_key(s, "carol")
        s.commit()
    secret = repository.parse_api_key(key)[1]
    carol = TestClient(service.app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)
    assert carol.get("/v1/jobs").status_code == 200
    assert carol.post("/v1/jobs", json=TINY_SPEC).status_code == 201
    assert service.anonymous.get("/v1/jobs", headers={"X-API-Key": key + "x"}).status_code == 401

    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(repository, "list_datasets", boom)
    crashed = carol.get("/v1/datasets")
    assert crashed.status_code == 500 and key not in crashed.text
    with service.sessions() as s:
        repository.revoke_api_key(s, key_id)
        s.commit()
    assert carol.get("/v1/jobs").status_code == 401
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert "unhandled error" in logged, "the log was captured"
    assert secret not in logged and key not in logged


# ---- production settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"database_url": "postgresql+psycopg://revtune:post%67res@db/revtune"},  # URL-encoded "postgres"
        {"database_url": "postgresql+psycopg://revtune:REVTUNE@db/revtune"},
        {"database_url": "postgresql+psycopg://revtune@db/revtune?password=revtune"},
        {"broker_url": "redis://redis:6379/0?password=redis"},
        {"broker_url": "amqp://guest:guest@rabbit:5672//"},
        {"broker_url": "sqla+postgresql://revtune:revtune@db/revtune"},
        {"database_url": "postgresql+psycopg://revtune:@db/revtune"},
    ],
    ids=["url-encoded", "upper-case", "query-password", "redis-query", "amqp-guest", "sqla-broker", "empty"],
)
def test_production_refuses_default_passwords_however_they_are_written(tmp_path, changes):
    with pytest.raises(ValidationError, match="well-known default password"):
        Settings(env="production", data_dir=tmp_path, **changes)


def test_production_from_the_environment_refuses_to_start_the_app(tmp_path, monkeypatch):
    monkeypatch.setenv("REVTUNE_ENV", "production")
    monkeypatch.setenv("REVTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REVTUNE_AUTH", "off")
    with pytest.raises(ValidationError, match="REVTUNE_AUTH=off"):
        Settings()
    monkeypatch.setenv("REVTUNE_AUTH", "on")
    monkeypatch.setenv("REVTUNE_DATABASE_URL", "postgresql+psycopg://revtune:revtune@postgres:5432/revtune")
    with pytest.raises(ValidationError, match="REVTUNE_DATABASE_URL"):
        Settings()
    assert {"guest", "revtune", "postgres", "password"} <= DEFAULT_PASSWORDS
    monkeypatch.setenv("REVTUNE_DATABASE_URL", "postgresql+psycopg://revtune:x7-Qp9-kL2@postgres/revtune")
    assert Settings().env == "production"


def test_a_multipart_upload_is_not_parsed_into_memory_beyond_the_cap(service):
    """Declared sizes are refused before reading; the form parser never sees the body."""
    limit = service.settings.max_upload_bytes
    body = io.BytesIO(b"--x\r\n" + b"a" * (limit + 70 * 1024))
    reply = service.alice.post(
        "/v1/datasets", content=body.getvalue(), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert reply.status_code == 413
