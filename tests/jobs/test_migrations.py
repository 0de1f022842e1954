"""Migrations: one head, upgrade from empty on both databases, and the result equals the models;
a 0001 database holding rows upgrades to head with its rows intact and readable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from alembic.script import ScriptDirectory
from argon2 import PasswordHasher
from sqlalchemy import create_engine, text

import migrations
from jobs import db
from jobs import repository as repo
from jobs.db import session_factory
from jobs.spec import DatasetShape, validate_spec


def test_there_is_a_single_head():
    assert len(ScriptDirectory.from_config(migrations.config()).get_heads()) == 1
    assert migrations.head()


def test_upgrade_from_empty_matches_the_models_on_both_databases(tmp_path, make_postgres_database):
    for url in (f"sqlite:///{tmp_path / 'fresh.db'}", make_postgres_database("revtune_migrate")):
        assert migrations.current(url) is None
        assert "revtune db upgrade" in migrations.check(url)
        migrations.upgrade(url)
        assert migrations.current(url) == migrations.head() and migrations.check(url) is None
        assert migrations.differences(url) == []
        migrations.upgrade(url)  # idempotent
        assert migrations.current(url) == migrations.head()


# ---- upgrading a database that holds data ------------------------------------------------------

_T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
_SECRET = "s3cret-of-a-0001-key"
_LEARNING_RATES = np.array([[0.3, 0.25, 0.2], [0.1, 0.05, 0.01]], dtype="<f8")
_SPEC = {
    "name": "old-run",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 25},
    "model": {"kind": "mlp", "hidden": [8]},
    "training": {"steps": 3},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True}},
    "meta": {"iterations": 3},
}
_STORED_SPEC = validate_spec(_SPEC).to_dict()  # what create_job stores


def _at(dialect: str, minutes: int) -> str:
    """``_T0 + minutes`` as the 0001 application stored it: naive UTC text on SQLite, timestamptz on
    PostgreSQL."""
    when = _T0 + timedelta(minutes=minutes)
    if dialect == "sqlite":
        return when.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return when.isoformat()


def _fill_0001(url: str) -> None:
    """One row (or more) in every 0001 table, written with raw SQL against the 0001 schema."""
    engine = create_engine(url)
    dialect = engine.dialect.name
    json_ = "CAST({} AS JSON)" if dialect == "postgresql" else "{}"
    rows = [
        (
            "INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, :at)",
            {"id": "t1", "name": "alice"},
            0,
        ),
        (
            "INSERT INTO api_keys (id, tenant_id, secret_hash, created_at, revoked_at)"
            " VALUES (:id, 't1', :hash, :at, NULL)",
            {"id": "k1", "hash": PasswordHasher().hash(_SECRET)},
            1,
        ),
        (
            "INSERT INTO datasets (id, tenant_id, name, layout, n_rows, n_train, n_valid, n_test, n_features,"
            " n_classes, sha256, path, size_bytes, created_at) VALUES ('d1', 't1', 'iris', 'xy', 150, 100,"
            " 30, 20, 4, 3, :sha, 'datasets/d1.npz', 5120, :at)",
            {"sha": "ab" * 32},
            2,
        ),
        (
            "INSERT INTO jobs (id, tenant_id, name, status, spec, meta_iter, meta_iterations, best_objective,"
            " best_meta_iter, error, cancel_requested, worker_id, attempts, heartbeat_at, idempotency_key,"
            " created_at, enqueued_at, started_at, finished_at) VALUES ('j1', 't1', 'old-run', 'running',"
            f" {json_.format(':spec')}, 2, 3, 0.25, 2, NULL, :false, 'host:1', 1, :at, 'idem-1', :at, :at,"
            " :at, NULL)",
            {"spec": json.dumps(_STORED_SPEC), "false": False},
            3,
        ),
        (
            "INSERT INTO jobs (id, tenant_id, name, status, spec, meta_iter, meta_iterations,"
            " cancel_requested, attempts, created_at, enqueued_at) VALUES ('j2', 't1', 'waiting', 'queued',"
            f" {json_.format(':spec')}, 0, 3, :false, 0, :at, :at)",
            {"spec": json.dumps({**_STORED_SPEC, "name": "waiting"}), "false": False},
            4,
        ),
        *(
            (
                "INSERT INTO steps (job_id, meta_iter, objective, train_loss, valid_loss, valid_error,"
                " test_loss, test_error, hypergrad_norm, elapsed_s, reversal_exact, created_at) VALUES"
                " ('j1', :k, :objective, 1.5, :objective, 0.125, NULL, NULL, 0.75, :elapsed, :true, :at)",
                {"k": k, "objective": objective, "elapsed": 2.5 * k, "true": True},
                3 + k,
            )
            for k, objective in ((1, 0.5), (2, 0.25))
        ),
        *(
            (
                "INSERT INTO hyper_snapshots (job_id, meta_iter, name, shape, axes, labels, learned, data)"
                f" VALUES ('j1', :k, 'learning_rate', {json_.format(':shape')}, {json_.format(':axes')},"
                f" {json_.format(':labels')}, :true, :data)",
                {
                    "k": k,
                    "shape": json.dumps([2, 3]),
                    "axes": json.dumps(["layer", "step"]),
                    "labels": json.dumps({"layer": ["W0", "W1"], "step": [0, 1, 2]}),
                    "true": True,
                    "data": (_LEARNING_RATES * k).tobytes(),
                },
                None,
            )
            for k in (1, 2)
        ),
        (
            "INSERT INTO checkpoints (job_id, meta_iter, data, created_at) VALUES ('j1', 2, :data, :at)",
            {"data": b"\x00checkpoint-after-2\xff"},
            6,
        ),
    ]
    try:
        with engine.begin() as connection:
            for sql, params, minutes in rows:
                if minutes is not None:
                    params = {**params, "at": _at(dialect, minutes)}
                connection.execute(text(sql), params)
    finally:
        engine.dispose()


def _raw(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql))]
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_0001_database_with_rows_keeps_them_readable(backend, request, tmp_path):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("make_postgres_database")("revtune_migrate_rows")
    migrations.upgrade(url, "0001")
    assert migrations.current(url) == "0001"
    _fill_0001(url)

    migrations.upgrade(url)
    assert migrations.current(url) == migrations.head() and migrations.check(url) is None
    assert migrations.differences(url) == []

    # every row survives, and the columns added since 0001 hold their documented defaults
    assert _raw(url, "SELECT id, name FROM tenants") == [("t1", "alice")]
    assert _raw(url, "SELECT id, tenant_id, revoked_at FROM api_keys") == [("k1", "t1", None)]
    assert _raw(url, "SELECT id, requeue_after FROM jobs ORDER BY id") == [("j1", None), ("j2", None)]  # 0002
    assert _raw(url, "SELECT id, n_tasks, task_rows FROM datasets") == [("d1", 1, None)]  # 0003
    assert _raw(url, "SELECT id, deaths FROM jobs ORDER BY id") == [("j1", 0), ("j2", 0)]  # 0004
    assert _raw(url, "SELECT origin FROM jobs ORDER BY id") == [("service",), ("service",)]  # 0007
    assert _raw(url, "SELECT job_id, meta_iter FROM steps ORDER BY meta_iter") == [("j1", 1), ("j1", 2)]
    assert _raw(url, "SELECT meta_iter, name FROM hyper_snapshots ORDER BY meta_iter") == [
        (1, "learning_rate"),
        (2, "learning_rate"),
    ]
    assert _raw(url, "SELECT job_id, meta_iter FROM checkpoints") == [("j1", 2)]

    # ... and the repository reads them as it reads its own
    sessions = session_factory(url)
    try:
        with sessions() as s:
            assert repo.authenticate(s, f"rt_k1_{_SECRET}") == "t1"
            assert repo.authenticate(s, "rt_k1_wrong") is None
            assert [(k.id, k.tenant, k.created_at, k.revoked_at) for k in repo.list_api_keys(s)] == [
                ("k1", "alice", _T0 + timedelta(minutes=1), None)
            ]

            job = repo.get_job(s, "t1", "j1")
            assert (job.name, job.status, job.spec, job.meta_iter, job.meta_iterations) == (
                "old-run",
                "running",
                _STORED_SPEC,
                2,
                3,
            )
            assert (job.best_objective, job.best_meta_iter, job.cancel_requested, job.attempts) == (
                0.25,
                2,
                False,
                1,
            )
            assert (job.worker_id, job.idempotency_key, job.requeue_after) == ("host:1", "idem-1", None)
            assert job.created_at == job.heartbeat_at == job.started_at == _T0 + timedelta(minutes=3)
            assert job.finished_at is None
            assert [j.id for j in repo.list_jobs(s, "t1").items] == ["j2", "j1"]  # newest first
            again, created = repo.create_job(s, "t1", validate_spec(_SPEC), idempotency_key="idem-1")
            assert (again.id, created) == ("j1", False)

            steps = repo.list_steps(s, "t1", "j1")
            assert [
                (st.meta_iter, st.objective, st.test_loss, st.elapsed_s, st.reversal_exact)
                for st in steps.items
            ] == [
                (1, 0.5, None, 2.5, True),
                (2, 0.25, None, 5.0, True),
            ]
            assert steps.next_after is None

            meta_iter, snapshots = repo.list_hyperparameters(s, "t1", "j1")
            assert (meta_iter, [h.name for h in snapshots]) == (2, ["learning_rate"])
            value = repo.get_hyperparameter(s, "t1", "j1", "learning_rate", meta_iter=1)
            assert (value.shape, value.axes, value.learned) == ([2, 3], ["layer", "step"], True)
            assert value.labels == {"layer": ["W0", "W1"], "step": [0, 1, 2]}
            np.testing.assert_array_equal(value.values, _LEARNING_RATES)

            dataset = repo.get_dataset(s, "t1", "d1")
            assert (dataset.n_tasks, dataset.task_rows, dataset.size_bytes) == (1, None, 5120)
            assert repo.dataset_shape(s, "t1", "d1") == DatasetShape(
                n_features=4,
                n_classes=3,
                n_rows=150,
                layout="xy",
                n_train=100,
                n_valid=30,
                n_test=20,
                n_tasks=1,
                split_unit=1,
                task_rows=0,
            )

            # the worker's side: the queued job is stale by its enqueued_at (requeue_after is NULL),
            # and the silent running job is claimed with its checkpoint
            later = _T0 + timedelta(hours=1)
            assert repo.stale_jobs(s, now=later, heartbeat_timeout_s=60, queued_timeout_s=60) == ["j1", "j2"]
            claim = repo.claim_job(s, "j1", "host:2", heartbeat_timeout_s=60, now=later)
            assert claim is not None
            assert (claim.attempt, claim.meta_iter, claim.spec) == (2, 2, _STORED_SPEC)
            assert claim.checkpoint == b"\x00checkpoint-after-2\xff"
            s.rollback()
    finally:
        db.dispose(url)
