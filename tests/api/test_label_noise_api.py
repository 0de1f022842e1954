"""``dataset.label_noise`` and an upload's ``noisy`` mask at the API: what the engine refuses, the
service refuses first, on the same field (the engine's side: tests/hypercore/test_label_noise.py)."""

from __future__ import annotations

import io

import numpy as np
from api_support import TINY_SPEC, problems, submit


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client, data: bytes):
    return client.post(
        "/v1/datasets", files={"file": ("data.npz", data, "application/octet-stream")}, data={"name": "noisy"}
    )


def test_label_noise_is_refused_with_resplit_and_stored_otherwise(service):
    noise = {"fraction": 0.4, "seed": 1}
    spec = {**TINY_SPEC, "dataset": {**TINY_SPEC["dataset"], "label_noise": noise, "resplit": True}}
    found = problems(service.alice.post("/v1/jobs", json=spec))
    assert "dataset.resplit" in found["body.dataset.label_noise"]
    bad = {**TINY_SPEC, "dataset": {**TINY_SPEC["dataset"], "label_noise": {"fraction": 1.0}}}
    assert "body.dataset.label_noise.fraction" in problems(service.alice.post("/v1/jobs", json=bad))
    job = submit(service.alice, {**TINY_SPEC, "dataset": {**TINY_SPEC["dataset"], "label_noise": noise}})
    assert job["spec"]["dataset"]["label_noise"] == noise


def test_an_uploads_noisy_mask_is_checked_naming_it(service):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    assert upload(service.alice, npz(X=X, y=y, noisy=np.arange(20) % 5 == 0)).status_code == 201
    found = problems(upload(service.alice, npz(X=X, y=y, noisy=np.zeros(19, bool))))
    assert "noisy must be a boolean (or 0/1 integer) array of shape (20,)" in found["body.file"]


def test_example_weights_are_refused_where_they_cannot_follow_their_examples(service):
    weights = {"example_weight": {"init": 1.0, "granularity": "example", "learn": True}}
    resplit = {**TINY_SPEC, "dataset": {**TINY_SPEC["dataset"], "resplit": True}, "hyperparameters": weights}
    assert (
        "would not stay with its example"
        in problems(service.alice.post("/v1/jobs", json=resplit))["body.dataset.resplit"]
    )
    shape = {
        **TINY_SPEC,
        "hyperparameters": {"example_weight": {**weights["example_weight"], "init": [1.0] * 3}},
    }
    assert (
        "must have shape [100], got [3]"
        in problems(service.alice.post("/v1/jobs", json=shape))["body.hyperparameters.example_weight.init"]
    )
    job = submit(service.alice, {**TINY_SPEC, "hyperparameters": weights})
    assert job["spec"]["hyperparameters"]["example_weight"]["granularity"] == "example"
