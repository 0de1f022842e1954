"""``/v1/datasets``: validated ``.npz`` uploads, size limits, and nothing ever half-written."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
from api_support import TINY_SPEC, problems, submit

DATASET_FIELDS = {
    "id",
    "name",
    "n_train",
    "n_valid",
    "n_test",
    "n_features",
    "n_classes",
    "sha256",
    "created_at",
}


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def xy(rows: int = 60, features: int = 4, classes: int = 3) -> bytes:
    rng = np.random.default_rng(0)
    return npz(X=rng.normal(size=(rows, features)), y=np.arange(rows) % classes)


def upload(client, data: bytes, name: str = "mine"):
    return client.post(
        "/v1/datasets", files={"file": ("data.npz", data, "application/octet-stream")}, data={"name": name}
    )


def files_in(service) -> list[str]:
    folder = service.settings.datasets_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_upload_list_get_use_and_delete(service):
    data = xy()
    reply = upload(service.alice, data)
    assert reply.status_code == 201, reply.text
    ds = reply.json()
    assert DATASET_FIELDS <= set(ds)
    assert (ds["n_train"], ds["n_valid"], ds["n_test"], ds["n_features"], ds["n_classes"]) == (60, 0, 0, 4, 3)
    assert ds["sha256"] == hashlib.sha256(data).hexdigest() and ds["layout"] == "xy"
    assert files_in(service) == [f"{ds['id']}.npz"]
    assert service.settings.dataset_path(ds["id"]).read_bytes() == data
    assert service.alice.get("/v1/datasets").json() == {"items": [ds]}
    assert service.alice.get(f"/v1/datasets/{ds['id']}").json() == ds

    spec = {**TINY_SPEC, "dataset": {"id": ds["id"], "train": 40, "valid": 20, "batch_size": 10}}
    job = submit(service.alice, spec)
    assert service.alice.delete(f"/v1/datasets/{ds['id']}").status_code == 409, "a queued job uses it"
    service.alice.post(f"/v1/jobs/{job['id']}/cancel")
    too_many = {**spec, "dataset": {"id": ds["id"], "train": 50, "valid": 20}}
    assert "only 60" in problems(service.alice.post("/v1/jobs", json=too_many))["body.dataset.train"]

    assert service.alice.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert service.alice.get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert files_in(service) == []


def test_a_pre_split_upload(service):
    rng = np.random.default_rng(1)
    data = npz(
        X_train=rng.normal(size=(30, 5)).astype(np.float32),
        y_train=np.arange(30) % 2,
        X_valid=rng.normal(size=(10, 5)),
        y_valid=np.arange(10) % 4,
        X_test=rng.normal(size=(7, 5)),
        y_test=np.zeros(7, dtype=np.uint8),
    )
    ds = upload(service.alice, data, name="split set").json()
    assert (ds["n_train"], ds["n_valid"], ds["n_test"], ds["n_classes"], ds["layout"]) == (
        30,
        10,
        7,
        4,
        "splits",
    )
    job = submit(service.alice, {**TINY_SPEC, "dataset": {"id": ds["id"], "batch_size": 10}})
    assert job["spec"]["dataset"] == {"id": ds["id"], "batch_size": 10, "center": True, "stratify": False}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"this is not a zip file", "not a readable .npz"),
        (xy()[: len(xy()) // 2], "not a readable .npz"),
        (npz(X=np.ones((5, 2))), "expected X and y"),
        (npz(X=np.ones((5, 2)), y=np.zeros(5, dtype=int), extra=np.ones(1)), "expected X and y"),
        (npz(X=np.array([[1.0, np.nan], [0.0, 1.0]]), y=np.array([0, 1])), "NaN or infinite"),
        (npz(X=np.array([[1.0, np.inf], [0.0, 1.0]]), y=np.array([0, 1])), "NaN or infinite"),
        (npz(X=np.ones((4, 2), dtype=int), y=np.array([0, 1, 0, 1])), "2-D float"),
        (npz(X=np.ones(4), y=np.array([0, 1, 0, 1])), "2-D float"),
        (npz(X=np.ones((4, 2)), y=np.array([0.0, 1.0, 0.0, 1.0])), "integer array"),
        (npz(X=np.ones((4, 2)), y=np.array([0, -1, 0, 1])), "negative label"),
        (npz(X=np.ones((4, 2)), y=np.array([0, 1, 0])), "3 labels for the 4 rows"),
        (npz(X=np.ones((4, 2)), y=np.zeros(4, dtype=int)), "1 classes"),
        (npz(X=np.array(["a", "b"], dtype=object).reshape(2, 1), y=np.array([0, 1])), "not a readable .npz"),
    ],
)
def test_bad_uploads_are_422_on_file_and_leave_nothing_behind(service, data, says):
    found = problems(upload(service.alice, data))
    assert says in found["body.file"], found
    assert files_in(service) == [] and service.alice.get("/v1/datasets").json() == {"items": []}


def test_oversized_uploads_are_413_and_leave_nothing_behind(service):
    limit = service.settings.max_upload_bytes
    big = npz(X=np.zeros((limit // 8 // 4 + 10, 4)), y=np.zeros(limit // 8 // 4 + 10, dtype=np.int8))
    assert len(big) > limit
    reply = upload(service.alice, big)
    assert reply.status_code == 413 and "limit" in reply.json()["detail"]
    assert files_in(service) == []
    # Just over the file limit but inside the multipart allowance: refused while copying.
    reply = upload(service.alice, b"\0" * (limit + 10))
    assert reply.status_code == 413 and files_in(service) == []


def test_a_zip_bomb_is_refused_before_it_is_inflated(service):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", b"\0" * (service.settings.max_upload_bytes * 9))
        archive.writestr("y.npy", b"\0")
    assert "uncompressed" in problems(upload(service.alice, buffer.getvalue()))["body.file"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", ".hidden", "", "x" * 101, "a\\b", "a..b"])
def test_unsafe_names_are_refused(service, name):
    assert "body.name" in problems(upload(service.alice, xy(), name=name))
    assert files_in(service) == []


def test_upload_without_a_file_or_name_names_the_missing_field(service):
    assert "body.file" in problems(service.alice.post("/v1/datasets", data={"name": "x"}))
    reply = service.alice.post("/v1/datasets", files={"file": ("d.npz", xy(), "application/octet-stream")})
    assert "body.name" in problems(reply)
