"""Keep going from a finished job: ``init: {from_job, which}`` and array inits (warm starts), and
``POST /v1/jobs/{id}/continue`` (more meta-iterations), over the real API and database."""

from __future__ import annotations

import numpy as np
import pytest
from api_support import LAYERS, TINY_SPEC, learning_rates, problems, run, submit

pytestmark = pytest.mark.integration


def with_learning_rate(**setting) -> dict:
    spec = {**TINY_SPEC, "hyperparameters": dict(TINY_SPEC["hyperparameters"])}
    spec["hyperparameters"]["learning_rate"] = {"granularity": "layer_step", "learn": True, **setting}
    return spec


def test_a_job_starts_from_another_jobs_values(service):
    source = submit(service.alice)["id"]
    run(service, source, 3, objectives=[3.0, 1.0, 2.0])  # best: meta-iteration 1, scored snapshot 1

    for which, want, meta_iter in (
        ("best", learning_rates(0), 1),
        (2, learning_rates(1), 2),
        ("last", learning_rates(2), 3),
    ):
        job = submit(service.alice, with_learning_rate(init={"from_job": source, "which": which}))
        setting = job["spec"]["hyperparameters"]["learning_rate"]
        np.testing.assert_array_equal(np.array(setting["init"]), want)
        assert setting["init_from"] == {"job": source, "which": which, "meta_iter": meta_iter}

    # The same values inline are a plain array init.
    inline = submit(service.alice, with_learning_rate(init=learning_rates(2).tolist()))
    assert np.array(inline["spec"]["hyperparameters"]["learning_rate"]["init"]).shape == (5, len(LAYERS))


def test_warm_start_refusals_name_the_field(service):
    source = submit(service.alice)["id"]
    run(service, source, 2)
    field = "body.hyperparameters.learning_rate.init"
    cases = [
        ({"from_job": "nope", "which": "last"}, f"{field}.from_job", "no job"),
        ({"from_job": source, "which": 7}, f"{field}.which", "no hyperparameter snapshot meta_iter 7"),
        ({"from_job": source, "which": "worst"}, f"{field}.which", "'best', 'last'"),
        ([0.1, 0.2], f"{field}", "must have shape [5, 4], got [2]"),
        ([[0.1] * 4] * 4 + [[0.1, 0.1, 0.1, -1.0]], f"{field}", "at index [4, 3]"),
    ]
    for init, loc, text in cases:
        found = problems(service.alice.post("/v1/jobs", json=with_learning_rate(init=init)))
        assert text in found.get(loc, ""), (init, found)
    # Another job's layer_step values do not fit a per-layer learning rate: the shapes say so.
    spec = with_learning_rate(init={"from_job": source, "which": "last"}, granularity="layer")
    assert "must have shape [4], got [5, 4]" in problems(service.alice.post("/v1/jobs", json=spec))[field]
    # Another tenant's job is not there at all.
    reply = service.bob.post("/v1/jobs", json=with_learning_rate(init={"from_job": source, "which": "last"}))
    assert "no job" in problems(reply)[f"{field}.from_job"]


def test_continue_a_finished_job(service):
    job = submit(service.alice)
    run(service, job["id"], 3)
    service.enqueued.clear()

    reply = service.alice.post(f"/v1/jobs/{job['id']}/continue", json={"iterations": 4})
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert (body["status"], body["meta_iter"], body["meta_iterations"]) == ("queued", 3, 7)
    assert body["spec"]["meta"]["iterations"] == 7 and body["finished_at"] is None
    assert service.enqueued == [job["id"]]

    again = service.alice.post(f"/v1/jobs/{job['id']}/continue", json={"iterations": 1})
    assert again.status_code == 409 and "queued: continue it once it has finished" in again.json()["detail"]
    zero = problems(service.alice.post(f"/v1/jobs/{job['id']}/continue", json={"iterations": 0}))
    assert "greater than or equal to 1" in zero["body.iterations"]
    assert service.bob.post(f"/v1/jobs/{job['id']}/continue", json={"iterations": 1}).status_code == 404


def test_continue_past_the_limit_names_it(service):
    job = submit(service.alice)
    run(service, job["id"], 3)
    limit = service.settings.max_meta_iterations
    found = problems(service.alice.post(f"/v1/jobs/{job['id']}/continue", json={"iterations": limit}))
    assert (
        f"the job has run 3, so at most {limit - 3} more (REVTUNE_MAX_META_ITERATIONS)"
        in found["body.iterations"]
    )
    assert service.alice.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded", "nothing changed"
