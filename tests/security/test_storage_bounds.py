"""Storage per job is bounded: fixed hyperparameters are stored once, large learned ones every k-th
meta-iteration and the last, beside the initial values (meta_iter 0) and the best-scoring ones
(docs/API.md, "Hyperparameters"), and the reads answer as before.

A small real job runs through `worker.runner.run_job` on SQLite and PostgreSQL; the values read back
are compared with the `Record`s the engine handed the worker. The tenant quotas are tested through
the API in tests/api/test_storage_quotas.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import select

from jobs import models, repository
from jobs.db import session_factory
from jobs.errors import NotFound
from jobs.repository import results
from jobs.settings import Settings
from jobs.spec import validate_spec
from worker import runner

pytestmark = pytest.mark.integration

ITERATIONS = 7
# Logistic regression on digits, 5 steps: learned learning_rate (5 values) and momentum (1); fixed
# init_scale (1) and a per-layer l2 (2: layer0.W, layer0.b).
SPEC = {
    "name": "storage-bounds",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "global", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "global", "learn": False},
        "l2": {"init": 1e-4, "granularity": "layer", "learn": False},
    },
    "meta": {"iterations": ITERATIONS},
    "seed": 5,
}
LEARNED = ["learning_rate", "momentum"]
FIXED = ["init_scale", "l2"]
LEARNED_BYTES = (5 + 1) * 8
FIXED_BYTES = (1 + 2) * 8
# Room for the fixed ones, the initial and the best's learned values, and three learned snapshots on
# the grid: k = ceil(7 / 3) = 3, stored at 3, 6 and 7.
SMALL_BUDGET = FIXED_BYTES + 5 * LEARNED_BYTES


def best_meta_iter(records) -> int:
    """The snapshot the lowest objective among ``records`` scored (step k trains snapshot k)."""
    return int(np.nanargmin([r.objective for r in records]))


def settings_for(database_url: str, data_dir, **changes) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url="memory://",
        data_dir=data_dir,
        auth="off",
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=5,
        **changes,
    )


@pytest.fixture
def captured(monkeypatch) -> list:
    """The `Record`s the engine hands the worker's callback, in order."""
    records: list = []
    record = runner.JobRun.record

    def capture(self, rec):
        records.append(rec)
        return record(self, rec)

    monkeypatch.setattr(runner.JobRun, "record", capture)
    return records


def run(settings: Settings, spec: dict = SPEC) -> tuple[str, str, str | None]:
    """Submit ``spec`` as a tenant and run it in this process: ``(tenant id, job id, status)``."""
    sessions = session_factory(settings)
    with sessions() as session:
        tenant = repository.get_or_create_tenant(session, "storage-tests").id
        job, _ = repository.create_job(session, tenant, validate_spec(spec))
        session.commit()
    return tenant, job.id, runner.run_job(job.id, settings=settings, sessions=sessions)


def stored(settings: Settings, job_id: str) -> dict[str, list[int]]:
    """name -> the meta_iters of its HyperSnapshot rows."""
    with session_factory(settings)() as session:
        rows = session.execute(
            select(models.HyperSnapshot.name, models.HyperSnapshot.meta_iter)
            .where(models.HyperSnapshot.job_id == job_id)
            .order_by(models.HyperSnapshot.name, models.HyperSnapshot.meta_iter)
        ).all()
    found: dict[str, list[int]] = {}
    for name, meta_iter in rows:
        found.setdefault(name, []).append(meta_iter)
    return found


def stored_bytes(settings: Settings, job_id: str) -> int:
    with session_factory(settings)() as session:
        blobs = session.scalars(
            select(models.HyperSnapshot.data).where(models.HyperSnapshot.job_id == job_id)
        ).all()
    return sum(len(b) for b in blobs)


def check_reads_at(settings, tenant, job_id, meta_iter: int, record, names=(*FIXED, *LEARNED)) -> None:
    """The reads at ``meta_iter`` give what ``record`` (the engine's, after that meta-iteration) says."""
    with session_factory(settings)() as session:
        at, rows = repository.list_hyperparameters(session, tenant, job_id, meta_iter=meta_iter)
        assert at == meta_iter
        assert [r.name for r in rows] == sorted(names)
        for row in rows:
            want = record.hyperparameters[row.name]
            assert (row.shape, row.axes, row.learned) == (
                list(np.shape(want.values)),
                want.axes,
                want.learned,
            )
            hp = repository.get_hyperparameter(session, tenant, job_id, row.name, meta_iter=meta_iter)
            assert (hp.meta_iter, hp.learned, hp.axes) == (meta_iter, want.learned, want.axes)
            assert hp.labels == want.labels
            np.testing.assert_array_equal(hp.values, np.asarray(want.values, np.float64), err_msg=row.name)


def test_the_rule_keeps_a_job_within_its_budget():
    assert results.snapshot_interval(learned_bytes=48, fixed_bytes=24, iterations=7, budget_bytes=None) == 1
    assert results.snapshot_interval(learned_bytes=48, fixed_bytes=24, iterations=7, budget_bytes=10**6) == 1
    assert (
        results.snapshot_interval(
            learned_bytes=48, fixed_bytes=24 + 2 * 48, iterations=7, budget_bytes=SMALL_BUDGET
        )
        == 3
    )
    # one snapshot does not fit: the last is kept anyway
    assert results.snapshot_interval(learned_bytes=48, fixed_bytes=24, iterations=7, budget_bytes=50) == 7
    # the brief's job at the limits: 975k learned hyperparameters, 500 meta-iterations, 128 MiB; the
    # worker counts the initial and the best's snapshots with the fixed ones
    learned, budget = 975_000 * 8, 128 * 1024 * 1024
    extra = 2 * learned
    k = results.snapshot_interval(
        learned_bytes=learned, fixed_bytes=extra, iterations=500, budget_bytes=budget
    )
    kept = [m for m in range(1, 501) if results.stores_learned(m, k, 500)]
    assert (k, len(kept), kept[-1]) == (34, 15, 500)
    # the smallest k that fits
    assert extra + len(kept) * learned <= budget < extra + math.ceil(500 / (k - 1)) * learned
    for iterations in range(1, 60):
        for fits in range(1, 70):
            k = results.snapshot_interval(
                learned_bytes=10, fixed_bytes=5, iterations=iterations, budget_bytes=5 + 10 * fits
            )
            kept = [m for m in range(1, iterations + 1) if results.stores_learned(m, k, iterations)]
            assert kept[-1] == iterations and len(kept) <= fits, (iterations, fits, k)
            assert k == 1 if fits >= iterations else math.ceil(iterations / (k - 1)) > fits  # smallest


def test_fixed_hyperparameters_are_stored_once_and_read_as_before(database_url, tmp_path, captured):
    settings = settings_for(database_url, tmp_path)
    tenant, job_id, status = run(settings)
    assert status == "succeeded" and len(captured) == ITERATIONS
    sizes = {
        learned: sum(
            np.size(v.values) * 8 for v in captured[0].hyperparameters.values() if v.learned == learned
        )
        for learned in (True, False)
    }
    assert (sizes[True], sizes[False]) == (LEARNED_BYTES, FIXED_BYTES)

    every = list(range(1, ITERATIONS + 1))
    assert stored(settings, job_id) == {
        "init_scale": [0],
        "l2": [0],
        "learning_rate": [0, *every],
        "momentum": [0, *every],
    }
    # every meta_iter reads as when everything was stored after every meta-iteration
    for meta_iter in every:
        check_reads_at(settings, tenant, job_id, meta_iter, captured[meta_iter - 1])
    with session_factory(settings)() as session:
        latest, rows = repository.list_hyperparameters(session, tenant, job_id)
        assert latest == ITERATIONS and [r.name for r in rows] == [
            "init_scale",
            "l2",
            "learning_rate",
            "momentum",
        ]
        for name in FIXED:
            assert repository.get_hyperparameter(session, tenant, job_id, name).meta_iter == ITERATIONS
        # meta_iter 0: the values the first meta-iteration trained with, fixed ones included
        at_start, rows = repository.list_hyperparameters(session, tenant, job_id, meta_iter=0)
        assert at_start == 0 and [r.name for r in rows] == sorted([*FIXED, *LEARNED])
        meta_iter = ITERATIONS + 1
        with pytest.raises(NotFound, match=f"meta_iter {meta_iter}"):
            repository.list_hyperparameters(session, tenant, job_id, meta_iter=meta_iter)
        with pytest.raises(NotFound, match=f"meta_iter {meta_iter}"):
            repository.get_hyperparameter(session, tenant, job_id, "l2", meta_iter=meta_iter)


def test_large_learned_hyperparameters_are_stored_every_kth_and_the_last(database_url, tmp_path, captured):
    settings = settings_for(database_url, tmp_path, max_snapshot_bytes_per_job=SMALL_BUDGET)
    tenant, job_id, status = run(settings)
    assert status == "succeeded" and len(captured) == ITERATIONS

    # the grid, the initial values and the best's (where the grid does not keep them), nothing else
    kept = sorted({0, 3, 6, 7, best_meta_iter(captured)})
    assert stored(settings, job_id) == {"init_scale": [0], "l2": [0], "learning_rate": kept, "momentum": kept}
    assert stored_bytes(settings, job_id) <= SMALL_BUDGET
    for meta_iter in (3, 6, 7):
        check_reads_at(settings, tenant, job_id, meta_iter, captured[meta_iter - 1])
    listed = ", ".join(map(str, kept))
    with session_factory(settings)() as session:
        latest, _ = repository.list_hyperparameters(session, tenant, job_id)
        assert latest == ITERATIONS
        for meta_iter in sorted(set(range(1, 6)) - set(kept)):
            earlier, later = max(m for m in kept if m < meta_iter), min(m for m in kept if m > meta_iter)
            with pytest.raises(NotFound) as listing:
                repository.list_hyperparameters(session, tenant, job_id, meta_iter=meta_iter)
            message = str(listing.value)
            assert f"no hyperparameters recorded at meta_iter {meta_iter}" in message
            assert (
                "REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB" in message and f"stored at meta_iter {listed}" in message
            )
            assert f"nearest stored: {earlier} (earlier) and {later} (later)" in message
            for name in LEARNED:
                with pytest.raises(NotFound, match=f"stored at meta_iter {listed}"):
                    repository.get_hyperparameter(session, tenant, job_id, name, meta_iter=meta_iter)
            # a fixed hyperparameter still answers at every finished meta-iteration, with its value
            for name in FIXED:
                hp = repository.get_hyperparameter(session, tenant, job_id, name, meta_iter=meta_iter)
                want = captured[meta_iter - 1].hyperparameters[name]
                assert (hp.meta_iter, hp.learned) == (meta_iter, False)
                np.testing.assert_array_equal(hp.values, np.asarray(want.values, np.float64))
        with pytest.raises(NotFound, match="meta_iter 8"):
            repository.get_hyperparameter(session, tenant, job_id, "l2", meta_iter=8)


def test_a_job_cancelled_off_the_grid_keeps_its_last_snapshot(database_url, tmp_path, captured, monkeypatch):
    settings = settings_for(database_url, tmp_path, max_snapshot_bytes_per_job=SMALL_BUDGET)
    sessions = session_factory(settings)
    record = runner.JobRun.record  # `captured`'s wrapper

    def cancel_during_the_fourth(self, rec):
        if rec.meta_iter == 3:  # its snapshot is meta_iter 4, not on the grid (3, 6, 7)
            with sessions() as other:
                job = other.get(models.Job, self.job_id)
                repository.request_cancel(other, job.tenant_id, self.job_id)
                other.commit()
        return record(self, rec)

    monkeypatch.setattr(runner.JobRun, "record", cancel_during_the_fourth)
    tenant, job_id, status = run(settings)
    assert status == "cancelled" and len(captured) == 4
    kept = sorted({0, 3, 4, best_meta_iter(captured)})
    assert stored(settings, job_id) == {"init_scale": [0], "l2": [0], "learning_rate": kept, "momentum": kept}
    for meta_iter in (3, 4):
        check_reads_at(settings, tenant, job_id, meta_iter, captured[meta_iter - 1])
    with sessions() as session:
        assert repository.list_hyperparameters(session, tenant, job_id)[0] == 4
