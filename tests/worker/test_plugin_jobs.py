"""Jobs whose model is a plugin, run by `worker.runner.run_job` in this process on a real database: the
plugin's limits checked once it is built, a job whose plugin this worker lacks handed back when another
worker offers it and failed, saying so, when none does; the advertisements and the queue they choose.
(tests/e2e runs the example plugin on real worker processes.)"""

from __future__ import annotations

import pytest
from direct_worker import direct_worker_fixtures

from hypercore import budget, plugins
from jobs import models, repository
from jobs.spec import validate_spec
from worker import runner
from worker.app import QUEUE, plugin_queue
from worker.enqueue import job_queue

pytestmark = pytest.mark.integration

SPEC = {
    "name": "plugin-direct",
    "dataset": {"name": "digits", "train": 60, "valid": 30},
    "model": {"kind": "plugin", "name": "resmlp", "config": {"width": 8, "blocks": 1}},
    "training": {"steps": 4},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "layer", "learn": True}},
    "meta": {"iterations": 2},
}
AD = {"name": "resmlp", "version": "0.1.0", "description": "d", "config_schema": {"type": "object"}}


settings, sessions, _ = direct_worker_fixtures("plugins", max_weights=1000)


@pytest.fixture
def submit(sessions):
    with sessions() as session:
        tenant = repository.get_or_create_tenant(session, "plugin-tests")
        session.commit()

    def submit(spec: dict) -> str:
        with sessions() as session:
            job, _ = repository.create_job(session, tenant.id, validate_spec(spec))
            session.commit()
            return job.id

    return submit


@pytest.fixture
def advertised(sessions):
    """``advertise(worker_id)``: a worker offering resmlp; every advertisement removed afterwards."""

    def advertise(worker_id: str) -> None:
        with sessions.begin() as session:
            repository.advertise_plugins(session, worker_id, [AD])

    yield advertise
    with sessions.begin() as session:
        session.query(models.ModelPluginAd).delete()


@pytest.fixture
def loaded(monkeypatch):
    """This worker loads resmlp (the example package, installed by `make install`)."""
    monkeypatch.setattr(runner, "loaded_plugins", plugins.load(["resmlp"]))


def job_row(sessions, job_id: str) -> models.Job:
    with sessions() as session:
        return session.get(models.Job, job_id)


def test_a_plugin_job_runs_on_a_worker_that_loads_it(settings, sessions, submit, loaded):
    job_id = submit(SPEC)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded"
    assert job_row(sessions, job_id).meta_iter == 2


def test_a_plugin_model_past_the_weight_limit_fails_at_build_naming_it(settings, sessions, submit, loaded):
    job_id = submit({**SPEC, "model": {**SPEC["model"], "config": {"width": 32}}})
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "failed"
    # 64*32 + 32 + 32*32 + 32 + 32*10 + 10 weights, past REVTUNE_MAX_WEIGHTS = 1000
    assert job_row(sessions, job_id).error == "model: the model has 3466 weights; at most 1000 are allowed"


def test_a_plugin_job_past_the_memory_limit_fails_at_build_naming_the_field(
    settings, sessions, submit, loaded
):
    """The API cannot estimate a plugin job's memory (it has no shapes); the worker does, once built,
    with the activations counted on the built model (`hypercore.models.held_activation_units`)."""
    job_id = submit(SPEC)
    tight = settings.model_copy(update={"max_job_memory_bytes": budget.RUNTIME_BYTES + 2**10})
    assert runner.run_job(job_id, settings=tight, sessions=sessions) == "failed"
    row = job_row(sessions, job_id)
    # the largest part: the activations, 64 inputs and 10 outputs and what the gradient keeps of its
    # width-8 layers (40 units: more than their 16 hidden units, fewer than 74 + 16 * 3)
    assert row.error.startswith("dataset.batch_size: this job needs about 1.5 GiB in the worker (activations")
    assert "60 rows of 114 units a step, 90 rows scored; the plugin's counted on its gradient)" in row.error
    assert row.error.endswith(
        "past REVTUNE_MAX_JOB_MEMORY_BYTES = 1.5 GiB: a smaller dataset.batch_size (or fewer rows) needs less"
    )
    assert row.meta_iter == 0
    # the same job fits the default limit (the first test ran it)
    assert runner.run_job(submit(SPEC), settings=settings, sessions=sessions) == "succeeded"


def test_a_job_whose_plugin_no_worker_offers_fails_saying_so(settings, sessions, submit, monkeypatch):
    monkeypatch.setattr(runner, "loaded_plugins", {})
    job_id = submit(SPEC)
    assert job_queue(job_id, settings) == QUEUE
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "failed"
    assert job_row(sessions, job_id).error == (
        "model.name: no worker offers the model plugin 'resmlp' any more (the workers' "
        "REVTUNE_MODEL_PLUGINS, GET /v1/models); resubmit the job once one does"
    )


def test_a_worker_lacking_the_plugin_hands_the_job_to_its_queue(
    settings, sessions, submit, advertised, monkeypatch
):
    monkeypatch.setattr(runner, "loaded_plugins", {})
    advertised("elsewhere:1")
    job_id = submit(SPEC)
    assert job_queue(job_id, settings) == plugin_queue("resmlp") == "revtune.plugin.resmlp"
    sent = []
    assert runner.run_job(job_id, settings=settings, sessions=sessions, enqueue=sent.append) == "queued"
    assert sent == [job_id]
    assert job_row(sessions, job_id).status == "queued"


def test_advertisements_are_listed_while_their_worker_is_seen(sessions, advertised):
    advertised("a:1")
    advertised("b:2")
    with sessions() as session:
        (offered,) = repository.offered_plugins(session, live_within_s=60)
        assert offered.workers == [
            {"worker": "a:1", "version": "0.1.0"},
            {"worker": "b:2", "version": "0.1.0"},
        ]
        # a window the rows are older than: none counts
        session.query(models.ModelPluginAd).update({models.ModelPluginAd.seen_at: models.db_now(-120)})
        assert repository.offered_plugins(session, live_within_s=60) == []
        repository.refresh_plugins(session, "b:2")
        assert [
            w["worker"] for w in repository.offered_plugin(session, "resmlp", live_within_s=60).workers
        ] == ["b:2"]
        repository.withdraw_plugins(session, "b:2")
        assert repository.offered_plugin(session, "resmlp", live_within_s=60) is None
        session.commit()
