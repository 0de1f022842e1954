"""Uploaded ``.npz`` datasets: validated, then written atomically under a generated id.

An upload holds either ``X``, ``y`` (the spec's counts split it) or ``X_train``, ``y_train``,
``X_valid``, ``y_valid`` and optionally ``X_test``, ``y_test``. ``X`` is a 2-D float array of finite
values (rows are examples), ``y`` a 1-D integer array of class labels from 0, one per row.

A multi-task dataset (for ``multitask_mlp``) adds task ids, 1-D integers from 0 with none skipped,
one per row: ``task`` beside ``X``, or ``task_train``, ``task_valid`` (and ``task_test`` with a test
split) beside the splits. The spec's counts split every task alike; a pre-split upload must hold as
many rows of every task as of any other in each split.

Nothing half-written is ever visible: the bytes go to a temporary file in the datasets folder,
are validated there, fsynced and renamed to ``<id>.npz``; the database row (the only way to see a
dataset) is committed last. Files are named by the generated id, never by the user's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jobs.errors import InvalidInput
from jobs.spec import SpecLimits

_CHUNK = 1024 * 1024
_XY = {"X", "y"}
_SPLITS = {"X_train", "y_train", "X_valid", "y_valid"}
_TEST = {"X_test", "y_test"}
_TASKS = {"task", "task_train", "task_valid", "task_test"}
_LOC = ["body", "file"]


@dataclasses.dataclass(frozen=True)
class DatasetFile:
    """A validated upload in its final place."""

    id: str
    path: Path
    sha256: str
    size_bytes: int
    layout: str
    n_rows: int
    n_train: int
    n_valid: int
    n_test: int
    n_features: int
    n_classes: int
    n_tasks: int
    task_rows: int | None


def _refuse(msg: str) -> InvalidInput:
    return InvalidInput(_LOC, msg)


def store_upload(source: BinaryIO, folder: Path, limits: SpecLimits, max_bytes: int) -> DatasetFile:
    """Copy ``source`` into ``folder``, validate it and move it into place as ``<new id>.npz``.

    Raises `InvalidInput` on ``file`` (and leaves no file behind) when the upload is larger than
    ``max_bytes``, not an ``.npz``, or not a valid dataset.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dataset_id = uuid.uuid4().hex
    temporary = folder / f".upload-{dataset_id}.tmp"
    final = folder / f"{dataset_id}.npz"
    digest, size = hashlib.sha256(), 0
    try:
        with open(temporary, "xb") as out:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(max_bytes)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        shape = validate_npz(temporary, limits, max_bytes)
        os.replace(temporary, final)
        _fsync_dir(folder)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return DatasetFile(dataset_id, final, digest.hexdigest(), size, **shape)


class TooLarge(Exception):
    """The upload exceeds ``REVTUNE_MAX_UPLOAD_BYTES`` (413)."""

    def __init__(self, max_bytes: int):
        super().__init__(
            f"the upload is larger than the limit of {max_bytes} bytes (REVTUNE_MAX_UPLOAD_BYTES)"
        )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def validate_npz(path: Path, limits: SpecLimits, max_bytes: int) -> dict[str, int | str]:
    """Check the arrays; return the layout and the counts. Raises `InvalidInput` on ``file``."""
    try:
        with zipfile.ZipFile(path) as archive:
            # The sizes the archive declares bound what reading can produce (zipfile stops there),
            # so checking them first refuses a small "zip bomb" before it is inflated.
            inflated = sum(info.file_size for info in archive.infolist())
        if inflated > 8 * max_bytes:
            raise _refuse(f"the arrays would take {inflated} bytes uncompressed; at most {8 * max_bytes}")
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            data, tasks = names - _TASKS, names & _TASKS
            if data == _XY and tasks <= {"task"}:
                pass
            elif _SPLITS <= data and data <= _SPLITS | _TEST and (data & _TEST in (set(), _TEST)):
                wanted = {"task_train", "task_valid"} | ({"task_test"} if "X_test" in data else set())
                if tasks not in (set(), wanted):
                    raise _refuse(
                        f"holds task ids {sorted(tasks)}; a multi-task upload split in advance gives "
                        f"{', '.join(sorted(wanted))}"
                    )
            else:
                raise _refuse(
                    f"holds arrays {sorted(names)}; expected X and y, or X_train, y_train, X_valid, "
                    "y_valid and optionally X_test, y_test (and, for several tasks, task ids: task, or "
                    "task_train, task_valid and task_test)"
                )
            arrays = {k: npz[k] for k in sorted(names)}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if isinstance(e, InvalidInput):
            raise
        raise _refuse(f"not a readable .npz file (numpy.savez without pickled objects): {e}") from None
    return _check_arrays(arrays, limits)


def _check_arrays(arrays: dict[str, np.ndarray], limits: SpecLimits) -> dict[str, int | str]:
    suffixes = [""] if "X" in arrays else ["_train", "_valid", *(["_test"] if "X_test" in arrays else [])]
    rows, n_features, n_classes = {}, None, 0
    for suffix in suffixes:
        X, y = arrays[f"X{suffix}"], arrays[f"y{suffix}"]
        if X.dtype.kind != "f" or X.ndim != 2:
            raise _refuse(f"X{suffix} must be a 2-D float array, got {X.ndim}-D {X.dtype}")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise _refuse(f"X{suffix} is empty (shape {X.shape})")
        if not np.isfinite(X).all():
            raise _refuse(f"X{suffix} holds NaN or infinite values")
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise _refuse(f"y{suffix} must be a 1-D integer array of class labels, got {y.ndim}-D {y.dtype}")
        if y.shape[0] != X.shape[0]:
            raise _refuse(f"y{suffix} has {y.shape[0]} labels for the {X.shape[0]} rows of X{suffix}")
        if y.min() < 0:
            raise _refuse(f"y{suffix} holds a negative label ({y.min()}); labels count from 0")
        if n_features is not None and X.shape[1] != n_features:
            raise _refuse(f"X{suffix} has {X.shape[1]} features, X_train has {n_features}")
        n_features = X.shape[1]
        n_classes = max(n_classes, int(y.max()) + 1)
        rows[suffix] = X.shape[0]
    assert n_features is not None
    total = sum(rows.values())
    if total > limits.max_dataset_rows:
        raise _refuse(f"{total} examples; at most {limits.max_dataset_rows} are allowed")
    if n_features > limits.max_features:
        raise _refuse(f"{n_features} features; at most {limits.max_features} are allowed")
    if not 2 <= n_classes <= limits.max_classes:
        raise _refuse(f"{n_classes} classes; between 2 and {limits.max_classes} are allowed")
    n_tasks, task_rows = _check_tasks(arrays, rows)
    if "" in rows:
        return dict(
            layout="xy",
            n_rows=total,
            n_train=total,
            n_valid=0,
            n_test=0,
            n_features=n_features,
            n_classes=n_classes,
            n_tasks=n_tasks,
            task_rows=task_rows,
        )
    return dict(
        layout="splits",
        n_rows=total,
        n_train=rows["_train"],
        n_valid=rows["_valid"],
        n_test=rows.get("_test", 0),
        n_features=n_features,
        n_classes=n_classes,
        n_tasks=n_tasks,
        task_rows=None,
    )


def _check_tasks(arrays: dict[str, np.ndarray], rows: dict[str, int]) -> tuple[int, int | None]:
    """``(n_tasks, fewest rows of any task)`` of the task ids (``(1, None)`` without them); a
    pre-split upload needs every task equally often in each split (its fewest is then None)."""
    if not arrays.keys() & _TASKS:
        return 1, None
    n_tasks = 0
    sizes = {}
    for suffix in rows:  # "" or "_train" first: it fixes the number of tasks
        task = arrays[f"task{suffix}"]
        if task.dtype.kind not in "iu" or task.ndim != 1:
            raise _refuse(
                f"task{suffix} must be a 1-D integer array of task ids, got {task.ndim}-D {task.dtype}"
            )
        if task.shape[0] != rows[suffix]:
            raise _refuse(f"task{suffix} has {task.shape[0]} ids for the {rows[suffix]} rows of X{suffix}")
        if task.min() < 0:
            raise _refuse(f"task{suffix} holds a negative task id ({task.min()}); task ids count from 0")
        if not n_tasks:
            n_tasks = int(task.max()) + 1
            if n_tasks < 2:
                raise _refuse(f"task{suffix} names one task; a multi-task dataset has 2 or more")
        elif task.max() >= n_tasks:
            raise _refuse(f"task{suffix} holds task {task.max()}, which task_train does not have")
        sizes[suffix] = np.bincount(task, minlength=n_tasks)
        if suffix in ("", "_train"):
            if np.any(sizes[suffix] == 0):
                missing = int(np.flatnonzero(sizes[suffix] == 0)[0])
                raise _refuse(
                    f"task{suffix}: task ids count from 0 with none skipped; no row has task {missing}"
                )
        if suffix and np.any(sizes[suffix] != sizes[suffix][0]):
            other = int(np.flatnonzero(sizes[suffix] != sizes[suffix][0])[0])
            raise _refuse(
                f"task{suffix}: every task needs as many rows as the others in a split: task 0 has "
                f"{sizes[suffix][0]}, task {other} has {sizes[suffix][other]}"
            )
    return n_tasks, int(sizes[""].min()) if "" in sizes else None
