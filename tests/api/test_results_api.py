"""Steps and hyperparameters over REST, seeded through the worker's repository calls."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from api_support import LAYERS, TINY_SPEC, learning_rates, problems, run, submit

from jobs.models import Dataset

STEP_FIELDS = {
    "meta_iter",
    "objective",
    "train_loss",
    "valid_loss",
    "valid_error",
    "test_loss",
    "test_error",
    "hypergrad_norm",
    "elapsed_s",
    "reversal_exact",
}


def test_steps_poll_with_the_after_cursor(service):
    job = submit(service.alice)
    assert service.alice.get(f"/v1/jobs/{job['id']}/steps").json() == {"items": [], "next_after": None}
    run(service, job["id"], 3, objectives=[0.9, 0.4, 0.6])
    page = service.alice.get(f"/v1/jobs/{job['id']}/steps", params={"limit": 2}).json()
    assert [s["meta_iter"] for s in page["items"]] == [0, 1] and page["next_after"] == 1
    assert set(page["items"][0]) == STEP_FIELDS
    assert page["items"][0]["hypergrad_norm"] is None, "NaN is stored and served as null"
    rest = service.alice.get(f"/v1/jobs/{job['id']}/steps", params={"after": 1, "limit": 2}).json()
    assert [s["meta_iter"] for s in rest["items"]] == [2] and rest["next_after"] is None
    finished = service.alice.get(f"/v1/jobs/{job['id']}").json()
    assert finished["status"] == "succeeded" and finished["meta_iter"] == 3
    assert finished["best"] == {"objective": 0.4, "meta_iter": 1}
    assert "query.after" in problems(service.alice.get(f"/v1/jobs/{job['id']}/steps", params={"after": "x"}))


def test_hyperparameter_listing_follows_the_latest_meta_iteration(service):
    job = submit(service.alice)
    empty = service.alice.get(f"/v1/jobs/{job['id']}/hyperparameters").json()
    tiny_shapes = {"layer0.W": [64, 8], "layer0.b": [8], "layer1.W": [8, 10], "layer1.b": [10]}
    assert empty == {"meta_iter": 0, "example_shape": [8, 8, 1], "parameter_shapes": tiny_shapes, "items": []}
    run(service, job["id"], 2)
    listing = service.alice.get(f"/v1/jobs/{job['id']}/hyperparameters").json()
    assert listing["meta_iter"] == 2
    assert listing["items"] == [
        {"name": "init_scale", "shape": [], "axes": [], "labels": {}, "learned": False},
        {
            "name": "learning_rate",
            "shape": [5, 4],
            "axes": ["step", "layer"],
            "labels": {"step": [0, 1, 2, 3, 4], "layer": LAYERS},
            "learned": True,
        },
    ]
    first = service.alice.get(f"/v1/jobs/{job['id']}/hyperparameters", params={"meta_iter": 1}).json()
    assert first["meta_iter"] == 1
    reply = service.alice.get(f"/v1/jobs/{job['id']}/hyperparameters", params={"meta_iter": 9})
    assert reply.status_code == 404 and "meta_iter 9" in reply.json()["detail"]


def test_the_listing_gives_the_shape_of_one_example_of_the_jobs_dataset(service):
    """What tells the dashboard an axis of pixels from one of hidden units: a built-in's example
    shape, an upload's ``X.shape[1:]`` (``[n_features]`` for one stored before shapes were kept),
    null once the upload is gone."""
    builtin = submit(service.alice, {**TINY_SPEC, "dataset": {"name": "mnist1d", "train": 100, "valid": 50}})
    url = "/v1/jobs/{}/hyperparameters"
    assert service.alice.get(url.format(builtin["id"])).json()["example_shape"] == [40]

    rng = np.random.default_rng(3)
    data = io.BytesIO()
    np.savez(data, X=rng.normal(size=(40, 6, 5)), y=np.arange(40) % 2)
    files = {"file": ("images.npz", data.getvalue())}
    reply = service.alice.post("/v1/datasets", files=files, data={"name": "images"})
    assert reply.status_code == 201, reply.text
    dataset_id = reply.json()["id"]
    split = {"id": dataset_id, "train": 20, "valid": 10, "batch_size": 10}
    upload = submit(service.alice, {**TINY_SPEC, "dataset": split})
    run(service, upload["id"], 1)
    listing = service.alice.get(url.format(upload["id"])).json()
    assert listing["example_shape"] == [6, 5] and listing["meta_iter"] == 1
    assert listing["parameter_shapes"]["layer0.W"] == [30, 8]

    with service.sessions() as s:
        s.get(Dataset, dataset_id).example_shape = None
        s.commit()
    assert service.alice.get(url.format(upload["id"])).json()["example_shape"] == [30]
    assert service.alice.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    gone = service.alice.get(url.format(upload["id"])).json()
    assert gone["example_shape"] is None and gone["parameter_shapes"] is None and gone["meta_iter"] == 1


def test_the_listing_gives_the_engines_parameter_shapes_of_a_cnn_and_of_a_regression(service):
    """The arrays a ``layer`` axis names, with their shapes as the engine builds them: the conv
    kernels, the dense layers on the pooled feature map, and the output layer's width (the classes,
    or a real target's columns), which the hyperparameters alone do not tell."""
    cnn = {**TINY_SPEC, "model": {"kind": "cnn", "channels": [4, 6], "hidden": [5]}}
    listing = service.alice.get(f"/v1/jobs/{submit(service.alice, cnn)['id']}/hyperparameters").json()
    assert listing["parameter_shapes"] == {
        "conv0.W": [3, 3, 1, 4],
        "conv0.b": [4],
        "conv1.W": [3, 3, 4, 6],
        "conv1.b": [6],
        "layer0.W": [2 * 2 * 6, 5],  # 8x8 pooled twice by 2
        "layer0.b": [5],
        "layer1.W": [5, 10],
        "layer1.b": [10],
    }
    rng = np.random.default_rng(4)
    data = io.BytesIO()
    np.savez(data, X=rng.normal(size=(40, 3)), y=rng.normal(size=(40, 2)))
    reply = service.alice.post(
        "/v1/datasets", files={"file": ("reg.npz", data.getvalue())}, data={"name": "reg"}
    )
    assert reply.status_code == 201, reply.text
    spec = {**TINY_SPEC, "dataset": {"id": reply.json()["id"], "train": 20, "valid": 10, "batch_size": 10}}
    listing = service.alice.get(f"/v1/jobs/{submit(service.alice, spec)['id']}/hyperparameters").json()
    assert listing["example_shape"] == [3]
    assert listing["parameter_shapes"] == {
        "layer0.W": [3, 8],
        "layer0.b": [8],
        "layer1.W": [8, 2],
        "layer1.b": [2],
    }


@pytest.mark.parametrize("meta_iter", [1, 2])
def test_json_npy_and_csv_give_back_the_recorded_float64s(service, meta_iter):
    job = submit(service.alice)
    run(service, job["id"], 2)
    want = learning_rates(meta_iter - 1)
    url = f"/v1/jobs/{job['id']}/hyperparameters/learning_rate"

    body = service.alice.get(url, params={"meta_iter": meta_iter, "format": "json"}).json()
    assert {k: body[k] for k in ("name", "meta_iter", "shape", "axes")} == {
        "name": "learning_rate",
        "meta_iter": meta_iter,
        "shape": [5, 4],
        "axes": ["step", "layer"],
    }
    assert body["labels"]["layer"] == LAYERS
    np.testing.assert_array_equal(np.array(body["values"], dtype=np.float64), want)

    reply = service.alice.get(url, params={"meta_iter": meta_iter, "format": "npy"})
    assert reply.headers["content-type"] == "application/octet-stream"
    assert f"-{meta_iter}.npy" in reply.headers["content-disposition"]
    got = np.load(io.BytesIO(reply.content), allow_pickle=False)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)

    reply = service.alice.get(url, params={"meta_iter": meta_iter, "format": "csv"})
    assert reply.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(reply.text)))
    assert rows[0] == ["step", "layer", "value"] and len(rows) == 1 + 20
    assert rows[1][:2] == ["0", "layer0.W"] and rows[2][:2] == ["0", "layer0.b"]
    np.testing.assert_array_equal(np.array([float(r[2]) for r in rows[1:]]).reshape(5, 4), want)


def test_a_scalar_hyperparameter_and_bad_requests(service):
    job = submit(service.alice)
    run(service, job["id"], 1)
    url = f"/v1/jobs/{job['id']}/hyperparameters"
    assert service.alice.get(f"{url}/init_scale").json()["values"] == 0.1
    assert service.alice.get(f"{url}/init_scale", params={"format": "csv"}).text == "value\n0.1\n"
    reply = service.alice.get(f"{url}/l2")
    assert reply.status_code == 404 and "known: init_scale, learning_rate" in reply.json()["detail"]
    assert "query.format" in problems(service.alice.get(f"{url}/init_scale", params={"format": "xlsx"}))
    assert "query.meta_iter" in problems(service.alice.get(f"{url}/init_scale", params={"meta_iter": -1}))
