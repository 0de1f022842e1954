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
    "n_tasks",
    "sha256",
    "created_at",
    "example_shape",
    "target",
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
    assert job["spec"]["dataset"] == {
        "id": ds["id"],
        "batch_size": 10,
        "center": True,
        "stratify": False,
        "resplit": False,
    }


CNN_SPEC = {
    **TINY_SPEC,
    "model": {"kind": "cnn", "channels": [2], "kernel": 3, "pool": 2},
}


@pytest.mark.parametrize(
    ("X", "example_shape"),
    [((30, 6, 6), [6, 6]), ((30, 6, 6, 3), [6, 6, 3]), ((30, 10, 2), [10, 2]), ((30, 5), [5])],
)
def test_uploads_keep_their_example_shape(service, X, example_shape):
    rng = np.random.default_rng(5)
    ds = upload(service.alice, npz(X=rng.normal(size=X), y=np.arange(30) % 3)).json()
    assert ds["example_shape"] == example_shape and ds["target"] == "class"
    assert ds["n_features"] == int(np.prod(example_shape))
    assert service.alice.get(f"/v1/datasets/{ds['id']}").json()["example_shape"] == example_shape


def test_a_cnn_needs_image_shaped_examples_and_a_pooling_that_leaves_a_pixel(service):
    rng = np.random.default_rng(6)
    images = upload(service.alice, npz(X=rng.normal(size=(40, 6, 6)), y=np.arange(40) % 2)).json()
    flat = upload(service.alice, npz(X=rng.normal(size=(40, 36)), y=np.arange(40) % 2)).json()
    split = {"train": 20, "valid": 10, "batch_size": 10}
    job = submit(service.alice, {**CNN_SPEC, "dataset": {"id": images["id"], **split}})
    assert job["spec"]["model"] == {
        "kind": "cnn",
        "channels": [2],
        "kernel": 3,
        "pool": 2,
        "hidden": [],
        "activation": "tanh",
    }

    on_features = problems(
        service.alice.post("/v1/jobs", json={**CNN_SPEC, "dataset": {"id": flat["id"], **split}})
    )
    assert list(on_features) == ["body.model.kind"]
    assert "this dataset's examples have shape (36,)" in on_features["body.model.kind"]
    # 6 -> 3 -> 1 -> 0: the third pooling leaves nothing
    deep = {
        **CNN_SPEC,
        "model": {"kind": "cnn", "channels": [2, 2, 2]},
        "dataset": {"id": images["id"], **split},
    }
    assert (
        "leaves no pixel of the (6, 6) examples"
        in problems(service.alice.post("/v1/jobs", json=deep))["body.model.pool"]
    )
    # a cnn1d reads the same (6, 6) examples as sequences of 6 positions with 6 channels
    seq = {**deep, "model": {"kind": "cnn1d", "channels": [4], "pool": 3}}
    assert submit(service.alice, seq)["spec"]["model"]["kind"] == "cnn1d"


MULTITASK_SPEC = {
    "name": "tasks",
    "model": {"kind": "multitask_mlp", "hidden": [4]},
    "training": {"steps": 3},
    "hyperparameters": {"sharing": {"init": 0.5, "granularity": "layer", "learn": True}},
    "meta": {"iterations": 2},
}


def test_a_multitask_upload_splits_every_task_alike(service):
    """Task ids beside X and y: the spec's counts must divide among the tasks and fit the smallest."""
    rng = np.random.default_rng(2)
    task = np.repeat([0, 1, 2], [30, 25, 40])[rng.permutation(95)]
    data = npz(X=rng.normal(size=(95, 4)), y=np.arange(95) % 3, task=task)
    ds = upload(service.alice, data, name="three tasks").json()
    assert (ds["n_tasks"], ds["n_rows"], ds["layout"]) == (3, 95, "xy")

    def spec(**counts):
        return {**MULTITASK_SPEC, "dataset": {"id": ds["id"], **counts}}

    job = submit(service.alice, spec(train=45, valid=15, test=15))  # 15 + 5 + 5 of each task
    assert job["spec"]["model"]["kind"] == "multitask_mlp"
    uneven = problems(service.alice.post("/v1/jobs", json=spec(train=40, valid=15)))
    assert (
        "this upload splits its 3 tasks alike: must be a multiple of 3, got 40"
        in uneven["body.dataset.train"]
    )
    too_many = problems(service.alice.post("/v1/jobs", json=spec(train=60, valid=18)))  # 26 each
    assert "the smallest task has only 25" in too_many["body.dataset.train"]
    # A one-task upload is not enough for a multitask_mlp, nor a multi-task one for sharing on an mlp.
    plain = upload(service.alice, xy(), name="plain").json()
    assert plain["n_tasks"] == 1
    one_task = {**MULTITASK_SPEC, "dataset": {"id": plain["id"], "train": 30, "valid": 30}}
    assert (
        "upload with task ids" in problems(service.alice.post("/v1/jobs", json=one_task))["body.model.kind"]
    )


def test_a_pre_split_multitask_upload(service):
    rng = np.random.default_rng(3)
    data = npz(
        X_train=rng.normal(size=(12, 4)),
        y_train=np.arange(12) % 2,
        task_train=np.arange(12) % 2,
        X_valid=rng.normal(size=(6, 4)),
        y_valid=np.arange(6) % 2,
        task_valid=np.array([1, 1, 1, 0, 0, 0]),
    )
    ds = upload(service.alice, data).json()
    assert (ds["n_tasks"], ds["n_train"], ds["n_valid"], ds["layout"]) == (2, 12, 6, "splits")
    assert submit(service.alice, {**MULTITASK_SPEC, "dataset": {"id": ds["id"]}})["status"] == "queued"


def test_a_regression_upload_says_target_real_and_refuses_what_needs_classes(service):
    """A float y is a real target (one or more outputs, no classes): it uploads, the dataset says so,
    a job trains on it, and what needs class labels is refused on its own field."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(60, 4))
    ds = upload(service.alice, npz(X=X, y=X @ rng.normal(size=(4, 2)))).json()
    assert DATASET_FIELDS <= set(ds)
    assert (ds["target"], ds["n_classes"], ds["n_outputs"], ds["n_features"], ds["n_train"]) == (
        "real",
        0,
        2,
        4,
        60,
    )
    assert service.alice.get(f"/v1/datasets/{ds['id']}").json() == ds
    one = upload(service.alice, npz(X=X, y=X[:, 0] * 2.0)).json()
    assert (one["target"], one["n_classes"], one["n_outputs"]) == ("real", 0, 1)
    classes = upload(service.alice, xy()).json()
    assert (classes["target"], classes["n_outputs"]) == ("class", 3)

    split = {"id": ds["id"], "train": 40, "valid": 20, "batch_size": 10}
    job = submit(service.alice, {**TINY_SPEC, "dataset": split})
    assert job["spec"]["dataset"]["id"] == ds["id"]
    stratified = {**TINY_SPEC, "dataset": {**split, "stratify": True}}
    found = problems(service.alice.post("/v1/jobs", json=stratified))
    assert list(found) == ["body.dataset.stratify"] and "target is real" in found["body.dataset.stratify"]
    hypers = {
        **TINY_SPEC["hyperparameters"],
        "training_data": {"init": "data", "granularity": "weight", "learn": True},
    }
    found = problems(
        service.alice.post("/v1/jobs", json={**TINY_SPEC, "dataset": split, "hyperparameters": hypers})
    )
    assert list(found) == ["body.hyperparameters.training_data"]
    multitask = {**TINY_SPEC, "dataset": {"id": ds["id"], "train": 40, "valid": 20}}
    multitask["model"] = {"kind": "multitask_mlp", "hidden": [4]}
    assert list(problems(service.alice.post("/v1/jobs", json=multitask))) == ["body.model.kind"]


def _tasks(**splits) -> bytes:
    rng = np.random.default_rng(4)
    arrays = {}
    for split, task in splits.items():
        suffix = "" if split == "xy" else f"_{split}"
        arrays[f"X{suffix}"] = rng.normal(size=(len(task), 3))
        arrays[f"y{suffix}"] = np.arange(len(task)) % 2
        arrays[f"task{suffix}"] = np.asarray(task)
    return npz(**arrays)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"this is not a zip file", "not a readable .npz"),
        (_tasks(xy=[0, 1, 0, 1.0]), "task must be a 1-D integer array"),
        (_tasks(xy=[0, -1, 0, 1]), "negative task id"),
        (_tasks(xy=[0, 0, 0, 0]), "names one task"),
        (_tasks(xy=[0, 2, 0, 2]), "no row has task 1"),
        (npz(X=np.ones((4, 2)), y=np.array([0, 1, 0, 1]), task=np.array([0, 1, 0])), "3 ids for the 4 rows"),
        (_tasks(train=[0, 1, 0, 1], valid=[0, 0, 1]), "task 0 has 2, task 1 has 1"),
        (_tasks(train=[0, 1, 0, 1], valid=[0, 1, 2]), "task_valid holds task 2"),
        (
            npz(
                X_train=np.ones((2, 2)),
                y_train=np.array([0, 1]),
                task_train=np.array([0, 1]),
                X_valid=np.ones((2, 2)),
                y_valid=np.array([0, 1]),
            ),
            "task_train, task_valid",
        ),
        (xy()[: len(xy()) // 2], "not a readable .npz"),
        (npz(X=np.ones((5, 2))), "expected X and y"),
        (npz(X=np.ones((5, 2)), y=np.zeros(5, dtype=int), extra=np.ones(1)), "expected X and y"),
        (npz(X=np.array([[1.0, np.nan], [0.0, 1.0]]), y=np.array([0, 1])), "NaN or infinite"),
        (npz(X=np.array([[1.0, np.inf], [0.0, 1.0]]), y=np.array([0, 1])), "NaN or infinite"),
        (
            npz(X=np.ones((4, 2), dtype=int), y=np.array([0, 1, 0, 1])),
            "must be a float array of (n, d) features",
        ),
        (npz(X=np.ones(4), y=np.array([0, 1, 0, 1])), "must be a float array of (n, d) features"),
        (npz(X=np.ones((4, 2)), y=np.array([0, 1, 0, 1])[:, None]), "integer array"),
        # a float y is a real target: (n,) or (n, k) of finite values, the same kind in every split
        (npz(X=np.ones((4, 2)), y=np.ones((4, 1, 1))), "float array of real targets"),
        (npz(X=np.ones((4, 2)), y=np.array([0.5, np.nan, 1.0, 2.0])), "y holds NaN or infinite"),
        (
            npz(
                X_train=np.ones((2, 2)), y_train=np.ones(2), X_valid=np.ones((2, 2)), y_valid=np.array([0, 1])
            ),
            "y_valid must be a float array of real targets",
        ),
        (npz(X=np.ones((4, 2)), y=np.ones(4), task=np.array([0, 1, 0, 1])), "y is a float (real) target"),
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
