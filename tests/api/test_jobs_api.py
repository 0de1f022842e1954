"""``/v1/jobs`` on both databases: submit, list, get, cancel, delete, idempotency, bad specs."""

from __future__ import annotations

import copy
import json

import pytest
from api_support import TINY_SPEC, problems, submit

from jobs import repository

JOB_FIELDS = {
    "id",
    "name",
    "status",
    "origin",
    "spec",
    "meta_iter",
    "meta_iterations",
    "best",
    "error",
    "warnings",
    "cancel_requested",
    "created_at",
    "started_at",
    "finished_at",
}


def spec_with(path: str, value) -> dict:
    spec = copy.deepcopy(TINY_SPEC)
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return spec


def test_submit_answers_201_with_the_job_and_enqueues_only_its_id_after_commit(service):
    job = submit(service.alice)
    assert set(job) == JOB_FIELDS
    assert job["status"] == "queued" and job["meta_iter"] == 0 and job["meta_iterations"] == 3
    assert job["origin"] == "service"
    assert job["best"] is None and job["error"] is None and job["started_at"] is None
    assert job["warnings"] == [] and job["cancel_requested"] is False
    assert job["spec"]["training"] == {"steps": 5} and job["name"] == "tiny"
    assert service.enqueued == [job["id"]]
    # Enqueued after the commit: the id is already readable through a separate session.
    with service.sessions() as s:
        assert repository.get_job(s, service.tenant("alice"), job["id"]).status == "queued"
    assert service.alice.get(f"/v1/jobs/{job['id']}").json() == job


def test_the_warnings_a_worker_adds_are_served_in_order_with_the_job(service):
    job = submit(service.alice)
    with service.sessions() as s:
        claim = repository.claim_job(s, job["id"], "worker-1")
        repository.add_warning(s, job["id"], claim, code="unscaled_inputs", message="standardise X")
        repository.add_warning(s, job["id"], claim, code="diverged", message="1 of 1", meta_iter=0)
        repository.add_warning(s, job["id"], claim, code="diverged", message="1 of 2", meta_iter=1)
        s.commit()
    expected = [
        {"code": "unscaled_inputs", "message": "standardise X", "meta_iter": None},
        {"code": "diverged", "message": "1 of 2", "meta_iter": 0},
    ]
    assert service.alice.get(f"/v1/jobs/{job['id']}").json()["warnings"] == expected
    listed = service.alice.get("/v1/jobs").json()["items"]
    assert [j["warnings"] for j in listed if j["id"] == job["id"]] == [expected]


def test_the_broker_down_at_submit_keeps_the_job_queued(service):
    def broken(job_id):
        raise ConnectionError("broker down")

    service.app.state.enqueue = broken
    job = submit(service.alice)
    assert service.alice.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_idempotency_key_returns_the_same_job(service):
    first = service.alice.post("/v1/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "abc"})
    again = service.alice.post("/v1/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "abc"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and service.enqueued == [first.json()["id"]]
    other = service.alice.post("/v1/jobs", json=spec_with("seed", 1), headers={"Idempotency-Key": "abc"})
    assert other.status_code == 409 and "different spec" in other.json()["detail"]
    assert service.bob.post("/v1/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "abc"}).status_code == 201


def test_list_pages_newest_first_and_filters_by_status(service):
    ids = [submit(service.alice)["id"] for _ in range(5)]
    service.alice.post(f"/v1/jobs/{ids[0]}/cancel")
    seen, cursor, sizes = [], None, []
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = service.alice.get("/v1/jobs", params=params).json()
        assert set(page) == {"items", "next_cursor"}
        sizes.append(len(page["items"]))
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and sizes == [2, 2, 1]
    cancelled = service.alice.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert len(service.alice.get("/v1/jobs", params={"status": "queued"}).json()["items"]) == 4
    assert "query.status" in problems(service.alice.get("/v1/jobs", params={"status": "paused"}))
    assert "query.cursor" in problems(service.alice.get("/v1/jobs", params={"cursor": "nonsense"}))
    assert "query.limit" in problems(service.alice.get("/v1/jobs", params={"limit": 0}))


def test_cancel_a_queued_job_at_once_and_a_running_one_by_flag(service):
    queued = submit(service.alice)
    reply = service.alice.post(f"/v1/jobs/{queued['id']}/cancel")
    assert reply.status_code == 202 and reply.json()["status"] == "cancelled"
    assert reply.json()["finished_at"] is not None

    running = submit(service.alice)
    with service.sessions() as s:
        repository.claim_job(s, running["id"], "worker-1")
        s.commit()
    reply = service.alice.post(f"/v1/jobs/{running['id']}/cancel")
    assert reply.status_code == 202 and reply.json()["status"] == "running"
    # the answer says the cancel is pending: the job stops after its current meta-iteration
    assert reply.json()["cancel_requested"] is True
    assert service.alice.get(f"/v1/jobs/{running['id']}").json()["cancel_requested"] is True
    with service.sessions() as s:
        assert repository.get_job(s, service.tenant("alice"), running["id"]).cancel_requested


def test_delete_is_refused_while_active_and_then_removes_the_job(service):
    job = submit(service.alice)
    reply = service.alice.delete(f"/v1/jobs/{job['id']}")
    assert reply.status_code == 409 and "queued" in reply.json()["detail"]
    service.alice.post(f"/v1/jobs/{job['id']}/cancel")
    assert service.alice.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert service.alice.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert service.alice.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404


def test_unknown_ids_are_404_with_a_message(service):
    for method, path in [
        ("GET", "/v1/jobs/nope"),
        ("POST", "/v1/jobs/nope/cancel"),
        ("DELETE", "/v1/jobs/nope"),
        ("GET", "/v1/jobs/nope/steps"),
        ("GET", "/v1/jobs/nope/hyperparameters"),
        ("GET", "/v1/jobs/nope/hyperparameters/learning_rate"),
    ]:
        reply = service.alice.request(method, path)
        assert reply.status_code == 404 and "nope" in reply.json()["detail"], (method, path)


@pytest.mark.parametrize(
    ("path", "value", "field", "says"),
    [
        ("training.steps", 1001, "body.training.steps", "at most 1000"),
        ("meta.iterations", 501, "body.meta.iterations", "at most 500"),
        ("model.hidden", [4] * 9, "body.model.hidden", "at most 8"),
        ("model.hidden", [5000], "body.model.hidden.0", "at most 2048"),
        ("dataset.train", 100_001, "body.dataset.train", "100000"),
        ("dataset.train", 1790, "body.dataset.train", "only 1797"),
        ("dataset.batch_size", 101, "body.dataset.batch_size", "100 training examples"),
        ("training.steps", "5", "body.training.steps", "integer"),
        ("training.steps", 5.5, "body.training.steps", "integer"),
        ("meta.learning_rate", "fast", "body.meta.learning_rate", "number"),
        ("hyperparameters.learning_rate.learn", 1, "body.hyperparameters.learning_rate.learn", "boolean"),
        ("model.kind", "transformer", "body.model.kind", "mlp"),
        ("unknown", True, "body.unknown", "Extra inputs"),
        ("dataset.id", "x", "body.dataset", "exactly one"),
    ],
)
def test_bad_specs_are_422_naming_the_field(service, path, value, field, says):
    found = problems(service.alice.post("/v1/jobs", json=spec_with(path, value)))
    assert field in found and says in found[field], found
    assert service.enqueued == []


def test_too_many_hyperparameters_and_too_many_weights_are_refused(service):
    per_weight = spec_with("hyperparameters.l2", {"init": 0.01, "granularity": "weight", "learn": True})
    service.app.state.settings = service.settings.model_copy(update={"max_hyperparameters": 500})
    found = problems(service.alice.post("/v1/jobs", json=per_weight))
    assert "at most 500" in found["body.hyperparameters"]
    wide = spec_with("model.hidden", [2048, 2048, 2048])
    assert "weights" in problems(service.alice.post("/v1/jobs", json=wide))["body.model"]


def test_nan_and_infinity_in_a_spec_are_refused(service):
    body = json.dumps(spec_with("meta.learning_rate", 0.04)).replace("0.04", "NaN")
    reply = service.alice.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert "body.meta.learning_rate" in problems(reply)
    body = json.dumps(spec_with("hyperparameters.learning_rate.init", 0.3)).replace("0.3", "Infinity")
    reply = service.alice.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert "body.hyperparameters.learning_rate.init" in problems(reply)


def test_malformed_and_oversized_bodies_are_refused_without_a_500(service):
    reply = service.alice.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status_code == 422
    reply = service.alice.post("/v1/jobs", json=[1, 2, 3])
    assert reply.status_code == 422
    huge = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    reply = service.alice.post("/v1/jobs", content=huge, headers={"Content-Type": "application/json"})
    assert reply.status_code == 413
    deep = b"[" * 100_000 + b"]" * 100_000
    reply = service.alice.post("/v1/jobs", content=deep, headers={"Content-Type": "application/json"})
    assert reply.status_code == 422
    assert reply.json()["detail"] == [
        {"loc": ["body"], "msg": "the JSON is nested too deeply; a job spec is a few levels deep"}
    ]


def test_an_unknown_dataset_id_is_422_on_dataset_id(service):
    found = problems(service.alice.post("/v1/jobs", json=spec_with("dataset", {"id": "nope", "train": 10})))
    assert "no dataset with id 'nope'" in found["body.dataset.id"]


def test_a_template_submits_as_is(service):
    for name in ("lr-schedule-digits", "l2-per-weight-logreg"):
        spec = service.alice.get(f"/v1/templates/{name}").json()
        assert submit(service.alice, spec)["name"] == name
