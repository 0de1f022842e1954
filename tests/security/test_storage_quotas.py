"""Per-tenant quotas (docs/API.md, "Quotas"): jobs kept and bytes of uploaded datasets. Past either the
API answers 409 naming the limit, the use and what to delete; deleting frees the quota at once."""

from __future__ import annotations

import io

import numpy as np
from api_support import TINY_SPEC, submit


def xy(seed: int, rows: int = 60) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    np.savez(buffer, X=rng.normal(size=(rows, 4)), y=np.arange(rows) % 3)
    return buffer.getvalue()


def upload(client, data: bytes, name: str = "mine"):
    return client.post(
        "/v1/datasets", files={"file": ("data.npz", data, "application/octet-stream")}, data={"name": name}
    )


def files_in(service) -> list[str]:
    folder = service.settings.datasets_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def with_settings(service, **changes) -> None:
    service.app.state.settings = service.settings.model_copy(update=changes)


def test_the_job_quota_refuses_one_more_job_until_one_is_deleted(service):
    with_settings(service, max_jobs_per_tenant=2)
    first = submit(service.alice, **{"Idempotency-Key": "first"})
    second = submit(service.alice)

    reply = service.alice.post("/v1/jobs", json=TINY_SPEC)
    assert reply.status_code == 409, reply.text
    detail = reply.json()["detail"]
    assert "job quota reached" in detail and "REVTUNE_MAX_JOBS_PER_TENANT allows 2" in detail
    assert "keeps 2 jobs" in detail
    assert "all are queued or running: cancel some, then delete them" in detail
    assert len(service.enqueued) == 2, "a refused job is neither stored nor sent to the workers"
    assert len(service.alice.get("/v1/jobs").json()["items"]) == 2
    # a repeat of an existing job is no new job; another tenant has its own quota
    again = service.alice.post("/v1/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "first"})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    submit(service.bob)

    # a finished job is named as the one to delete
    assert service.alice.post(f"/v1/jobs/{first['id']}/cancel").status_code == 202
    reply = service.alice.post("/v1/jobs", json=TINY_SPEC)
    assert reply.status_code == 409
    detail = reply.json()["detail"]
    assert "1 of them finished" in detail and f"oldest first: {first['id']}" in detail
    assert "DELETE /v1/jobs/{id}" in detail and second["id"] not in detail

    assert service.alice.delete(f"/v1/jobs/{first['id']}").status_code == 204
    third = submit(service.alice)
    assert service.alice.post("/v1/jobs", json=TINY_SPEC).status_code == 409
    assert {j["id"] for j in service.alice.get("/v1/jobs").json()["items"]} == {second["id"], third["id"]}


def test_the_dataset_quota_refuses_an_upload_past_its_bytes_until_one_is_deleted(service):
    data, other = xy(0), xy(1)
    size = len(data)
    assert len(other) == size
    with_settings(service, max_dataset_bytes_per_tenant=size + size // 2)  # one fits, two do not

    reply = upload(service.alice, data, name="first")
    assert reply.status_code == 201, reply.text
    first = reply.json()
    assert first["size_bytes"] == size

    reply = upload(service.alice, other, name="second")
    assert reply.status_code == 409, reply.text
    detail = reply.json()["detail"]
    assert "dataset quota reached" in detail
    assert f"REVTUNE_MAX_DATASET_BYTES_PER_TENANT allows {size + size // 2}" in detail
    assert f"datasets take {size} bytes" in detail and f"this upload of {size} bytes" in detail
    assert f"DELETE /v1/datasets/{{id}}; largest first: {first['id']} ('first'" in detail
    assert files_in(service) == [f"{first['id']}.npz"], "a refused upload leaves no file behind"
    assert [d["id"] for d in service.alice.get("/v1/datasets").json()["items"]] == [first["id"]]
    assert upload(service.bob, other).status_code == 201, "another tenant has its own quota"

    # exactly full: refused before the upload is read, with the same advice
    with_settings(service, max_dataset_bytes_per_tenant=size)
    reply = upload(service.alice, other, name="second")
    assert reply.status_code == 409 and "it is full" in reply.json()["detail"]
    assert first["id"] in reply.json()["detail"]

    assert service.alice.delete(f"/v1/datasets/{first['id']}").status_code == 204
    reply = upload(service.alice, other, name="second")
    assert reply.status_code == 201, reply.text
    assert upload(service.alice, data, name="third").status_code == 409
