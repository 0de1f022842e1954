"""Library runs recorded by the service (origin external), on both databases: no worker claims them,
the reaper fails a silent one instead of re-queueing it, steps are idempotent per meta_iter and in
order, a failed run resumes, another tenant cannot write, and the description is checked."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select

from jobs import repository as repo
from jobs.db import session_factory
from jobs.errors import Conflict, InvalidInput, NotFound
from jobs.external import validate_description
from jobs.models import HyperSnapshot, utcnow
from jobs.repository.results import resolve_which
from jobs.spec import SpecError, SpecLimits, validate_spec
from jobs.states import IllegalTransition, Origin

OWN = {"name": "own-net", "model": {"kind": "my_resnet", "depth": 3}, "meta": {"iterations": 3}}
SPEC = {
    "name": "tiny",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 25},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "step", "learn": True}},
    "meta": {"iterations": 3},
}


@pytest.fixture
def sessions(database_url):
    return session_factory(database_url)


@pytest.fixture
def tenants(sessions) -> tuple[str, str]:
    with sessions() as s:
        a, b = repo.get_or_create_tenant(s, "alice"), repo.get_or_create_tenant(s, "bob")
        s.commit()
        return a.id, b.id


def _record(sessions, tenant, **kwargs):
    with sessions() as s:
        job, _ = repo.create_job(s, tenant, validate_description(OWN), origin=Origin.EXTERNAL, **kwargs)
        s.commit()
        return job.id


def _hypers(k: int) -> dict:
    return {
        "learning_rate": {"values": np.full(5, 0.3 + k), "axes": ["step"], "labels": {}, "learned": True},
        "l2": {"values": np.zeros(()), "axes": [], "labels": {}, "learned": False},
    }


def _step(sessions, tenant, job_id, k, budget=None):
    with sessions() as s:
        done = repo.record_step(
            s,
            tenant,
            job_id,
            step={"meta_iter": k, "objective": 1.0 / (k + 1)},
            hyperparameters=_hypers(k),
            snapshot_budget_bytes=budget,
        )
        s.commit()
        return done


def test_a_recording_is_created_running_and_no_worker_claims_it_even_when_silent(sessions, tenants):
    job_id = _record(sessions, tenants[0])
    with sessions() as s:
        job = repo.get_job(s, tenants[0], job_id)
        assert (job.status, job.origin, job.heartbeat_at is not None) == ("running", "external", True)
        later = utcnow() + timedelta(hours=1)
        assert repo.claim_job(s, job_id, "w1", heartbeat_timeout_s=60, now=later) is None
        s.commit()
        assert repo.get_job(s, tenants[0], job_id).worker_id is None


def test_the_reaper_fails_a_silent_recording_and_never_requeues_it(sessions, tenants):
    job_id = _record(sessions, tenants[0])
    _step(sessions, tenants[0], job_id, 0)
    later = utcnow() + timedelta(minutes=5)
    with sessions() as s:
        stale = repo.stale_jobs(s, now=later, heartbeat_timeout_s=60, queued_timeout_s=120)
        assert stale == [job_id]
        assert repo.requeue(s, job_id, now=later, heartbeat_timeout_s=60, queued_timeout_s=120) is False
        s.commit()
        job = repo.get_job(s, tenants[0], job_id)
        assert job.status == "failed"
        assert job.error.startswith("the recorder of this library run sent no heartbeat for 60 s")
        assert "its 1 recorded meta-iterations are kept" in job.error
        # a worker shutting down hands back only its own jobs
        assert repo.requeue(s, job_id) is False
    with sessions() as s:  # a new recorder resumes it; its records are kept
        assert repo.resume_recording(s, tenants[0], job_id).status == "running"
        s.commit()
        job = repo.get_job(s, tenants[0], job_id)
        assert (job.status, job.error, job.finished_at, job.meta_iter) == ("running", None, None, 1)


def test_a_silent_recording_whose_cancel_was_requested_ends_cancelled(sessions, tenants):
    job_id = _record(sessions, tenants[0])
    with sessions() as s:
        repo.request_cancel(s, tenants[0], job_id)
        s.commit()
    later = utcnow() + timedelta(minutes=5)
    with sessions() as s:
        assert repo.requeue(s, job_id, now=later, heartbeat_timeout_s=60) is False
        s.commit()
        assert repo.get_job(s, tenants[0], job_id).status == "cancelled"


def test_steps_are_idempotent_per_meta_iter_and_refuse_a_gap_or_one_past_the_end(sessions, tenants):
    job_id = _record(sessions, tenants[0])
    assert _step(sessions, tenants[0], job_id, 0) == repo.Recorded(1, True, False)
    assert _step(sessions, tenants[0], job_id, 0) == repo.Recorded(1, False, False)
    with pytest.raises(
        Conflict, match=r"^meta_iter 2: .* has 1 recorded meta-iterations, so the next one is meta_iter 1 "
    ):
        _step(sessions, tenants[0], job_id, 2)
    _step(sessions, tenants[0], job_id, 1)
    _step(sessions, tenants[0], job_id, 2)
    with pytest.raises(InvalidInput, match=r"meta_iter: .*meta.iterations 3, so meta_iter is at most 2"):
        _step(sessions, tenants[0], job_id, 3)
    with sessions() as s:
        rows = s.execute(
            select(HyperSnapshot.meta_iter, HyperSnapshot.name).where(HyperSnapshot.job_id == job_id)
        ).all()
        # fixed ones once, with meta-iteration 0; the learned ones after each
        assert sorted(rows) == [(1, "l2"), (1, "learning_rate"), (2, "learning_rate"), (3, "learning_rate")]
        job = repo.get_job(s, tenants[0], job_id)
        assert (job.meta_iter, job.best_objective, job.best_meta_iter) == (3, 1 / 3, 2)
        lr = repo.get_hyperparameter(s, tenants[0], job_id, "learning_rate", meta_iter=2)
        np.testing.assert_array_equal(lr.values, np.full(5, 1.3))


def test_the_snapshot_budget_thins_the_learned_snapshots_like_a_workers(sessions, tenants):
    job_id = _record(sessions, tenants[0])
    for k in range(3):  # 40 bytes learned, 8 fixed: 2 snapshots fit in 90 bytes, so every 2nd and the last
        _step(sessions, tenants[0], job_id, k, budget=90)
    with sessions() as s:
        stored = s.scalars(
            select(HyperSnapshot.meta_iter).where(
                HyperSnapshot.job_id == job_id, HyperSnapshot.name == "learning_rate"
            )
        ).all()
        assert sorted(stored) == [2, 3]


def _trained_with(k: int) -> dict:
    """What meta-iteration ``k`` trained with (the recorder's ``scored``): learning rate 10 + k."""
    return {
        "learning_rate": {"values": np.full(5, 10.0 + k), "axes": ["step"], "labels": {}, "learned": True},
        "l2": {"values": np.zeros(()), "axes": [], "labels": {}, "learned": False},
    }


def _stored(sessions, job_id) -> dict[int, dict[str, float]]:
    """``{meta_iter: {name: first value}}`` of the job's snapshots."""
    with sessions() as s:
        rows = s.scalars(select(HyperSnapshot).where(HyperSnapshot.job_id == job_id)).all()
        out: dict[int, dict[str, float]] = {}
        for row in rows:
            out.setdefault(row.meta_iter, {})[row.name] = float(np.frombuffer(row.data, "<f8").flat[0])
        return out


@pytest.mark.parametrize(
    ("objectives", "best", "kept"),
    [
        # a best off the grid (meta_iter 1: the grid of a 90-byte budget keeps 2 and 3) keeps its values
        ((1.0, 0.5, 2.0), 1, {0: {"learning_rate": 10.0, "l2": 0.0}, 1: {"learning_rate": 11.0}}),
        # a later best on the grid: the earlier best's values go, the grid's snapshot 2 is the best's
        ((1.0, 0.5, 0.25), 2, {0: {"learning_rate": 10.0, "l2": 0.0}}),
    ],
)
def test_the_values_a_recorded_run_trained_with_are_kept_as_a_worker_keeps_them(
    sessions, tenants, objectives, best, kept
):
    tenant = tenants[0]
    job_id = _record(sessions, tenant)
    for k, objective in enumerate(objectives):
        with sessions() as s:
            repo.record_step(
                s,
                tenant,
                job_id,
                step={"meta_iter": k, "objective": objective},
                hyperparameters=_hypers(k),
                snapshot_budget_bytes=90,
                scored=_trained_with(k),
            )
            s.commit()
    grid = {2: {"learning_rate": 1.3}, 3: {"learning_rate": 2.3}}  # after meta-iterations 1 and 2
    assert _stored(sessions, job_id) == {**kept, **grid}, "the fixed l2 once, with snapshot 0"
    with sessions() as s:
        assert resolve_which(s, tenant, job_id, "best") == best
        assert resolve_which(s, tenant, job_id, "0") == 0


def test_a_recorder_that_sends_no_trained_with_values_keeps_the_fixed_ones_after_meta_iteration_0(
    sessions, tenants
):
    job_id = _record(sessions, tenants[0])
    for k in range(3):
        _step(sessions, tenants[0], job_id, k, budget=90)
    assert _stored(sessions, job_id) == {1: {"l2": 0.0}, 2: {"learning_rate": 1.3}, 3: {"learning_rate": 2.3}}
    with (
        sessions() as s,
        pytest.raises(NotFound, match="its recorder sent no values that meta-iteration trained"),
    ):
        resolve_which(s, tenants[0], job_id, "0")


def test_trained_with_values_that_are_not_the_step_s_hyperparameters_are_refused_naming_them(
    sessions, tenants
):
    job_id = _record(sessions, tenants[0])
    unknown = {**_trained_with(0), "momentum": _trained_with(0)["l2"]}
    reshaped = _trained_with(0)
    reshaped["learning_rate"] = {**reshaped["learning_rate"], "values": np.full(4, 10.0)}
    for scored, loc, message in (
        (unknown, "momentum", "not one of this step's hyperparameters (l2, learning_rate)"),
        (reshaped, "learning_rate", "shape [4], axes ['step'], learned true differ from "),
    ):
        with sessions() as s, pytest.raises(InvalidInput) as caught:
            repo.record_step(
                s,
                tenants[0],
                job_id,
                step={"meta_iter": 0, "objective": 1.0},
                hyperparameters=_hypers(0),
                snapshot_budget_bytes=None,
                scored=scored,
            )
        assert caught.value.loc == ["body", "scored", loc] and message in caught.value.msg
    assert _stored(sessions, job_id) == {}, "nothing is stored"
    assert _step(sessions, tenants[0], job_id, 0).recorded, "and the step is still the next one"


def test_only_a_running_recording_of_the_callers_tenant_takes_writes(sessions, tenants):
    alice, bob = tenants
    job_id = _record(sessions, alice)
    for call in (
        lambda s: repo.record_step(
            s, bob, job_id, step={"meta_iter": 0}, hyperparameters={}, snapshot_budget_bytes=None
        ),
        lambda s: repo.recording_heartbeat(s, bob, job_id),
        lambda s: repo.finish_recording(s, bob, job_id, "succeeded"),
        lambda s: repo.resume_recording(s, bob, job_id),
    ):
        with sessions() as s, pytest.raises(NotFound):
            call(s)
    with sessions() as s:
        service_job, _ = repo.create_job(s, alice, validate_spec(SPEC))
        s.commit()
        with pytest.raises(repo.NotRecorded, match="origin service"):
            repo.record_step(
                s,
                alice,
                service_job.id,
                step={"meta_iter": 0},
                hyperparameters={},
                snapshot_budget_bytes=None,
            )
    with sessions() as s:
        assert repo.finish_recording(s, alice, job_id, "succeeded").status == "succeeded"
        s.commit()
        assert repo.finish_recording(s, alice, job_id, "succeeded").status == "succeeded"  # a retry
        with pytest.raises(IllegalTransition):
            repo.resume_recording(s, alice, job_id)
        with pytest.raises(Conflict, match="is succeeded, not running"):
            repo.recording_heartbeat(s, alice, job_id)


def test_an_idempotency_key_finds_the_recording_and_not_a_service_job(sessions, tenants):
    first = _record(sessions, tenants[0], idempotency_key="run-1")
    assert _record(sessions, tenants[0], idempotency_key="run-1") == first
    with sessions() as s, pytest.raises(Conflict, match="Idempotency-Key 'run-1' was already used"):
        repo.create_job(s, tenants[0], validate_description(OWN), idempotency_key="run-1")


def test_the_description_is_checked_where_it_can_be():
    assert validate_description(OWN).to_dict()["model"] == {"kind": "my_resnet", "depth": 3}
    # a built-in family is checked like a job spec, but not against a worker's size limits
    big = {**SPEC, "training": {"steps": 5000}}
    assert validate_description(big, SpecLimits(max_steps=1000)).to_dict()["training"] == {"steps": 5000}
    cases = {
        ("meta", "iterations"): {**OWN, "meta": {"iterations": 501}},
        ("model", "kind"): {**OWN, "model": {"kind": ""}},
        ("hyperparameters", "dropout"): {**OWN, "hyperparameters": {"dropout": {"init": 0.1}}},
        ("dataset", "train"): {**SPEC, "dataset": {"name": "digits", "valid": 50}},
    }
    for loc, description in cases.items():
        with pytest.raises(SpecError) as caught:
            validate_description(description)
        assert [tuple(e["loc"][:2]) for e in caught.value.errors] == [loc], caught.value.errors
