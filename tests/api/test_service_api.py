"""Health, readiness, metrics, OpenAPI, templates, the error map, start-up checks, and the enqueue."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from api_support import TINY_SPEC, TestClient, submit
from conftest import make_settings
from pydantic import SecretStr
from sqlalchemy import text

import migrations
from api import create_app
from api.app import SchemaOutOfDate
from hypercore import DESCRIPTION_MODULES as JAX_FREE_HYPERCORE
from jobs import templates
from jobs.db import session_factory


def test_healthz_readyz_and_metrics(service):
    assert service.anonymous.get("/healthz").json() == {"status": "ok"}
    ready = service.anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "database": "ok", "broker": "ok"}
    submit(service.alice)
    metrics = service.anonymous.get("/metrics").text
    assert 'revtune_jobs{status="queued"} 1.0' in metrics
    assert 'revtune_http_requests_total{method="POST",route="/v1/jobs",status="201"} 1.0' in metrics


def test_metrics_need_the_scrape_token_when_one_is_set(service):
    settings = service.settings.model_copy(update={"metrics_token": SecretStr("s3cret-scrape")})
    guarded = create_app(settings, enqueue=lambda job_id: None)
    with TestClient(guarded) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-scrape"}):
            reply = client.get("/metrics", headers=headers)
            assert reply.status_code == 401 and "REVTUNE_METRICS_TOKEN" in reply.text, headers
            assert "revtune_jobs" not in reply.text
        reply = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
        assert reply.status_code == 200 and "revtune_jobs{" in reply.text
        assert client.get("/healthz").status_code == 200, "probes stay open"


def test_readyz_is_503_with_an_unreachable_database_or_broker(tmp_path):
    settings = make_settings("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2", tmp_path)
    with TestClient(create_app(settings, enqueue=lambda job_id: None)) as client:
        reply = client.get("/readyz")
        assert reply.status_code == 503 and reply.json()["database"] == "unavailable"
        assert client.get("/healthz").status_code == 200
        # Every route that needs the database answers 503, not 500 (auth off: no key lookup first).
    off = settings.model_copy(update={"auth": "off"})
    with TestClient(create_app(off, enqueue=lambda job_id: None)) as client:
        for reply in (client.get("/v1/jobs"), client.post("/v1/jobs", json=TINY_SPEC)):
            assert reply.status_code == 503 and "retry" in reply.json()["detail"]
            assert reply.headers["retry-after"] == "5"
    broken_broker = make_settings(f"sqlite:///{tmp_path / 'ok.db'}", tmp_path)
    migrations.upgrade(broken_broker.database_url)
    app = create_app(
        broken_broker.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}), enqueue=lambda job_id: None
    )
    with TestClient(app) as client:
        reply = client.get("/readyz")
        assert reply.status_code == 503 and reply.json() == {
            "ready": False,
            "database": "ok",
            "broker": "unavailable",
        }


def test_an_old_schema_stops_start_up_with_the_command_to_run(tmp_path):
    settings = make_settings(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    with pytest.raises(SchemaOutOfDate, match="revtune db upgrade"):
        with TestClient(create_app(settings, enqueue=lambda job_id: None)):
            pass
    migrations.upgrade(settings.database_url)
    with session_factory(settings)() as s:
        s.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
        s.commit()
    with pytest.raises(SchemaOutOfDate, match="newer than this revtune"):
        with TestClient(create_app(settings, enqueue=lambda job_id: None)):
            pass


def test_an_unexpected_error_is_a_500_that_leaks_nothing(service, caplog):
    @service.app.get("/v1/boom")
    def boom():
        raise RuntimeError("secret internals: password=hunter2")

    with TestClient(service.app, raise_server_exceptions=False) as client:
        reply = client.get("/v1/boom")
    assert reply.status_code == 500
    assert "hunter2" not in reply.text and "reference" in reply.json()["detail"]
    assert "hunter2" in caplog.text, "the details go to the log"


def test_openapi_documents_every_call_of_the_contract(service):
    schema = service.anonymous.get("/openapi.json").json()
    paths = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert {
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/steps"),
        ("GET", "/v1/jobs/{job_id}/hyperparameters"),
        ("GET", "/v1/jobs/{job_id}/hyperparameters/{name}"),
        ("POST", "/v1/datasets"),
        ("GET", "/v1/datasets"),
        ("GET", "/v1/datasets/{dataset_id}"),
        ("DELETE", "/v1/datasets/{dataset_id}"),
        ("GET", "/v1/templates"),
        ("GET", "/v1/templates/{name}"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    } <= paths
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/JobSpec"}
    job_spec = schema["components"]["schemas"]["JobSpec"]
    assert "training" in job_spec["properties"] and job_spec["additionalProperties"] is False
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(schema)))
    assert refs <= set(schema["components"]["schemas"]), "every reference resolves"
    docs = service.anonymous.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    # served from the package, never a CDN: the page works without a network
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', docs.text))
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in docs.text
        assert service.anonymous.get(f"/docs-assets/{asset}").status_code == 200
    assert service.anonymous.get("/docs-assets/../../../etc/passwd").status_code == 404
    assert service.anonymous.get("/redoc").status_code == 404


def test_templates_list_and_get(service):
    items = service.alice.get("/v1/templates").json()["items"]
    assert [t["name"] for t in items] == templates.names()
    assert all(t["description"] for t in items)
    assert service.alice.get("/v1/templates/lr-schedule-mnist").json() == templates.get("lr-schedule-mnist")
    reply = service.alice.get("/v1/templates/nope")
    assert reply.status_code == 404 and "chaos-sweep" in reply.json()["detail"]


def test_importing_the_api_and_the_enqueue_does_not_import_jax():
    code = (
        "import sys, json, api, api.app, worker.enqueue, worker.app; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jax', 'jaxlib', 'optax', 'hypercore'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The API reads the spec's vocabulary from hypercore's JAX-free description half, nothing else.
    assert set(json.loads(done.stdout)) <= JAX_FREE_HYPERCORE


def test_enqueue_job_sends_only_the_id_to_the_revtune_queue(redis_url, tmp_path):
    import redis

    from worker.app import QUEUE, RUN_JOB_TASK
    from worker.enqueue import enqueue_job

    settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", tmp_path).model_copy(
        update={"broker_url": redis_url}
    )
    enqueue_job("job-123", settings)
    messages = redis.Redis.from_url(redis_url).lrange(QUEUE, 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert message["headers"]["task"] == RUN_JOB_TASK
    assert message["headers"]["argsrepr"] == "['job-123']"


def test_enqueue_raises_a_clear_error_when_the_broker_is_down(tmp_path):
    from worker.enqueue import EnqueueError, enqueue_job

    settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", tmp_path).model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0"}
    )
    with pytest.raises(EnqueueError, match="job-9"):
        enqueue_job("job-9", settings)
