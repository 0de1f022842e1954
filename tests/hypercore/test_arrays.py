"""`hypercore.arrays`: the JAX-free numpy half of datasets and the one reader of the ``.npz`` upload
layout, which the service, the worker and ``revtune run`` all go through."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from hypercore import arrays
from hypercore.arrays import DataError, LayoutError, NpzShape, dataset_from_npz, inspect_arrays, read_npz


def test_importing_the_numpy_half_imports_no_jax():
    code = "import sys, hypercore.arrays; assert 'jax' not in sys.modules, 'jax was imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_hypercore_data_still_exports_the_moved_names():
    from hypercore import data

    for name in ("Dataset", "DataError", "load", "from_arrays", "from_splits", "builtin_names", "_raw"):
        assert getattr(data, name) is getattr(arrays, name)
    assert issubclass(DataError, __import__("hypercore.vocab").vocab.ConfigError)


def multitask_upload(path, rng):
    X = rng.normal(size=(40, 3)).astype(np.float32) + 5.0  # off-centre: `center: false` must keep it
    y = np.arange(40) % 2
    task = np.repeat([0, 1], 20)[rng.permutation(40)]
    np.savez(path, X=X, y=y, task=task)
    return X, y, task


def test_a_multitask_upload_builds_the_dataset_the_worker_builds(tmp_path):
    from jobs.settings import Settings
    from worker.runner import load_dataset

    rng = np.random.default_rng(3)
    settings = Settings(data_dir=tmp_path, database_url="sqlite://", broker_url="memory://")
    settings.dataset_path("twotasks").parent.mkdir(parents=True, exist_ok=True)
    X, y, task = multitask_upload(settings.dataset_path("twotasks"), rng)
    section = {"id": "twotasks", "train": 20, "valid": 10, "test": 6, "center": False}

    here = dataset_from_npz(read_npz(settings.dataset_path("twotasks")), section)
    worker = load_dataset(section, settings)
    assert here.n_tasks == worker.n_tasks == 2
    assert (here.n_train, here.n_valid, here.n_test) == (20, 10, 6)
    for split in ("train", "valid", "test"):
        for a in ("X", "y"):
            np.testing.assert_array_equal(getattr(here, f"{a}_{split}"), getattr(worker, f"{a}_{split}"))
    # Not centred, split task by task (task-major), in the rows' order within each task.
    rows0 = np.flatnonzero(task == 0)
    np.testing.assert_array_equal(here.X_train[:10], X[rows0[:10]])
    np.testing.assert_array_equal(here.y_valid[:5], y[rows0[10:15]])
    centred = dataset_from_npz(read_npz(settings.dataset_path("twotasks")), {**section, "center": True})
    np.testing.assert_allclose(centred.X_train[:10].mean(axis=0), 0.0, atol=1e-5)


def test_presplit_task_ids_and_counts_refusals(tmp_path):
    rng = np.random.default_rng(0)
    splits = {
        "X_train": rng.normal(size=(4, 2)),
        "y_train": np.array([0, 1, 0, 1]),
        "X_valid": rng.normal(size=(2, 2)),
        "y_valid": np.array([1, 0]),
        "task_train": np.array([1, 0, 1, 0]),
        "task_valid": np.array([0, 1]),
    }
    np.savez(tmp_path / "s.npz", **splits)
    found = read_npz(tmp_path / "s.npz")
    ds = dataset_from_npz(found, {"center": False})
    assert ds.n_tasks == 2 and (ds.n_train, ds.n_valid, ds.n_test) == (4, 2, 0)
    np.testing.assert_array_equal(ds.y_train, [1, 1, 0, 0])  # task-major: task 0's rows first
    assert inspect_arrays(found) == NpzShape("splits", 6, 4, 2, 0, 2, 2, 2, None)

    np.savez(tmp_path / "xy.npz", X=np.ones((10, 2)), y=np.arange(10) % 2)
    xy = read_npz(tmp_path / "xy.npz")
    assert inspect_arrays(xy) == NpzShape("xy", 10, 10, 0, 0, 2, 2, 1, None)
    with pytest.raises(DataError) as e:  # the spec's counts, not the file
        dataset_from_npz(xy, {"train": 8, "valid": 5})
    assert e.value.field == "dataset" and "exceeds the 10" in e.value.message
    with pytest.raises(DataError) as e:
        dataset_from_npz(xy, {})
    assert e.value.field == "dataset.train"


def write(path, **a):
    np.savez(path, **a)
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        (dict(X=np.ones((5, 2))), "holds arrays ['X']; expected X and y, or X_train"),
        (dict(X=np.ones((5, 2)), y=np.zeros(5, int), extra=np.ones(1)), "expected X and y"),
        (dict(X_train=np.ones((2, 2)), y_train=np.arange(2), X_valid=np.ones((2, 2))), "expected X and y"),
        (
            dict(
                X_train=np.ones((2, 2)),
                y_train=np.arange(2),
                X_valid=np.ones((2, 2)),
                y_valid=np.arange(2),
                X_test=np.ones((2, 2)),
            ),
            "expected X and y",
        ),
        (
            dict(
                X_train=np.ones((2, 2)),
                y_train=np.arange(2),
                X_valid=np.ones((2, 2)),
                y_valid=np.arange(2),
                task_train=np.arange(2),
            ),
            "holds task ids ['task_train']; a multi-task upload split in advance gives task_train",
        ),
        (dict(X=np.ones((5, 2)), y=np.zeros(5, int), task_train=np.zeros(5, int)), "expected X and y"),
        (dict(X=np.array([[{"a": 1}]] * 2, dtype=object), y=np.arange(2)), "not a readable .npz file"),
    ],
)
def test_read_npz_refuses_what_is_not_the_upload_layout(tmp_path, content, message):
    path = write(tmp_path / "bad.npz", **content)
    with pytest.raises(LayoutError) as e:
        read_npz(path)
    assert e.value.field == "file" and message in e.value.message
    assert isinstance(e.value, DataError)


def test_read_npz_refuses_a_non_zip_and_a_zip_bomb_before_inflating_it(tmp_path):
    (tmp_path / "text.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(LayoutError, match="not a readable .npz"):
        read_npz(tmp_path / "text.npz")
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("X.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros((1000, 100)))
        with z.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(1000, int))
    assert bomb.stat().st_size < 10_000
    with pytest.raises(LayoutError, match=r"bytes uncompressed; at most 10000$"):
        read_npz(bomb, max_inflated_bytes=10_000)
    assert set(read_npz(bomb)) == {"X", "y"}


@pytest.mark.parametrize(
    "content, message",
    [
        (
            dict(X=np.ones((4, 2), dtype=int), y=np.arange(4) % 2),
            "X must be a 2-D float array, got 2-D int64",
        ),
        (dict(X=np.array([[1.0, np.nan], [0, 1]]), y=np.arange(2)), "X holds NaN or infinite values"),
        (dict(X=np.ones((4, 2)), y=np.arange(3)), "y has 3 labels for the 4 rows of X"),
        (dict(X=np.ones((4, 2)), y=np.array([0, -1, 0, 1])), "y holds a negative label (-1)"),
        (
            dict(X=np.ones((4, 2)), y=np.arange(4) % 2, task=np.array([0, 1, 0])),
            "task has 3 ids for the 4 rows",
        ),
        (dict(X=np.ones((4, 2)), y=np.arange(4) % 2, task=np.array([0, 2, 0, 2])), "no row has task 1"),
        (dict(X=np.ones((4, 2)), y=np.arange(4) % 2, task=np.zeros(4, int)), "names one task"),
    ],
)
def test_inspect_arrays_refuses_bad_arrays_naming_them(tmp_path, content, message):
    with pytest.raises(LayoutError) as e:
        inspect_arrays(read_npz(write(tmp_path / "bad.npz", **content)))
    assert message in e.value.message


def test_inspect_arrays_counts_a_multitask_upload(tmp_path):
    found = read_npz(
        write(tmp_path / "t.npz", X=np.ones((7, 3)), y=np.arange(7) % 3, task=np.array([0, 1] * 3 + [1]))
    )
    assert inspect_arrays(found) == NpzShape("xy", 7, 7, 0, 0, 3, 3, 2, 3)
