"""The repository on both databases: the worker protocol, idempotency, pagination, isolation."""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select

from jobs import repository as repo
from jobs.db import session_factory
from jobs.errors import Conflict, InvalidInput, NotFound
from jobs.models import ApiKey, HyperSnapshot, Step, utcnow
from jobs.spec import validate_spec
from jobs.states import IllegalTransition

SPEC = {
    "name": "tiny",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 25},
    "model": {"kind": "mlp", "hidden": [8]},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True}},
    "meta": {"iterations": 3},
}


@pytest.fixture
def sessions(database_url):
    return session_factory(database_url)


@pytest.fixture
def tenant(sessions) -> str:
    with sessions() as s:
        t = repo.get_or_create_tenant(s, "alice")
        s.commit()
        return t.id


def _spec(**changes):
    return validate_spec({**SPEC, **changes})


def _create(sessions, tenant, **kwargs):
    with sessions() as s:
        job, created = repo.create_job(s, tenant, _spec(), **kwargs)
        s.commit()
        return job, created


def _step(k: int, objective: float) -> dict:
    return {
        "meta_iter": k,
        "objective": objective,
        "train_loss": objective + 1,
        "valid_loss": objective,
        "valid_error": 0.1,
        "test_loss": None,
        "test_error": None,
        "hypergrad_norm": 2.0,
        "elapsed_s": 0.5,
        "reversal_exact": True,
    }


def _hypers(k: int) -> dict:
    return {
        "learning_rate": {
            "values": np.full((5, 4), 0.3 + k, dtype=np.float32),
            "axes": ["step", "layer"],
            "labels": {"step": list(range(5)), "layer": ["layer0.W", "layer0.b", "layer1.W", "layer1.b"]},
            "learned": True,
        },
        "momentum": {"values": np.float64(0.9), "axes": [], "labels": {}, "learned": False},
    }


def _claim(sessions, job_id, worker="w1", **kwargs):
    with sessions() as s:
        claim = repo.claim_job(s, job_id, worker, **kwargs)
        s.commit()
        return claim


def _record(sessions, job_id, claim, k, objective=1.0, checkpoint=b"ckpt"):
    with sessions() as s:
        cancel = repo.record_meta_iteration(
            s,
            job_id,
            claim,
            step=_step(k, objective),
            hyperparameters=_hypers(k),
            checkpoint=checkpoint + bytes([k]),
        )
        s.commit()
        return cancel


def test_a_job_runs_through_the_worker_protocol(sessions, tenant):
    job, created = _create(sessions, tenant)
    assert created and job.status == "queued" and job.meta_iterations == 3
    claim = _claim(sessions, job.id)
    assert claim is not None and claim.checkpoint is None and claim.spec["training"] == {"steps": 5}
    assert _claim(sessions, job.id, "w2") is None, "a live running job is not claimable twice"

    assert _record(sessions, job.id, claim, 0, objective=2.0) is False
    assert _record(sessions, job.id, claim, 1, objective=1.5) is False
    with sessions() as s:
        j = repo.get_job(s, tenant, job.id)
        assert (j.status, j.meta_iter, j.best_objective, j.best_meta_iter) == ("running", 2, 1.5, 1)
        assert j.started_at is not None
        assert repo.finish_job(s, job.id, claim, "succeeded")
        s.commit()
    with sessions() as s:
        j = repo.get_job(s, tenant, job.id)
        assert j.status == "succeeded" and j.finished_at >= j.started_at and j.finished_at.tzinfo is not None
        page = repo.list_steps(s, tenant, job.id)
        assert [st.meta_iter for st in page.items] == [0, 1] and page.next_after is None
        assert page.items[0].test_loss is None and page.items[0].reversal_exact is True


def test_recording_a_meta_iteration_twice_never_duplicates_a_step(sessions, tenant):
    job, _ = _create(sessions, tenant)
    claim = _claim(sessions, job.id)
    _record(sessions, job.id, claim, 0)
    _record(sessions, job.id, claim, 0)  # a retried commit
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Step).where(Step.job_id == job.id)) == 1
        assert (
            s.scalar(select(func.count()).select_from(HyperSnapshot).where(HyperSnapshot.job_id == job.id))
            == 2
        )
    with sessions() as s, pytest.raises(Conflict, match="before meta-iteration 1"):
        repo.record_meta_iteration(s, job.id, claim, step=_step(5, 1.0), hyperparameters={}, checkpoint=b"")


def test_a_dead_workers_job_is_requeued_and_resumed_from_its_checkpoint(sessions, tenant):
    job, _ = _create(sessions, tenant)
    first = _claim(sessions, job.id, "w1")
    _record(sessions, job.id, first, 0, checkpoint=b"after-")
    later = utcnow() + timedelta(seconds=120)
    with sessions() as s:
        stale = repo.stale_jobs(s, now=later, heartbeat_timeout_s=60, queued_timeout_s=600)
        assert stale == [job.id]
        assert repo.requeue(s, job.id, now=later, heartbeat_timeout_s=60)
        # A second reaper racing on the same job finds nothing to do.
        assert not repo.requeue(s, job.id, now=later, heartbeat_timeout_s=60)
        s.commit()
    second = _claim(sessions, job.id, "w2", now=later)
    assert second.checkpoint == b"after-\x00" and second.meta_iter == 1 and second.attempt == 2
    # The first worker wakes up: everything it writes is refused.
    with sessions() as s:
        with pytest.raises(repo.ClaimLost):
            repo.record_meta_iteration(
                s, job.id, first, step=_step(1, 1.0), hyperparameters={}, checkpoint=b""
            )
        s.rollback()
        assert not repo.heartbeat(s, job.id, first)
        assert not repo.finish_job(s, job.id, first, "failed", error="late")
    _record(sessions, job.id, second, 1)
    with sessions() as s:
        assert (
            repo.get_job(s, tenant, job.id).meta_iter == 2
            and repo.get_job(s, tenant, job.id).worker_id == "w2"
        )


def test_a_running_job_with_a_stale_heartbeat_can_be_claimed_directly(sessions, tenant):
    job, _ = _create(sessions, tenant)
    _claim(sessions, job.id, "w1")
    assert _claim(sessions, job.id, "w2") is None
    later = utcnow() + timedelta(seconds=61)
    assert _claim(sessions, job.id, "w2", now=later, heartbeat_timeout_s=60).worker_id == "w2"


def test_only_one_of_many_racing_workers_claims_a_job(sessions, tenant):
    job, _ = _create(sessions, tenant)
    claims, barrier = [], threading.Barrier(4)

    def race(i):
        barrier.wait()
        claims.append(_claim(sessions, job.id, f"w{i}"))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c is not None for c in claims) == 1


def test_unclaimed_queued_jobs_are_found_and_re_enqueued_once(sessions, tenant):
    job, _ = _create(sessions, tenant)
    with sessions() as s:
        assert repo.stale_jobs(s, heartbeat_timeout_s=60, queued_timeout_s=120) == []
        later = utcnow() + timedelta(seconds=121)
        assert repo.stale_jobs(s, now=later, heartbeat_timeout_s=60, queued_timeout_s=120) == [job.id]
        assert repo.requeue(s, job.id, now=later, queued_timeout_s=120)
        assert not repo.requeue(s, job.id, now=later, queued_timeout_s=120)
        s.commit()
        assert repo.stale_jobs(s, now=later, heartbeat_timeout_s=60, queued_timeout_s=120) == []


def test_cancel_queued_is_immediate_running_is_flagged_and_reaped_running_stays_cancelled(sessions, tenant):
    queued, _ = _create(sessions, tenant)
    with sessions() as s:
        assert repo.request_cancel(s, tenant, queued.id).status == "cancelled"
        s.commit()
    assert _claim(sessions, queued.id) is None

    running, _ = _create(sessions, tenant)
    claim = _claim(sessions, running.id)
    with sessions() as s:
        j = repo.request_cancel(s, tenant, running.id)
        assert j.status == "running" and j.cancel_requested
        s.commit()
    assert _record(sessions, running.id, claim, 0) is True
    later = utcnow() + timedelta(seconds=300)
    with sessions() as s:
        # The worker died before finishing: the reaper ends it cancelled rather than running it again.
        assert repo.requeue(s, running.id, now=later, heartbeat_timeout_s=60) is False
        s.commit()
        assert repo.get_job(s, tenant, running.id).status == "cancelled"
        with pytest.raises(Conflict):
            repo.delete_job(s, tenant, _create(sessions, tenant)[0].id)


def test_finished_jobs_cannot_be_cancelled_or_moved(sessions, tenant):
    job, _ = _create(sessions, tenant)
    claim = _claim(sessions, job.id)
    with sessions() as s:
        repo.finish_job(s, job.id, claim, "failed", error="diverged")
        s.commit()
    with sessions() as s:
        with pytest.raises(Conflict, match="already failed"):
            repo.request_cancel(s, tenant, job.id)
        with pytest.raises(IllegalTransition):
            repo.finish_job(s, job.id, claim, "running")
        assert not repo.finish_job(s, job.id, claim, "succeeded"), "a failed job stays failed"
        assert repo.get_job(s, tenant, job.id).error == "diverged"


def test_delete_removes_the_job_and_all_its_rows(sessions, tenant):
    job, _ = _create(sessions, tenant)
    claim = _claim(sessions, job.id)
    with sessions() as s:
        with pytest.raises(Conflict, match="running"):
            repo.delete_job(s, tenant, job.id)
    _record(sessions, job.id, claim, 0)
    with sessions() as s:
        repo.finish_job(s, job.id, claim, "succeeded")
        repo.delete_job(s, tenant, job.id)
        s.commit()
    with sessions() as s:
        with pytest.raises(NotFound):
            repo.get_job(s, tenant, job.id)
        assert s.scalar(select(func.count()).select_from(Step)) == 0
        assert s.scalar(select(func.count()).select_from(HyperSnapshot)) == 0


def test_idempotency_key_returns_the_first_job_and_refuses_another_spec(sessions, tenant):
    first, created = _create(sessions, tenant, idempotency_key="k1")
    again, created_again = _create(sessions, tenant, idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    with sessions() as s:
        other = repo.get_or_create_tenant(s, "bob")
        theirs, created = repo.create_job(s, other.id, _spec(), idempotency_key="k1")
        assert created and theirs.id != first.id, "keys are per tenant"
        with pytest.raises(Conflict, match="different spec"):
            repo.create_job(s, tenant, _spec(seed=3), idempotency_key="k1")


def test_jobs_page_newest_first_with_a_stable_cursor_and_a_status_filter(sessions, tenant):
    ids = [_create(sessions, tenant)[0].id for _ in range(5)]
    _claim(sessions, ids[1])
    seen, cursor = [], None
    with sessions() as s:
        while True:
            page = repo.list_jobs(s, tenant, limit=2, cursor=cursor)
            seen += [j.id for j in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == ids[::-1]
        assert [j.id for j in repo.list_jobs(s, tenant, status="running").items] == [ids[1]]
        assert len(repo.list_jobs(s, tenant, status="queued").items) == 4
        with pytest.raises(InvalidInput) as e:
            repo.list_jobs(s, tenant, status="paused")
        assert e.value.loc == ["query", "status"]
        with pytest.raises(InvalidInput):
            repo.list_jobs(s, tenant, cursor="garbage!")


def test_steps_page_with_the_after_cursor(sessions, tenant):
    job, _ = _create(sessions, tenant)
    claim = _claim(sessions, job.id)
    for k in range(3):
        _record(sessions, job.id, claim, k)
    with sessions() as s:
        page = repo.list_steps(s, tenant, job.id, limit=2)
        assert [st.meta_iter for st in page.items] == [0, 1] and page.next_after == 1
        page = repo.list_steps(s, tenant, job.id, after=1, limit=2)
        assert [st.meta_iter for st in page.items] == [2] and page.next_after is None
        assert repo.list_steps(s, tenant, job.id, after=2).items == []


def test_hyperparameters_round_trip_in_float64_at_every_recorded_meta_iteration(sessions, tenant):
    job, _ = _create(sessions, tenant)
    with sessions() as s:
        assert repo.list_hyperparameters(s, tenant, job.id) == (0, [])
    claim = _claim(sessions, job.id)
    for k in range(2):
        _record(sessions, job.id, claim, k)
    with sessions() as s:
        meta_iter, rows = repo.list_hyperparameters(s, tenant, job.id)
        assert meta_iter == 2 and [r.name for r in rows] == ["learning_rate", "momentum"]
        lr = repo.get_hyperparameter(s, tenant, job.id, "learning_rate", meta_iter=1)
        np.testing.assert_array_equal(lr.values, np.full((5, 4), np.float32(0.3), dtype=np.float64))
        assert (
            lr.values.dtype == np.float64
            and lr.axes == ["step", "layer"]
            and lr.labels["layer"][0] == "layer0.W"
        )
        assert repo.get_hyperparameter(s, tenant, job.id, "momentum").values.shape == ()
        with pytest.raises(NotFound, match="meta_iter 7"):
            repo.get_hyperparameter(s, tenant, job.id, "learning_rate", meta_iter=7)
        with pytest.raises(NotFound, match="known: learning_rate, momentum"):
            repo.get_hyperparameter(s, tenant, job.id, "l2")


def test_another_tenant_sees_nothing(sessions, tenant):
    job, _ = _create(sessions, tenant)
    with sessions() as s:
        bob = repo.get_or_create_tenant(s, "bob").id
        ds = _dataset(s, tenant)
        s.commit()
        for call in (
            lambda: repo.get_job(s, bob, job.id),
            lambda: repo.request_cancel(s, bob, job.id),
            lambda: repo.delete_job(s, bob, job.id),
            lambda: repo.list_steps(s, bob, job.id),
            lambda: repo.list_hyperparameters(s, bob, job.id),
            lambda: repo.get_dataset(s, bob, ds.id),
            lambda: repo.delete_dataset(s, bob, ds.id),
        ):
            with pytest.raises(NotFound):
                call()
        assert repo.list_jobs(s, bob).items == [] and repo.list_datasets(s, bob) == []
        assert repo.dataset_shape(s, bob, ds.id) is None
        assert repo.dataset_shape(s, tenant, ds.id).n_rows == 300


def _dataset(s, tenant_id):
    return repo.create_dataset(
        s,
        tenant_id,
        dataset_id="d" * 32,
        name="mine",
        layout="xy",
        n_rows=300,
        n_train=300,
        n_valid=0,
        n_test=0,
        n_features=4,
        n_classes=3,
        sha256="0" * 64,
        path="datasets/" + "d" * 32 + ".npz",
        size_bytes=1000,
    )


def test_a_dataset_used_by_an_active_job_cannot_be_deleted(sessions, tenant):
    with sessions() as s:
        ds = _dataset(s, tenant)
        repo.create_job(
            s, tenant, validate_spec({**SPEC, "dataset": {"id": ds.id, "train": 100, "valid": 50}})
        )
        s.commit()
        with pytest.raises(Conflict, match="active job"):
            repo.delete_dataset(s, tenant, ds.id)


def test_api_keys_verify_hashed_and_stop_working_when_revoked(sessions):
    with sessions() as s:
        key_id, key = repo.create_api_key(s, "carol")
        s.commit()
        assert key.startswith(f"rt_{key_id}_")
        tenant = repo.authenticate(s, key)
        assert tenant == repo.get_or_create_tenant(s, "carol").id
        stored = repo.list_api_keys(s)
        assert [(k.id, k.tenant, k.revoked_at) for k in stored] == [(key_id, "carol", None)]
        assert key.split("_", 2)[2] not in repr(s.get(ApiKey, key_id).secret_hash)
        assert repo.authenticate(s, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert repo.authenticate(s, "rt_nosuchkey_secret") is None
        assert repo.authenticate(s, "not a key") is None
        assert repo.revoke_api_key(s, key_id) and not repo.revoke_api_key(s, "nosuchkey")
        s.commit()
        assert repo.authenticate(s, key) is None
