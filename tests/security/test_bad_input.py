"""Bad input, sent on purpose: every answer is a clear 4xx naming the field (and the limit, where one
was passed), never a 500, on SQLite and on PostgreSQL.

What tests/api already covers is not repeated here (a NaN ``meta.learning_rate``, a 2 MiB body, a
deep ``[[[...]]]``, unsafe dataset names, NaN in an uploaded ``X``, the step/iteration/width
limits). This file adds: JSON ``NaN``/``Infinity`` literals in every number of a spec, every
`jobs.spec.SpecLimits` limit (enumerated, so a new limit without a test fails here), nesting and
huge values, wrong content types, NUL characters and lone surrogates, path traversal in every
place a name or an id is taken, and non-finite values in every array of an upload::

    nice -n 19 .venv/bin/python -m pytest tests/security/test_bad_input.py -q
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from api_support import TINY_SPEC, problems, run, submit
from security_support import npz, post_raw, spec_with, upload

from jobs import repository
from jobs.spec import SpecLimits

# ---- numbers: NaN and Infinity, as JSON literals (Python's json accepts them) ------------------

FLOAT_FIELDS = [
    "hyperparameters.learning_rate.init",
    "hyperparameters.momentum.init",
    "hyperparameters.init_scale.init",
    "hyperparameters.l2.init",
    "meta.learning_rate",
    "meta.clip",
]
INT_FIELDS = ["training.steps", "meta.iterations", "seed", "dataset.train", "dataset.valid", "model.hidden.0"]
NON_FINITE = ["NaN", "Infinity", "-Infinity"]
MARKER = 12345.678


def _with_literal(path: str, literal: str) -> bytes:
    """The tiny spec with ``path`` holding the bare JSON token ``literal``."""
    if path == "model.hidden.0":
        spec = spec_with("model.hidden", [MARKER])
    elif path.startswith("hyperparameters.") and path.count(".") == 2:
        kind = path.split(".")[1]
        spec = spec_with(f"hyperparameters.{kind}", {"init": MARKER, "granularity": "global", "learn": True})
    elif path == "meta.momentum":
        spec = spec_with("meta", {"optimizer": "sgd", "momentum": MARKER})
    else:
        spec = spec_with(path, MARKER)
    text = json.dumps(spec)
    assert text.count(str(MARKER)) == 1
    return text.replace(str(MARKER), literal).encode()


def test_nan_and_infinity_literals_in_every_number_of_a_spec_are_422_on_that_field(service):
    for path in [*FLOAT_FIELDS, "meta.momentum", *INT_FIELDS]:
        for literal in NON_FINITE:
            reply = post_raw(service.alice, "/v1/jobs", _with_literal(path, literal))
            found = problems(reply)
            assert f"body.{path}" in found, (path, literal, found)
    assert service.enqueued == []


# ---- every limit ---------------------------------------------------------------------------------

# limit -> (the smaller value the server is given, a spec beyond it, the field, the text)
LIMIT_CASES = {
    "max_steps": (4, spec_with("training.steps", 5), "body.training.steps", "at most 4 steps"),
    "max_meta_iterations": (2, spec_with("meta.iterations", 3), "body.meta.iterations", "at most 2"),
    "max_layers": (1, spec_with("model.hidden", [4, 4]), "body.model.hidden", "at most 1 hidden layers"),
    "max_hidden_width": (7, spec_with("model.hidden", [8]), "body.model.hidden.0", "at most 7 units"),
    "max_weights": (500, TINY_SPEC, "body.model", "at most 500 are allowed"),
    "max_hyperparameters": (10, TINY_SPEC, "body.hyperparameters", "at most 10 are allowed"),
    "max_dataset_rows": (99, TINY_SPEC, "body.dataset.train", "at most 99 rows"),
    "max_features": (63, TINY_SPEC, "body.dataset.name", "64 features; at most 63"),
    "max_classes": (9, TINY_SPEC, "body.dataset.name", "10 classes; at most 9"),
    "max_channels": (
        7,
        spec_with("model", {"kind": "cnn", "channels": [4, 8]}),
        "body.model.channels.1",
        "at most 7 channels, got 8",
    ),
    "max_kernel": (
        4,
        spec_with("model", {"kind": "cnn", "channels": [4], "kernel": 5}),
        "body.model.kernel",
        "at most 4 wide, got 5",
    ),
    "max_job_memory_bytes": (
        2**30,
        TINY_SPEC,
        "body.dataset.train",
        "past REVTUNE_MAX_JOB_MEMORY_BYTES = 1.0 GiB",
    ),
}


def test_every_spec_limit_has_a_case_here():
    assert set(LIMIT_CASES) == {f.name for f in dataclasses.fields(SpecLimits)}


@pytest.mark.parametrize("limit", sorted(LIMIT_CASES))
def test_a_spec_beyond_each_limit_is_422_naming_the_field_and_the_limit(service, limit):
    value, spec, field, says = LIMIT_CASES[limit]
    assert submit(service.alice, spec)["status"] == "queued", "within the default limits"
    service.app.state.settings = service.settings.model_copy(update={limit: value})
    found = problems(service.alice.post("/v1/jobs", json=spec))
    assert field in found and says in found[field], (limit, found)


@pytest.mark.parametrize(
    ("limit", "value", "arrays", "says"),
    [
        ("max_dataset_rows", 30, {"X": np.ones((40, 3)), "y": np.arange(40) % 2}, "40 examples; at most 30"),
        ("max_features", 2, {"X": np.ones((40, 3)), "y": np.arange(40) % 2}, "3 features; at most 2"),
        ("max_classes", 3, {"X": np.ones((40, 3)), "y": np.arange(40) % 4}, "between 2 and 3"),
    ],
)
def test_an_upload_beyond_each_dataset_limit_is_422_on_file(service, limit, value, arrays, says):
    service.app.state.settings = service.settings.model_copy(update={limit: value})
    found = problems(upload(service.alice, npz(**arrays)))
    assert says in found["body.file"], found


def test_huge_values_are_refused_by_their_limit_not_by_an_overflow(service):
    for path, value, field in [
        ("training.steps", 10**40, "body.training.steps"),
        ("meta.iterations", 2**63, "body.meta.iterations"),
        ("seed", 2**64, "body.seed"),
        ("dataset.train", 10**30, "body.dataset.train"),
        ("model.hidden", [2**70], "body.model.hidden.0"),
        ("hyperparameters.learning_rate.init", 1.7e308, None),
        ("meta.learning_rate", 1e-320, None),
    ]:
        reply = service.alice.post("/v1/jobs", json=spec_with(path, value))
        if field is None:  # finite, positive: a legal (if silly) value
            assert reply.status_code == 201, (path, reply.text)
        else:
            assert field in problems(reply), (path, reply.text)
    job = submit(service.alice)
    run(service, job["id"], 1)
    for query, param in [
        ("steps?after=2147483648", "after"),
        ("steps?after=9223372036854775808", "after"),
        ("hyperparameters?meta_iter=2147483648", "meta_iter"),
        ("hyperparameters/learning_rate?meta_iter=18446744073709551616", "meta_iter"),
    ]:
        found = problems(service.alice.get(f"/v1/jobs/{job['id']}/{query}"))
        assert "2147483647" in found[f"query.{param}"], query
    too_long = json.dumps(TINY_SPEC).replace('"seed": 0', '"seed": ' + "9" * 5000)
    found = problems(post_raw(service.alice, "/v1/jobs", too_long))
    assert "digits" in found["body"] and "not valid JSON" in found["body"]


# ---- shapes and sizes of bodies --------------------------------------------------------------------


def test_deeply_nested_and_huge_but_small_enough_bodies_are_422(service):
    depth = 100_000  # 600 kB: under the 1 MiB cap, far over any parser's recursion limit
    deep_object = b'{"name": "x", "model": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    found = problems(post_raw(service.alice, "/v1/jobs", deep_object))
    assert "nested too deeply" in found["body"]
    # Nested, but shallow enough to parse: refused by the schema, naming the unknown field.
    nested = {"a": 1}
    for _ in range(200):
        nested = {"a": nested}
    assert "body.extra" in problems(service.alice.post("/v1/jobs", json=spec_with("extra", nested)))
    assert "body.name" in problems(service.alice.post("/v1/jobs", json=spec_with("name", "x" * 900_000)))
    found = problems(service.alice.post("/v1/jobs", json=spec_with("model.hidden", [4] * 100_000)))
    assert "at most 8 hidden layers" in found["body.model.hidden"]
    for body, says in [
        (b"", "not valid JSON"),
        (b'{"name": "\xc3\x28"}', "not UTF-8"),
        (b"null", "JSON object"),
    ]:
        found = problems(post_raw(service.alice, "/v1/jobs", body))
        assert any(says in msg for msg in found.values()), (body, found)


def test_a_chunked_body_over_the_cap_is_413_without_a_content_length(service):
    def chunks():
        for _ in range(40):
            yield b" " * 64 * 1024  # 2.5 MiB in all, against the 1 MiB JSON cap

    reply = service.alice.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and "limit of 1048576 bytes" in reply.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"],
)
def test_a_spec_in_another_content_type_is_415(service, content_type):
    reply = post_raw(service.alice, "/v1/jobs", json.dumps(TINY_SPEC), content_type=content_type)
    assert reply.status_code == 415, reply.text
    assert "application/json" in reply.json()["detail"]
    assert service.enqueued == []


def test_json_content_types_are_accepted(service):
    for content_type in (None, "application/json; charset=utf-8", "application/vnd.revtune+json"):
        assert post_raw(service.alice, "/v1/jobs", json.dumps(TINY_SPEC), content_type).status_code == 201


def test_an_upload_that_is_not_multipart_names_the_missing_fields(service):
    for reply in (
        service.alice.post("/v1/datasets", json={"name": "x", "file": "AAAA"}),
        post_raw(service.alice, "/v1/datasets", b"name=x&file=AAAA", "application/x-www-form-urlencoded"),
        post_raw(service.alice, "/v1/datasets", b"--x\r\n", "multipart/form-data; boundary=x"),
    ):
        found = problems(reply)
        assert "body.file" in found, found
    for content_type, body, says in [
        ("multipart/form-data", b"abc", "Missing boundary"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--x--\r\n",
            "name",
        ),
    ]:
        reply = post_raw(service.alice, "/v1/datasets", body, content_type)
        assert reply.status_code == 400 and says in reply.json()["detail"], reply.text
    found = problems(upload(service.alice, b"PK\x03\x04 this is not a zip"))
    assert "not a readable .npz" in found["body.file"]


# ---- NUL, surrogates and path traversal ----------------------------------------------------------


def _alice_job_and_dataset(service) -> tuple[str, str]:
    job = submit(service.alice)
    run(service, job["id"], 1)
    dataset = upload(service.alice, npz(X=np.ones((20, 3)), y=np.arange(20) % 2)).json()
    return job["id"], dataset["id"]


def test_nul_characters_anywhere_are_4xx_on_both_databases(service):
    job_id, dataset_id = _alice_job_and_dataset(service)
    for method, path in [
        ("GET", "/v1/jobs/a%00b"),
        ("POST", "/v1/jobs/a%00b/cancel"),
        ("DELETE", "/v1/jobs/a%00b"),
        ("GET", "/v1/jobs/a%00b/steps"),
        ("GET", "/v1/jobs/a%00b/hyperparameters"),
        ("GET", f"/v1/jobs/{job_id}/hyperparameters/a%00b"),
        ("GET", "/v1/datasets/a%00b"),
        ("DELETE", "/v1/datasets/a%00b"),
        ("GET", "/v1/templates/a%00b"),
        ("GET", "/static/a%00b"),
    ]:
        reply = service.alice.request(method, path)
        assert reply.status_code == 404, (method, path, reply.text)
        assert isinstance(reply.json()["detail"], str)
    for path, param in [
        ("/v1/jobs?cursor=%00", "cursor"),
        ("/v1/jobs?status=queued%00", "status"),
        (f"/v1/jobs/{job_id}/hyperparameters?meta_iter=1%00", "meta_iter"),
    ]:
        assert f"query.{param}" in problems(service.alice.get(path)), path
    reply = service.alice.post("/v1/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "a\x00b"})
    assert "header.idempotency-key" in problems(reply)
    for bad_id in ("a\x00b", "\ud800", "\x00"):
        body = json.dumps(spec_with("dataset", {"id": bad_id, "train": 10, "valid": 5}))
        assert "body.dataset.id" in problems(post_raw(service.alice, "/v1/jobs", body)), repr(bad_id)
    found = problems(upload(service.alice, npz(X=np.ones((20, 3)), y=np.arange(20) % 2), name="a\x00b"))
    assert "body.name" in found
    assert service.alice.get(f"/v1/datasets/{dataset_id}").status_code == 200


TRAVERSALS = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252F..%252Fetc%252Fpasswd",
    "....//....//etc/passwd",
    "%2Fetc%2Fpasswd",
    "..\\..\\etc\\passwd",
]


def test_path_traversal_in_every_id_and_name_finds_nothing(service, tmp_path):
    job_id, dataset_id = _alice_job_and_dataset(service)
    secret_file = Path(service.settings.data_dir).parent / "outside.npz"
    secret_file.write_bytes(npz(X=np.ones((20, 3)), y=np.arange(20) % 2))
    for evil in TRAVERSALS:
        for method, path in [
            ("GET", f"/v1/datasets/{evil}"),
            ("DELETE", f"/v1/datasets/{evil}"),
            ("GET", f"/v1/jobs/{evil}"),
            ("GET", f"/v1/jobs/{job_id}/hyperparameters/{evil}"),
            ("GET", f"/v1/templates/{evil}"),
            ("GET", f"/static/{evil}"),
            ("GET", f"/static/../../jobs/{evil}"),
            ("GET", "/static/..%2F..%2Fjobs%2Fsettings.py"),
            ("GET", "/static/..%2F..%2F..%2Fpyproject.toml"),
        ]:
            reply = service.alice.request(method, path)
            assert reply.status_code == 404, (method, path, reply.status_code)
            assert "root:" not in reply.text and "REVTUNE_" not in reply.text
        for dataset_ref in (evil, "../outside", str(secret_file), "../" * 8 + "etc/passwd"):
            body = spec_with("dataset", {"id": dataset_ref, "train": 10, "valid": 5})
            assert "body.dataset.id" in problems(service.alice.post("/v1/jobs", json=body)), dataset_ref
    assert secret_file.exists()
    # A hostile *file name* in the multipart envelope is ignored: files are named by generated id.
    reply = upload(service.alice, npz(X=np.ones((20, 3)), y=np.arange(20) % 2), filename="../../../evil.npz")
    assert reply.status_code == 201
    stored = sorted(p.name for p in service.settings.datasets_dir.iterdir())
    assert stored == sorted(f"{i}.npz" for i in (dataset_id, reply.json()["id"]))
    assert not list(Path(service.settings.data_dir).parent.glob("**/evil.npz"))


# ---- non-finite arrays, in and out ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        (
            {
                "X_train": np.ones((10, 3)),
                "y_train": np.arange(10) % 2,
                "X_valid": np.full((5, 3), -np.inf),
                "y_valid": np.arange(5) % 2,
            },
            "X_valid holds NaN or infinite",
        ),
        (
            {
                "X_train": np.ones((10, 3)),
                "y_train": np.arange(10) % 2,
                "X_valid": np.ones((5, 3)),
                "y_valid": np.arange(5) % 2,
                "X_test": np.array([[np.nan, 0, 0]] * 5),
                "y_test": np.arange(5) % 2,
            },
            "X_test holds NaN or infinite",
        ),
        ({"X": np.ones((10, 3), np.float32) * np.float32(np.inf), "y": np.arange(10) % 2}, "NaN or infinite"),
        # a float y is a regression target: its values must be finite too
        ({"X": np.ones((10, 3)), "y": np.array([0, 1, np.nan] + [0] * 7)}, "y holds NaN or infinite"),
        ({"X": np.ones((10, 3)), "y": np.array([0, 1, np.inf] + [0] * 7)}, "y holds NaN or infinite"),
        ({"X": np.array([[1e308 * 10]] * 10), "y": np.arange(10) % 2}, "NaN or infinite"),
        ({"X": np.array([[{"a": 1}]] * 10, dtype=object), "y": np.arange(10) % 2}, "not a readable .npz"),
    ],
    ids=["valid-inf", "test-nan", "float32-inf", "y-nan", "y-inf", "overflowed", "pickled-object"],
)
def test_non_finite_values_in_any_uploaded_array_are_422_on_file(service, arrays, says):
    found = problems(upload(service.alice, npz(**arrays)))
    assert says in found["body.file"], found
    assert not service.settings.datasets_dir.exists() or list(service.settings.datasets_dir.iterdir()) == []


def test_non_finite_results_are_served_as_null_never_a_500(service):
    """A diverged run records NaN and Inf: JSON has no such numbers, so they are null (CSV: an empty
    cell; .npy: the values themselves)."""
    job = submit(service.alice)
    with service.sessions() as s:
        claim = repository.claim_job(s, job["id"], "worker-1")
        s.commit()
    with service.sessions() as s:
        repository.record_meta_iteration(
            s,
            job["id"],
            claim,
            step={
                "meta_iter": 0,
                "objective": float("nan"),
                "train_loss": float("inf"),
                "valid_loss": float("-inf"),
                "valid_error": 0.5,
                "test_loss": None,
                "test_error": None,
                "hypergrad_norm": float("nan"),
                "elapsed_s": 0.1,
                "reversal_exact": True,
            },
            hyperparameters={
                "learning_rate": {
                    "values": np.array([[np.nan, np.inf], [-np.inf, 0.5]]),
                    "axes": ["step", "layer"],
                    "labels": {"step": [0, 1], "layer": ["layer0.W", "layer0.b"]},
                    "learned": True,
                }
            },
            checkpoint=b"checkpoint",
        )
        s.commit()
    base = f"/v1/jobs/{job['id']}"
    assert service.alice.get(base).json()["best"] is None, "a NaN objective is never the best"
    step = service.alice.get(f"{base}/steps").json()["items"][0]
    assert (step["objective"], step["train_loss"], step["valid_loss"]) == (None, None, None)
    values = service.alice.get(f"{base}/hyperparameters/learning_rate").json()["values"]
    assert values == [[None, None], [None, 0.5]]
    # CSV agrees with JSON (an empty cell); .npy keeps the IEEE values (docs/API.md, "Hyperparameters").
    csv = service.alice.get(f"{base}/hyperparameters/learning_rate", params={"format": "csv"}).text
    assert csv.splitlines()[1:] == ["0,layer0.W,", "0,layer0.b,", "1,layer0.W,", "1,layer0.b,0.5"]
    raw = service.alice.get(f"{base}/hyperparameters/learning_rate", params={"format": "npy"}).content
    np.testing.assert_array_equal(np.load(io.BytesIO(raw)), [[np.nan, np.inf], [-np.inf, 0.5]])
