"""``GET /v1/jobs/{id}/export``: which snapshot ``best``, ``last`` and a number name, the refusals, and
what the files hold (docs/API.md, "Export"). The conversion itself is checked against the engine in
tests/hypercore/test_export_rule.py."""

from __future__ import annotations

import io
import json
import py_compile
import zipfile

import numpy as np
import pytest
from api_support import LAYERS, TINY_SPEC, learning_rates, problems, run, submit

from jobs.export import quantize_gamma
from jobs.models import HyperSnapshot

STEPS = TINY_SPEC["training"]["steps"]


def _export(client, job_id: str, **params):
    return client.get(f"/v1/jobs/{job_id}/export", params=params)


def _npz(reply) -> dict:
    with np.load(io.BytesIO(reply.content), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _seed_snapshot_zero(service, job_id: str, values: np.ndarray) -> None:
    """What the worker stores now and did not before: the initial values as snapshot 0 (learned only;
    a fixed hyperparameter is stored once, at meta_iter 1)."""
    with service.sessions() as s:
        s.add(
            HyperSnapshot(
                job_id=job_id,
                meta_iter=0,
                name="learning_rate",
                shape=list(values.shape),
                axes=["step", "layer"],
                labels={"step": list(range(STEPS)), "layer": LAYERS},
                learned=True,
                data=np.asarray(values, "<f8").tobytes(),
            )
        )
        s.commit()


@pytest.fixture
def job(service) -> str:
    """A job of 3 recorded meta-iterations whose objectives make meta-iteration 1 the best."""
    job_id = submit(service.alice)["id"]
    run(service, job_id, 3, objectives=[0.5, 0.2, 0.9])
    return job_id


def test_which_and_to_are_required_and_checked(service, job):
    assert "query.which" in problems(_export(service.alice, job, to="npz"))
    assert "query.to" in problems(_export(service.alice, job, which="best"))
    for bad in ("first", "-1", "1.5", "", "best,last", "1e3", "٣", "9" * 41):
        found = problems(_export(service.alice, job, which=bad, to="npz"))
        assert list(found) == ["query.which"], bad
    assert "best" in problems(_export(service.alice, job, which="x", to="npz"))["query.which"]
    assert list(problems(_export(service.alice, job, which="best", to="keras"))) == ["query.to"]


def test_another_tenants_job_an_unknown_job_and_no_key(service, job):
    for client, job_id in ((service.bob, job), (service.alice, "0" * 32)):
        reply = _export(client, job_id, which="last", to="npz")
        assert reply.status_code == 404, reply.text
    assert _export(service.anonymous, job, which="last", to="npz").status_code == 401


def test_a_job_without_a_finished_meta_iteration_is_409(service):
    job_id = submit(service.alice)["id"]
    for which in ("best", "last", "0"):
        reply = _export(service.alice, job_id, which=which, to="npz")
        assert reply.status_code == 409 and "no finished meta-iteration" in reply.json()["detail"]


def test_best_is_the_snapshot_the_best_meta_iteration_trained_with(service, job):
    assert service.alice.get(f"/v1/jobs/{job}").json()["best"] == {"objective": 0.2, "meta_iter": 1}
    reply = _export(service.alice, job, which="best", to="npz")
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-revtune-meta-iter"] == "1"
    assert reply.headers["content-disposition"] == f'attachment; filename="{job}-best-1.npz"'
    z = _npz(reply)
    # snapshot 1: the values after meta-iteration 0, which meta-iteration 1 trained with
    np.testing.assert_array_equal(z["learning_rate"], learning_rates(0))
    assert z["init_scale"] == 0.1
    described = json.loads(str(z["__export__"]))
    assert described["meta_iter"] == 1 and described["which"] == "best"
    assert described["objective"] == 0.2 and described["evaluated"] is True
    assert described["training_optimizer"] == "sgd_momentum"
    spec = json.loads(str(z["__spec__"]))
    assert spec == service.alice.get(f"/v1/jobs/{job}").json()["spec"]


def test_last_and_a_number(service, job):
    last = _export(service.alice, job, which="last", to="npz")
    assert last.headers["x-revtune-meta-iter"] == "3"
    assert last.headers["content-disposition"] == f'attachment; filename="{job}-last-3.npz"'
    z = _npz(last)
    np.testing.assert_array_equal(z["learning_rate"], learning_rates(2))
    described = json.loads(str(z["__export__"]))
    assert described["evaluated"] is False and described["objective"] is None  # nothing trained with it yet
    two = _export(service.alice, job, which="2", to="npz")
    assert two.headers["x-revtune-meta-iter"] == "2"
    padded = _export(service.alice, job, which="002", to="npz")
    assert padded.headers["content-disposition"] == f'attachment; filename="{job}-2-2.npz"'
    np.testing.assert_array_equal(_npz(two)["learning_rate"], learning_rates(1))
    assert json.loads(str(_npz(two)["__export__"]))["objective"] == 0.9  # step 2 trained snapshot 2
    past = _export(service.alice, job, which="4", to="npz")
    assert past.status_code == 404 and "finished 3 meta-iterations" in past.json()["detail"]


def test_snapshot_zero_is_404_naming_what_is_stored_until_the_job_has_it(service, job):
    reply = _export(service.alice, job, which="0", to="npz")
    assert reply.status_code == 404
    detail = reply.json()["detail"]
    assert "snapshot meta_iter 0 is not stored" in detail and "stored at meta_iter 1, 2, 3" in detail
    initial = np.full((STEPS, len(LAYERS)), 0.3)
    _seed_snapshot_zero(service, job, initial)
    reply = _export(service.alice, job, which="0", to="npz")
    assert reply.status_code == 200, reply.text
    z = _npz(reply)
    np.testing.assert_array_equal(z["learning_rate"], initial)
    assert z["init_scale"] == 0.1  # a fixed value, stored once at meta_iter 1, holds at 0 too
    assert json.loads(str(z["__export__"]))["objective"] == 0.5  # step 0 trained snapshot 0


def test_a_best_at_meta_iteration_zero_needs_snapshot_zero(service):
    job_id = submit(service.alice)["id"]
    run(service, job_id, 2, objectives=[0.1, 0.5])
    reply = _export(service.alice, job_id, which="best", to="npz")
    assert reply.status_code == 404
    assert "its best meta-iteration, 0," in reply.json()["detail"]
    assert "stored at meta_iter 1, 2" in reply.json()["detail"]
    _seed_snapshot_zero(service, job_id, np.full((STEPS, len(LAYERS)), 0.3))
    assert _export(service.alice, job_id, which="best", to="npz").headers["x-revtune-meta-iter"] == "0"


def test_no_best_when_every_objective_diverged(service):
    job_id = submit(service.alice)["id"]
    run(service, job_id, 2, objectives=[float("nan"), float("inf")])
    reply = _export(service.alice, job_id, which="best", to="npz")
    assert reply.status_code == 409 and "no best meta-iteration" in reply.json()["detail"]
    assert _export(service.alice, job_id, which="last", to="npz").status_code == 200


@pytest.mark.parametrize("to", ["optax", "pytorch"])
def test_the_bundle_holds_values_schedules_spec_snippet_and_readme(service, job, to, tmp_path):
    reply = _export(service.alice, job, which="best", to=to)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/zip"
    assert reply.headers["content-disposition"] == f'attachment; filename="{job}-best-1-{to}.zip"'
    with zipfile.ZipFile(io.BytesIO(reply.content)) as z:
        assert sorted(z.namelist()) == sorted(
            ["hyperparameters.npz", "schedule.npz", "spec.json", f"train_{to}.py", "README.md"]
        )
        z.extractall(tmp_path)
    spec = service.alice.get(f"/v1/jobs/{job}").json()["spec"]
    assert json.loads((tmp_path / "spec.json").read_text()) == spec
    with np.load(tmp_path / "hyperparameters.npz", allow_pickle=False) as values:
        assert set(values.files) == {"learning_rate", "init_scale", "__spec__", "__export__"}
        assert json.loads(str(values["__spec__"])) == spec
        # momentum and l2 were not stored by this (fake) worker: the spec's init or the default is used,
        # and said so
        assert json.loads(str(values["__export__"]))["defaults_used"] == {"momentum": 0.9, "l2": 0.0}
    with np.load(tmp_path / "schedule.npz", allow_pickle=False) as schedule:
        kinds = ("lr", "momentum", "init_scale", "l2")
        assert set(schedule.files) == {f"{k}/{a}" for k in kinds for a in LAYERS}
        g = quantize_gamma(0.9)
        for i, array in enumerate(LAYERS):
            np.testing.assert_allclose(schedule[f"lr/{array}"], learning_rates(0)[:, i] * (1 - g), rtol=1e-15)
            np.testing.assert_allclose(schedule[f"momentum/{array}"], np.full(STEPS, g), rtol=1e-15)
            assert schedule[f"init_scale/{array}"] == 0.1 and schedule[f"l2/{array}"] == 0
    py_compile.compile(str(tmp_path / f"train_{to}.py"), doraise=True)
    readme = " ".join((tmp_path / "README.md").read_text().split())
    assert "`which=best` resolved to hyperparameter snapshot `meta_iter=1`" in readme
    assert "lr_t = a_t (1 - g_t)" in readme and "momentum = 0.9" in readme
    assert "uniformly with replacement" in readme and "init_scale * N(0, 1)" in readme


def test_the_openapi_schema_documents_the_export(service):
    operation = service.anonymous.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/export"]["get"]
    assert {p["name"]: p["required"] for p in operation["parameters"] if p["in"] == "query"} == {
        "which": True,
        "to": True,
    }
    assert {"200", "401", "404", "409", "422"} <= set(operation["responses"])
    assert set(operation["responses"]["200"]["content"]) == {"application/octet-stream", "application/zip"}
