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
from pathlib import Path
from typing import BinaryIO

from hypercore.arrays import LayoutError, inspect_arrays, read_npz
from jobs.errors import InvalidInput
from jobs.spec import SpecLimits

_CHUNK = 1024 * 1024
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
    """Check the arrays; return the layout and the counts. Raises `InvalidInput` on ``file``.

    The file is read and checked by `hypercore.arrays` (`read_npz`, `inspect_arrays`), the one
    reader of the layout (the worker and ``revtune run`` build their datasets from what it returns);
    the server's size limits are checked here."""
    try:
        # The sizes the archive declares bound what reading can produce, so checking them first
        # refuses a small "zip bomb" before it is inflated.
        shape = inspect_arrays(read_npz(path, max_inflated_bytes=8 * max_bytes))
    except LayoutError as e:
        raise _refuse(e.message) from None
    if shape.n_rows > limits.max_dataset_rows:
        raise _refuse(f"{shape.n_rows} examples; at most {limits.max_dataset_rows} are allowed")
    if shape.n_features > limits.max_features:
        raise _refuse(f"{shape.n_features} features; at most {limits.max_features} are allowed")
    if not 2 <= shape.n_classes <= limits.max_classes:
        raise _refuse(f"{shape.n_classes} classes; between 2 and {limits.max_classes} are allowed")
    return dataclasses.asdict(shape)
