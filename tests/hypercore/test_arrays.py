"""`hypercore.arrays`: the JAX-free numpy half of datasets and the one reader of the ``.npz`` upload
layout, which the service, the worker and ``revtune run`` all go through."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from hypercore import arrays
from hypercore.arrays import (
    DataError,
    LayoutError,
    NpzReader,
    NpzShape,
    dataset_from_npz,
    inspect_arrays,
    inspect_npz,
    read_npz,
)


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
    assert inspect_arrays(found) == NpzShape("splits", 6, 4, 2, 0, 2, 2, 2, None, (2,))

    np.savez(tmp_path / "xy.npz", X=np.ones((10, 2)), y=np.arange(10) % 2)
    xy = read_npz(tmp_path / "xy.npz")
    assert inspect_arrays(xy) == NpzShape("xy", 10, 10, 0, 0, 2, 2, 1, None, (2,))
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
            "X must be a float array of (n, d) features, (n, H, W[, C]) images or (n, L, C) sequences, "
            "got 2-D int64",
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
    assert inspect_arrays(found) == NpzShape("xy", 7, 7, 0, 0, 3, 3, 2, 3, (3,))


# ---- the streaming reader: headers first, values in chunks ---------------------------------------


def npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def zip_file(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return path


def patch_member(path, member, *, flag=0, method=None):
    """Or ``flag`` into ``member``'s general-purpose bits and set its compression ``method``, in its
    local header and its central-directory entry alike."""
    data = bytearray(path.read_bytes())
    local = zipfile.ZipFile(path).getinfo(member).header_offset
    end = data.rfind(b"PK\x05\x06")
    at = struct.unpack("<L", data[end + 16 : end + 20])[0]
    while data[at + 46 : at + 46 + struct.unpack("<H", data[at + 28 : at + 30])[0]].decode() != member:
        at += 46 + sum(struct.unpack("<3H", data[at + 28 : at + 34]))
    for flags_at in (local + 6, at + 8):
        bits = struct.unpack("<H", data[flags_at : flags_at + 2])[0]
        data[flags_at : flags_at + 2] = struct.pack("<H", bits | flag)
        if method is not None:
            data[flags_at + 2 : flags_at + 4] = struct.pack("<H", method)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "content",
    [
        dict(X=np.arange(600.0).reshape(200, 3), y=np.arange(200) % 3),
        dict(
            X=np.ones((30, 2), np.float32), y=np.arange(30, dtype=np.uint8) % 2, task=np.repeat([1, 0, 2], 10)
        ),
        dict(
            X_train=np.asfortranarray(np.ones((8, 5), ">f8")),
            y_train=np.arange(8) % 2,
            X_valid=np.ones((4, 5)),
            y_valid=np.arange(4) % 2,
            X_test=np.ones((2, 5), np.float16),
            y_test=np.array([1, 0]),
            task_train=np.arange(8) % 2,
            task_valid=np.arange(4) % 2,
            task_test=np.array([0, 1]),
        ),
    ],
    ids=["xy", "multitask", "splits-fortran-big-endian"],
)
def test_inspect_npz_streams_what_inspect_arrays_finds_in_memory(tmp_path, content):
    path = write(tmp_path / "ok.npz", **content)
    expected = inspect_arrays(read_npz(path))
    assert inspect_npz(path) == expected
    assert inspect_npz(path, chunk_bytes=16) == expected  # many chunks, some short
    for name, array in read_npz(path).items():  # the whole arrays are unchanged
        np.testing.assert_array_equal(array, content[name])
        assert array.dtype == content[name].dtype


def test_inspect_npz_takes_the_same_few_mib_whatever_the_array_size(tmp_path):
    peaks = {}
    for rows in (2_000, 40_000):
        path = tmp_path / f"zeros{rows}.npz"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            with z.open("X.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f8", "fortran_order": False, "shape": (rows, 1000)}
                )
                for _ in range(rows // 1000):
                    f.write(bytes(8 * 1000 * 1000))
            with z.open("y.npy", "w") as f:
                np.lib.format.write_array(f, np.arange(rows) % 2)
        tracemalloc.start()
        try:
            assert inspect_npz(path).n_rows == rows
            peaks[rows] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # 320 MB of float64 values checked in a few chunks of 1 MiB; loading them took 320 MB.
    assert peaks[40_000] < 16 * 2**20, peaks
    assert peaks[40_000] < peaks[2_000] + 2**20, peaks


def test_streamed_checks_find_a_bad_value_in_any_chunk(tmp_path):
    X = np.zeros((300, 4))
    X[-1, -1] = np.nan
    with pytest.raises(LayoutError, match="^file: X holds NaN or infinite values$"):
        inspect_npz(write(tmp_path / "nan.npz", X=X, y=np.arange(300) % 2), chunk_bytes=64)
    X[-1, -1] = -3.5e38
    with pytest.raises(
        LayoutError, match=r"^file: X holds values beyond float32's range \(\|x\| > 3.4028235e\+38\)"
    ):
        inspect_npz(write(tmp_path / "big.npz", X=X, y=np.arange(300) % 2), chunk_bytes=64)
    with pytest.raises(LayoutError, match="beyond float32's range"):
        inspect_arrays({"X": X, "y": np.arange(300) % 2})  # in memory alike
    task = np.repeat([0, 1, 3], 100)
    with pytest.raises(LayoutError, match="no row has task 2$"):
        inspect_npz(write(tmp_path / "t.npz", X=X * 0, y=np.arange(300) % 2, task=task), chunk_bytes=64)
    # More task ids than rows: the first one missing is found without counting 10**12 of them.
    with pytest.raises(LayoutError, match="no row has task 1$"):
        inspect_npz(write(tmp_path / "t2.npz", X=np.ones((2, 1)), y=np.arange(2), task=np.array([0, 10**12])))


def test_headers_and_the_callers_limits_are_checked_before_any_value_is_read(tmp_path, monkeypatch):
    path = write(tmp_path / "ok.npz", X=np.ones((50, 4)), y=np.arange(50) % 2)
    read = []
    chunks = NpzReader.chunks
    monkeypatch.setattr(
        NpzReader, "chunks", lambda self, name, *a: read.append(name) or chunks(self, name, *a)
    )
    with pytest.raises(LayoutError) as e:
        inspect_npz(path, max_array_bytes=1000, limit_name="THE_LIMIT")
    assert e.value.message == (
        "X declares shape (50, 4) float64 (1600 bytes): the arrays would take 1600 bytes or more; "
        "at most 1000 (THE_LIMIT)"
    )
    seen = []

    def refuse(n_rows, n_features):
        seen.append((n_rows, n_features, list(read)))
        raise DataError("file", "too big for me")

    with pytest.raises(DataError, match="too big for me"):
        inspect_npz(path, check_shape=refuse)
    assert seen == [(50, 4, [])] and read == []
    assert inspect_npz(path, max_array_bytes=1600 + 400).n_rows == 50
    assert read == ["X", "y"]


def crafted(tmp_path, case):
    y = npy_bytes(np.arange(20) % 2)
    if case == "no-magic":
        return zip_file(tmp_path / "c.npz", {"X.npy": b"not an array", "y.npy": y})
    if case == "huge-shape":
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 4)}
        )
        return zip_file(tmp_path / "c.npz", {"X.npy": header.getvalue() + bytes(64), "y.npy": y})
    if case == "version-3":
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": (20, 1)}
        )
        data = bytearray(header.getvalue())
        data[6] = 3
        return zip_file(tmp_path / "c.npz", {"X.npy": bytes(data) + bytes(160), "y.npy": y})
    if case == "truncated-data":
        return zip_file(tmp_path / "c.npz", {"X.npy": npy_bytes(np.ones((20, 3)))[:-8], "y.npy": y})
    if case == "twice":
        return zip_file(tmp_path / "c.npz", {"X.npy": npy_bytes(np.ones((20, 3))), "X": y, "y.npy": y})
    good = write(tmp_path / "c.npz", X=np.ones((20, 3)), y=np.arange(20) % 2)
    if case == "zstd":
        return patch_member(good, "X.npy", method=93)
    assert case == "encrypted"
    return patch_member(good, "y.npy", flag=0x1)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-magic", "X.npy is not a .npy array (the magic string is not correct"),
        ("huge-shape", "X.npy declares shape (1000000000000, 4) float64 (32000000000000 bytes) but holds 64"),
        ("version-3", "X.npy: .npy format version (3, 0) is not supported"),
        ("truncated-data", "X.npy declares shape (20, 3) float64 (480 bytes) but holds 472 bytes"),
        ("twice", "the archive holds array 'X' twice"),
        ("zstd", "X.npy uses zip compression method 93; an upload's members are stored or deflated"),
        ("encrypted", "y.npy is encrypted"),
    ],
)
def test_crafted_members_are_layout_errors_naming_the_member(tmp_path, case, message):
    path = crafted(tmp_path, case)
    for read in (read_npz, inspect_npz):  # the worker's reader and the upload's refuse alike
        with pytest.raises(LayoutError) as e:
            read(path)
        assert message in e.value.message, e.value.message


def test_too_many_members_are_refused_naming_a_few_and_the_count(tmp_path):
    with pytest.raises(LayoutError) as e:
        arrays.check_layout({f"a{i:02}" for i in range(40)})
    assert e.value.message.startswith("holds arrays ['a00', 'a01', 'a02', 'a03', 'a04', ...] (40 in all); ")
    # Beyond MAX_MEMBERS the zip's end record alone refuses it, before zipfile reads its directory.
    path = zip_file(tmp_path / "many.npz", {f"m{i}.npy": b"" for i in range(70_000)})  # zip64 end record
    with pytest.raises(LayoutError) as e:
        read_npz(path)
    assert e.value.message.startswith("holds arrays ['m0', 'm1', 'm2', 'm3', 'm4', ...] (70000 in all) in a ")
    assert len(e.value.message) < 400
    # A long name is cut, so the message stays short.
    with pytest.raises(LayoutError) as e:
        arrays.check_layout({"X", "y", "z" * 5000})
    assert e.value.message.startswith("holds arrays ['X', 'y', 'zzzz") and len(e.value.message) < 400


def sorted_by_class(n_per: int = 20, n_classes: int = 3, d: int = 4):
    """An iris-like file: the rows sorted by class."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(n_classes), n_per)
    X = rng.normal(size=(len(y), d)) + y[:, None]
    return {"X": X, "y": y}


def test_an_upload_sorted_by_class_is_shuffled_or_refused_never_silently_wrong():
    upload = sorted_by_class()  # 20 of each of 3 classes, in class order
    section = {"id": "iris", "train": 30, "valid": 15, "test": 15}
    # In the file's order (a job stored before shuffling, or `shuffle: false`) the validation and test
    # rows are all class 2, which training never sees: refused on the split, naming the fix.
    for legacy in (section, {**section, "shuffle": False}):
        with pytest.raises(DataError) as e:
            dataset_from_npz(upload, legacy)
        assert e.value.field == "dataset.train" and "class 2" in e.value.message
        assert "file's order" in e.value.message
    # As a new job stores it (`upload_defaults`: shuffle true), by the spec's seed: every class in
    # every split, the same rows for the same seed, others for another seed.
    stored = arrays.upload_defaults(section)
    assert stored["shuffle"] is True and arrays.upload_defaults({"name": "digits"}) == {"name": "digits"}
    a = dataset_from_npz(upload, stored, seed=5)
    assert all(set(np.unique(getattr(a, f"y_{s}"))) == {0, 1, 2} for s in ("train", "valid", "test"))
    order = np.random.default_rng(5).permutation(60)
    np.testing.assert_array_equal(a.y_train, upload["y"][order[:30]])
    np.testing.assert_array_equal(dataset_from_npz(upload, stored, seed=5).X_valid, a.X_valid)
    assert not np.array_equal(dataset_from_npz(upload, stored, seed=6).y_train, a.y_train)
    # stratify: as class-balanced as the counts allow, in the file's order or shuffled
    for extra in ({"shuffle": False}, {}):
        b = dataset_from_npz(upload, {**stored, **extra, "stratify": True}, seed=5)
        for s, n in (("train", 10), ("valid", 5), ("test", 5)):
            assert np.bincount(getattr(b, f"y_{s}"), minlength=3).tolist() == [n, n, n], (extra, s)


def test_a_class_missing_from_a_shuffled_training_split_is_refused():
    upload = {"X": np.ones((12, 2)), "y": np.array([0] * 10 + [1, 2])}
    with pytest.raises(DataError) as e:  # two rare classes, two training rows
        dataset_from_npz(upload, {"train": 2, "valid": 10, "shuffle": True}, seed=0)
    assert e.value.field == "dataset.train" and "stratify" in e.value.message
