"""``GET /v1/jobs/{id}/training-examples?rows=``: the examples behind a per-example result's rows.

The rows ``example_weight`` is labelled with are ``Dataset.train_rows``: what this route reads at a
row must be that training example, uncentred, whatever the shuffle, stratification and layout did;
that is checked against the engine's own reader (`hypercore.arrays`, centring off), for a built-in
and for uploads stored every way ``numpy.savez`` can store them.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from api_support import TINY_SPEC, problems, submit

from api.routes.examples import builtin_rows, upload_rows
from hypercore import arrays


def npz(compressed: bool = False, **named) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **named)
    return buffer.getvalue()


def upload(client, data: bytes) -> dict:
    reply = client.post(
        "/v1/datasets", files={"file": ("data.npz", data, "application/octet-stream")}, data={"name": "x"}
    )
    assert reply.status_code == 201, reply.text
    return reply.json()


def examples(client, job_id: str, rows: str):
    return client.get(f"/v1/jobs/{job_id}/training-examples", params={"rows": rows})


def test_a_builtins_rows_are_its_training_examples_uncentred(service):
    """The digits job's rows, in the order asked (a repeat included), are the raw 8x8 images scaled
    to [0, 1]; and a shuffled, stratified, label-flipped split's ``train_rows`` name its examples."""
    job = submit(service.alice, TINY_SPEC)
    reply = examples(service.alice, job["id"], "12, 40,7,12,1796")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["example_shape"] == [8, 8, 1]
    assert [item["row"] for item in body["items"]] == [12, 40, 7, 12, 1796]
    from sklearn.datasets import load_digits

    raw = load_digits().data / 16.0
    for item in body["items"]:
        np.testing.assert_allclose(np.array(item["x"]), raw[item["row"]].reshape(8, 8, 1), rtol=1e-6)

    noise = {"fraction": 0.4, "seed": 1}
    ds = arrays.load("digits", 200, 100, seed=3, center=False, stratify=True, label_noise=noise)
    shape, found = builtin_rows("digits", ds.train_rows[:30].tolist())
    assert shape == (8, 8, 1)
    for i, r in enumerate(ds.train_rows[:30].tolist()):
        np.testing.assert_array_equal(found[r].ravel(), ds.X_train[i])
    # mnist5k_tasks's pool: 5,000 upright images, then the same turned by 90 degrees
    tasks = arrays.load("mnist5k_tasks", 1000, 100, seed=2, center=False)
    picked = np.r_[0:5, 995:1000]  # the first task's (upright) and the last one's (rotated)
    _, found = builtin_rows("mnist5k_tasks", tasks.train_rows[picked].tolist())
    assert (tasks.train_rows[picked] >= 5000).tolist() == [False] * 5 + [True] * 5
    for i in picked:
        np.testing.assert_array_equal(found[int(tasks.train_rows[i])].ravel(), tasks.X_train[i])


@pytest.mark.parametrize("store", ["stored", "compressed", "fortran", "pre-split"])
def test_an_uploads_rows_are_read_as_stored(service, tmp_path, store):
    """``X`` (``X_train`` when pre-split) at each row, in its own dtype and shape, from a stored, a
    deflated or a Fortran-ordered member; and a shuffled split's ``train_rows`` name its rows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(180, 6, 5)) * 1e3  # float64: JSON gives back the same numbers
    y = np.arange(180) % 3
    if store == "pre-split":
        named = {"X_train": X[:120], "y_train": y[:120], "X_valid": X[120:], "y_valid": y[120:]}
    else:
        named = {"X": np.asfortranarray(X) if store == "fortran" else X, "y": y}
    data = npz(store == "compressed", **named)
    ds = upload(service.alice, data)
    spec = {**TINY_SPEC, "dataset": {"id": ds["id"], "train": 100, "valid": 50, "batch_size": 25}}
    if store == "pre-split":
        spec["dataset"] = {"id": ds["id"], "batch_size": 25}
    job = submit(service.alice, spec)
    rows = [0, 119, 7, 64, 7]
    body = examples(service.alice, job["id"], ",".join(map(str, rows))).json()
    assert body["example_shape"] == [6, 5]
    assert [item["row"] for item in body["items"]] == rows
    for item in body["items"]:
        assert item["x"] == X[item["row"]].tolist()  # as uploaded, uncentred

    path = tmp_path / "data.npz"
    path.write_bytes(data)
    split = {} if store == "pre-split" else {"train": 100, "valid": 50, "shuffle": True}
    loaded = arrays.dataset_from_npz(arrays.read_npz(path), {**split, "center": False}, seed=4)
    shape, found = upload_rows(path, loaded.train_rows.tolist())
    assert shape == (6, 5)
    for i, r in enumerate(loaded.train_rows.tolist()):
        np.testing.assert_array_equal(found[r].ravel().astype(np.float32), loaded.X_train[i])


def test_refusals_name_rows_and_other_tenants_jobs_are_not_found(service):
    job = submit(service.alice, TINY_SPEC)
    url = f"/v1/jobs/{job['id']}/training-examples"
    for rows, says in [
        (",".join(["1"] * 101), "asks for 101 rows; at most 100"),
        ("1,x", "'x' is not a row number"),
        ("-1", "'-1' is not a row number"),
        ("1.5", "'1.5' is not a row number"),
        ("", "give at least one row"),
        ("3,1797", "row 1797 is out of range: the built-in digits has 1797 rows (0..1796)"),
    ]:
        assert says in problems(service.alice.get(url, params={"rows": rows}))["query.rows"], rows
    assert "query.rows" in problems(service.alice.get(url))
    assert "query.rows" in problems(service.alice.get(url, params={"rows": "1," * 1500}))
    assert len(examples(service.alice, job["id"], ",".join(["5"] * 100)).json()["items"]) == 100
    assert service.bob.get(url, params={"rows": "1"}).status_code == 404
    assert examples(service.alice, "0" * 32, "1").status_code == 404
    assert service.anonymous.get(url, params={"rows": "1"}).status_code == 401


def test_a_deleted_upload_and_a_job_without_data_are_409(service):
    X, y = np.random.default_rng(1).normal(size=(160, 4)), np.arange(160) % 2
    ds = upload(service.alice, npz(X=X, y=y))
    spec = {**TINY_SPEC, "dataset": {"id": ds["id"], "train": 100, "valid": 50, "batch_size": 25}}
    job = submit(service.alice, spec)
    assert examples(service.alice, job["id"], "159").json()["items"][0]["x"] == X[159].tolist()
    assert "row 160 is out of range" in problems(examples(service.alice, job["id"], "160"))["query.rows"]
    service.alice.post(f"/v1/jobs/{job['id']}/cancel")
    assert service.alice.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    reply = examples(service.alice, job["id"], "1")
    assert reply.status_code == 409 and "has been deleted" in reply.json()["detail"]

    toy = submit(service.alice, service.alice.get("/v1/templates/toy-figure1").json())
    reply = examples(service.alice, toy["id"], "0")
    assert reply.status_code == 409 and "trains on no dataset" in reply.json()["detail"]
    documented = service.alice.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/training-examples"]
    assert {"404", "409", "422"} <= set(documented["get"]["responses"])
