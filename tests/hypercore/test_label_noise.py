"""Row identity (``Dataset.train_rows``), label noise made on purpose (``dataset.label_noise``) and an
upload's own ``noisy`` mask: the data side of finding mislabelled examples (issue 20).

The noise must be reproducible (a job resumed or compared with another flips the same labels),
touch only training labels (validation and test measure the truth), and every flipped label must
really be wrong; ``train_rows`` must lead each training example back to its row of the source, so a
per-example result can be read against the user's own file."""

from __future__ import annotations

import numpy as np
import pytest

from hypercore import arrays as A
from hypercore.families import DatasetShape
from hypercore.spec import SpecError, problem_from_spec
from jobs.spec import SpecError as SchemaError
from jobs.spec import validate_spec

NOISE = {"fraction": 0.4, "seed": 1}
SPEC = {
    "dataset": {"name": "digits", "train": 101, "valid": 50, "test": 20},
    "model": {"kind": "logreg"},
    "training": {"steps": 3},
    "hyperparameters": {"learning_rate": {"init": 0.1, "granularity": "global", "learn": True}},
    "meta": {"iterations": 1},
}


def with_dataset(spec: dict = SPEC, **changes) -> dict:
    return {**spec, "dataset": {**spec["dataset"], **changes}}


def upload(n: int = 60, classes: int = 3, features: int = 4) -> dict[str, np.ndarray]:
    """An X/y upload whose rows say who they are (column 0 is the row), classes in turn."""
    X = np.random.default_rng(0).normal(size=(n, features))
    X[:, 0] = np.arange(n)
    return {"X": X, "y": np.arange(n) % classes}


def pre_split(X: np.ndarray, n_train: int, classes: int = 2) -> dict[str, np.ndarray]:
    """A pre-split upload of ``X``'s rows: the first ``n_train`` train, the rest validate."""
    y = np.arange(len(X)) % classes
    return {"X_train": X[:n_train], "y_train": y[:n_train], "X_valid": X[n_train:], "y_valid": y[n_train:]}


# ---- label noise ----------------------------------------------------------------------------------


def test_label_noise_is_deterministic_and_flips_exactly_the_fraction_of_training_labels():
    clean = A.load("digits", 101, 50, 20, seed=3)
    noisy = A.load("digits", 101, 50, 20, seed=3, label_noise=NOISE)
    again = A.load("digits", 101, 50, 20, seed=3, label_noise=NOISE)
    np.testing.assert_array_equal(noisy.y_train, again.y_train)
    np.testing.assert_array_equal(noisy.noisy, again.noisy)
    assert noisy.noisy.dtype == np.bool_ and noisy.noisy.shape == (101,)
    assert noisy.noisy.sum() == round(0.4 * 101) == 40
    # every flipped label is wrong, nothing else changed
    np.testing.assert_array_equal(noisy.y_train != clean.y_train, noisy.noisy)
    for split in ("valid", "test"):
        np.testing.assert_array_equal(getattr(noisy, f"y_{split}"), getattr(clean, f"y_{split}"))
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(noisy, f"X_{split}"), getattr(clean, f"X_{split}"))
    np.testing.assert_array_equal(noisy.train_rows, clean.train_rows)
    assert 0 <= noisy.y_train.min() and noisy.y_train.max() < 10 and noisy.y_train.dtype == np.int32
    # another noise seed flips other examples; the dataset's seed still splits alike
    other = A.load("digits", 101, 50, 20, seed=3, label_noise={"fraction": 0.4, "seed": 2})
    assert not np.array_equal(other.noisy, noisy.noisy)
    assert clean.noisy is None
    none = A.load("digits", 101, 50, 20, seed=3, label_noise={"fraction": 0})
    np.testing.assert_array_equal(none.y_train, clean.y_train)
    assert none.noisy is not None and not none.noisy.any()


def test_flip_labels_moves_each_label_uniformly_to_another_class():
    y = np.zeros(4000, np.int32)
    flipped, noisy = A.flip_labels(y, 4, 0.75, seed=0)
    assert noisy.sum() == 3000 and np.all(flipped[noisy] != 0) and np.all(flipped[~noisy] == 0)
    counts = np.bincount(flipped[noisy], minlength=4)[1:]
    assert counts.min() > 900 and counts.max() < 1100  # 1000 each, give or take sampling noise
    assert flipped.dtype == np.int32 and y.sum() == 0  # the input is left alone


def test_label_noise_through_the_spec_reaches_the_problem_and_an_upload():
    problem = problem_from_spec(with_dataset(label_noise=NOISE))
    direct = A.load("digits", 101, 50, 20, seed=0, label_noise=NOISE)
    np.testing.assert_array_equal(problem.dataset.noisy, direct.noisy)
    np.testing.assert_array_equal(np.asarray(problem.dataset.y_train), direct.y_train)
    # an X/y upload (the worker's and `revtune run`'s reader), shuffled by the spec's seed
    section = {"id": "d", "train": 30, "valid": 20, "shuffle": True}
    clean = A.dataset_from_npz(upload(), section, seed=5)
    ds = A.dataset_from_npz(upload(), {**section, "label_noise": {"fraction": 0.5, "seed": 7}}, seed=5)
    assert ds.noisy.sum() == 15
    np.testing.assert_array_equal(ds.y_train != clean.y_train, ds.noisy)
    np.testing.assert_array_equal(ds.y_valid, clean.y_valid)
    # a pre-split upload: only y_train changes
    X = np.random.default_rng(1).normal(size=(40, 3))
    splits = pre_split(X, 20, classes=4)
    pre = A.dataset_from_npz(splits, {"id": "d", "label_noise": {"fraction": 0.25}})
    assert pre.noisy.sum() == 5
    np.testing.assert_array_equal(pre.y_train != splits["y_train"], pre.noisy)
    np.testing.assert_array_equal(pre.y_valid, splits["y_valid"])


# ---- train_rows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stratify", [False, True])
def test_train_rows_of_a_builtin_are_rows_of_its_raw_arrays(stratify):
    X, y = A._raw("digits")
    ds = A.load("digits", 100, 50, seed=4, center=False, stratify=stratify)
    assert ds.train_rows.dtype == np.int64 and len(np.unique(ds.train_rows)) == 100
    np.testing.assert_array_equal(X[ds.train_rows], ds.X_train)
    np.testing.assert_array_equal(y[ds.train_rows], ds.y_train)
    # centring moves no row
    centred = A.load("digits", 100, 50, seed=4, stratify=stratify)
    np.testing.assert_array_equal(centred.train_rows, ds.train_rows)
    assert not centred.train_rows.flags.writeable


def test_train_rows_of_mnist5k_tasks_are_rows_of_its_pooled_images():
    X, y = A._raw("mnist5k")
    ds = A.load("mnist5k_tasks", 1000, 100, seed=2, center=False)
    rows = ds.train_rows
    assert len(np.unique(rows)) == 1000 and rows.min() >= 0 and rows.max() < 10000
    upright = rows < 5000
    assert upright.sum() == 500  # the first five tasks
    np.testing.assert_array_equal(X[rows[upright]], ds.X_train[upright])
    turned = np.rot90(X[rows[~upright] - 5000].reshape(-1, 28, 28), k=1, axes=(-2, -1)).reshape(-1, 784)
    np.testing.assert_array_equal(turned, ds.X_train[~upright])


@pytest.mark.parametrize(
    "section",
    [
        {"shuffle": False},
        {"shuffle": True},
        {"shuffle": True, "stratify": True},
        {"shuffle": False, "stratify": True},
    ],
)
def test_train_rows_of_an_xy_upload_are_its_rows_before_centring(section):
    arrays = upload()
    ds = A.dataset_from_npz(arrays, {"id": "d", "train": 30, "valid": 15, "test": 6, **section}, seed=9)
    rows = ds.train_rows
    raw = arrays["X"][rows].astype(np.float32)
    np.testing.assert_allclose(ds.X_train, raw - raw.mean(axis=0), atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, arrays["y"][rows])
    if not section["shuffle"]:  # the labels already take turns: stratifying keeps the file's order
        np.testing.assert_array_equal(rows, np.arange(30))
    else:
        assert not np.array_equal(rows, np.arange(30))


def test_train_rows_of_a_multitask_xy_upload():
    arrays = {**upload(), "task": np.arange(60) % 2}
    ds = A.dataset_from_npz(arrays, {"id": "d", "train": 20, "valid": 10, "center": False}, seed=1)
    np.testing.assert_array_equal(ds.X_train, arrays["X"][ds.train_rows].astype(np.float32))
    np.testing.assert_array_equal(arrays["task"][ds.train_rows], np.repeat([0, 1], 10))  # task-major


def test_train_rows_of_a_pre_split_upload_are_rows_of_x_train():
    X = np.random.default_rng(2).normal(size=(30, 3))
    X[:, 0] = np.arange(30)
    splits = pre_split(X, 20)
    ds = A.dataset_from_npz(splits, {"id": "d", "center": False})
    np.testing.assert_array_equal(ds.train_rows, np.arange(20))
    # task ids reorder the training split task-major: the rows follow
    tasks = {
        **splits,
        "task_train": np.array([1, 0] * 10),
        "task_valid": np.array([0, 1] * 5),
    }
    multi = A.dataset_from_npz(tasks, {"id": "d", "center": False})
    np.testing.assert_array_equal(multi.X_train, X[:20][multi.train_rows].astype(np.float32))
    np.testing.assert_array_equal(tasks["task_train"][multi.train_rows], np.repeat([0, 1], 10))


def test_a_dataset_built_by_hand_gets_identity_rows_and_checks_given_ones():
    ds = A.from_splits(np.ones((4, 2)), np.array([0, 1, 0, 1]), np.ones((2, 2)), np.array([0, 1]))
    np.testing.assert_array_equal(ds.train_rows, np.arange(4))
    arrays = (ds.X_train, ds.y_train, ds.X_valid, ds.y_valid, ds.X_test, ds.y_test)
    with pytest.raises(A.DataError) as e:
        A.Dataset("x", *arrays, 2, train_rows=[0, 1])
    assert e.value.field == "train_rows"
    with pytest.raises(A.DataError) as e:
        A.Dataset("x", *arrays, 2, noisy=np.zeros(4, int))
    assert e.value.field == "noisy"


# ---- an upload's noisy mask -----------------------------------------------------------------------


@pytest.mark.parametrize("mask_dtype", [bool, np.int8])
def test_an_uploads_noisy_mask_follows_its_rows_through_the_shuffle(mask_dtype):
    arrays = upload()
    mask = np.zeros(60, mask_dtype)
    mask[[0, 5, 17, 33, 59]] = 1
    arrays["noisy"] = mask
    assert A.inspect_arrays(arrays).n_rows == 60
    ds = A.dataset_from_npz(arrays, {"id": "d", "train": 40, "valid": 20, "shuffle": True}, seed=3)
    assert ds.noisy.dtype == np.bool_
    np.testing.assert_array_equal(ds.noisy, mask[ds.train_rows].astype(bool))
    # the flagged training examples are the flagged rows (column 0 is the row)
    flagged = ds.X_train[ds.noisy, 0] + arrays["X"][ds.train_rows, 0].mean()
    assert set(np.round(flagged).astype(int)) == set(np.flatnonzero(mask)) & set(ds.train_rows.tolist())
    # labels and arrays are as without the mask: training ignores it
    plain = A.dataset_from_npz(upload(), {"id": "d", "train": 40, "valid": 20, "shuffle": True}, seed=3)
    np.testing.assert_array_equal(ds.X_train, plain.X_train)
    np.testing.assert_array_equal(ds.y_train, plain.y_train)
    # the spec's noise wins over the mask
    noised = A.dataset_from_npz(
        arrays, {"id": "d", "train": 40, "valid": 20, "shuffle": True, "label_noise": NOISE}, seed=3
    )
    assert noised.noisy.sum() == 16
    np.testing.assert_array_equal(noised.noisy, noised.y_train != plain.y_train)


def test_a_pre_split_uploads_noisy_train_mask():
    X = np.random.default_rng(3).normal(size=(30, 3))
    splits = pre_split(X, 20)
    mask = np.arange(20) % 7 == 0
    ds = A.dataset_from_npz({**splits, "noisy_train": mask}, {"id": "d"})
    np.testing.assert_array_equal(ds.noisy, mask)
    tasks = {**splits, "task_train": np.array([1, 0] * 10), "task_valid": np.array([0, 1] * 5)}
    multi = A.dataset_from_npz({**tasks, "noisy_train": mask}, {"id": "d"})
    np.testing.assert_array_equal(multi.noisy, mask[multi.train_rows])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"noisy": np.zeros(59, bool)}, "noisy must be a boolean (or 0/1 integer) array of shape (60,)"),
        ({"noisy": np.zeros((60, 1), bool)}, "noisy must be a boolean"),
        ({"noisy": np.zeros(60)}, "noisy must be a boolean"),
        ({"noisy": np.full(60, 2)}, "noisy: an integer mask holds 0 and 1 only"),
        ({"noisy_train": np.zeros(60, bool)}, "go as noisy beside X and y"),
    ],
)
def test_a_bad_noisy_mask_is_refused_naming_it(extra, message):
    with pytest.raises(A.LayoutError) as e:
        A.inspect_arrays({**upload(), **extra})
    assert message in e.value.message
    with pytest.raises(A.DataError) as e:
        A.dataset_from_npz({**upload(), **extra}, {"id": "d", "train": 30, "valid": 20})
    assert "noisy" in str(e.value)


def test_a_pre_split_upload_takes_noisy_train_only():
    splits = pre_split(np.ones((8, 2)), 4)
    A.inspect_arrays({**splits, "noisy_train": np.array([0, 1, 0, 0])})
    with pytest.raises(A.LayoutError, match="go as noisy_train beside X_train"):
        A.inspect_arrays({**splits, "noisy": np.zeros(4, bool)})
    with pytest.raises(A.LayoutError, match=r"noisy_train must be .* shape \(4,\)"):
        A.inspect_arrays({**splits, "noisy_train": np.zeros(8, bool)})


# ---- refusals -------------------------------------------------------------------------------------

REAL = DatasetShape(n_features=4, n_classes=0, n_rows=60, target="real", n_outputs=1)
MULTITASK = {
    **SPEC,
    "dataset": {"name": "mnist5k_tasks", "train": 100, "valid": 100, "label_noise": NOISE},
    "model": {"kind": "multitask_mlp", "hidden": [4]},
}
REFUSED = {
    "resplit": (with_dataset(label_noise=NOISE, resplit=True), "resplit"),
    "multitask": (MULTITASK, "10 tasks"),
}


def _schema_problems(spec, **kwargs) -> dict[str, str]:
    with pytest.raises(SchemaError) as e:
        validate_spec(spec, **kwargs)
    return {".".join(map(str, err["loc"])): err["msg"] for err in e.value.errors}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_label_noise_is_refused_where_examples_move_or_tasks_relabel(case):
    spec, words = REFUSED[case]
    found = _schema_problems(spec)
    assert words in found["dataset.label_noise"]
    with pytest.raises(SpecError) as e:
        problem_from_spec(spec)
    assert e.value.field == "dataset.label_noise" and words in str(e.value)


def test_label_noise_is_refused_on_a_real_target():
    spec = {**SPEC, "dataset": {"id": "d1", "train": 30, "valid": 20, "label_noise": NOISE}}
    found = _schema_problems(spec, resolve_dataset=lambda _: REAL)
    assert "target is real" in found["dataset.label_noise"]
    X = np.random.default_rng(0).normal(size=(60, 4))
    regression = A.from_arrays(X, X[:, 0], 30, 20)
    with pytest.raises(SpecError) as e:
        problem_from_spec(spec, dataset=regression)
    assert e.value.field == "dataset.label_noise" and "target is real" in str(e.value)
    # and by the loader itself, which a notebook may call without the rules
    with pytest.raises(A.DataError) as e:
        A.from_arrays(X, X[:, 0], 30, 20, label_noise=NOISE)
    assert e.value.field == "dataset.label_noise"
    with pytest.raises(A.DataError) as e:
        A.from_arrays(X, np.arange(60) % 2, 30, 20, task=np.arange(60) % 2, label_noise=NOISE)
    assert e.value.field == "dataset.label_noise"


@pytest.mark.parametrize(
    ("noise", "field"),
    [
        ({"fraction": 1.0}, "dataset.label_noise.fraction"),
        ({"fraction": -0.1}, "dataset.label_noise.fraction"),
        ({"fraction": True}, "dataset.label_noise.fraction"),
        ({"fraction": "0.4"}, "dataset.label_noise.fraction"),
        ({"seed": 1}, "dataset.label_noise.fraction"),
        ({"fraction": 0.4, "seed": -1}, "dataset.label_noise.seed"),
        ({"fraction": 0.4, "seed": 1.5}, "dataset.label_noise.seed"),
        ({"fraction": 0.4, "rate": 1}, "dataset.label_noise.rate"),
    ],
)
def test_a_malformed_label_noise_is_refused_on_its_field(noise, field):
    spec = with_dataset(label_noise=noise)
    assert field in _schema_problems(spec)
    with pytest.raises(SpecError) as e:
        problem_from_spec(spec)
    assert e.value.field == field


def test_a_valid_label_noise_is_stored_with_its_default_seed():
    stored = validate_spec(with_dataset(label_noise={"fraction": 0.25})).to_dict()
    assert stored["dataset"]["label_noise"] == {"fraction": 0.25, "seed": 0}
