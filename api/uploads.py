"""Uploaded ``.npz`` datasets: validated, then written atomically under a generated id.

An upload holds either ``X``, ``y`` (the spec's counts split it) or ``X_train``, ``y_train``,
``X_valid``, ``y_valid`` and optionally ``X_test``, ``y_test``. ``X`` is a 2-D float array of finite
values (rows are examples), ``y`` a 1-D integer array of class labels from 0, one per row.

A multi-task dataset (for ``multitask_mlp``) adds task ids, 1-D integers from 0 with none skipped,
one per row: ``task`` beside ``X``, or ``task_train``, ``task_valid`` (and ``task_test`` with a test
split) beside the splits. The spec's counts split every task alike; a pre-split upload must hold as
many rows of every task as of any other in each split.

Either layout may add the rows the user knows to be mislabelled, to score a search for them (a job
never trains on it): ``noisy`` beside ``X`` (one per row) or ``noisy_train`` beside ``X_train``, a
1-D boolean or 0/1 integer array; another shape or dtype is refused naming it.

Nothing half-written is ever visible: the bytes go to a temporary file in the datasets folder,
are validated there, fsynced and renamed to ``<id>.npz``; the database row (the only way to see a
dataset) is committed last. Files are named by the generated id, never by the user's name. An API
killed mid-upload leaves its temporary file; the next start-up removes those (`remove_stale_uploads`).

Validation never loads the arrays (`hypercore.arrays.inspect_npz`): the zip directory and the ``.npy``
headers are checked first (shapes, dtypes, the rows and features limits and
``REVTUNE_MAX_UPLOAD_ARRAY_BYTES``), then the values are streamed a chunk at a time, so one
validation takes a few MiB whatever the arrays' size. At most ``REVTUNE_UPLOAD_VALIDATIONS`` run at
once in a process; one more waits up to ``REVTUNE_UPLOAD_VALIDATION_WAIT_S`` for a slot, then is
answered 503 with Retry-After (the bound on both the memory and the CPU a burst of uploads takes,
and on how long a request is held).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException

from hypercore.arrays import LayoutError, NpzShape, inspect_npz
from jobs.errors import InvalidInput
from jobs.spec import SpecLimits

_CHUNK = 1024 * 1024
_LOC = ["body", "file"]
_TEMPORARY = ".upload-*.tmp"
# Several API processes (uvicorn --workers, replicas) may share one datasets folder, so a starting
# API cannot assume no upload is in flight: it removes only temporary files older than any upload
# takes (the body is already received when the file is written; copying and validating the largest
# one takes seconds to a minute), an hour leaving a wide margin.
STALE_UPLOAD_S = 3600.0
_RETRY_AFTER_S = 5

log = logging.getLogger("revtune.api")


@dataclasses.dataclass(frozen=True)
class DatasetFile:
    """A validated upload in its final place, and what `hypercore.arrays.inspect_npz` found in it."""

    id: str
    path: Path
    sha256: str
    size_bytes: int
    shape: NpzShape


def _refuse(msg: str) -> InvalidInput:
    return InvalidInput(_LOC, msg)


def store_upload(
    source: BinaryIO,
    folder: Path,
    limits: SpecLimits,
    max_bytes: int,
    *,
    max_array_bytes: int | None = None,
    validations: int | None = None,
    wait_s: float = 0.0,
) -> DatasetFile:
    """Copy ``source`` into ``folder``, validate it and move it into place as ``<new id>.npz``.

    Raises `InvalidInput` on ``file`` (and leaves no file behind) when the upload is larger than
    ``max_bytes``, not an ``.npz``, or not a valid dataset (its arrays declaring more than
    ``max_array_bytes`` in all among the reasons). With ``validations``, at most that many uploads
    are copied and validated at once in this process: one more waits up to ``wait_s`` seconds for a
    slot, then gets 503 (`HTTPException`, with Retry-After).
    """
    with _validation_slot(validations, wait_s):
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
            shape = validate_npz(temporary, limits, max_bytes, max_array_bytes=max_array_bytes)
            os.replace(temporary, final)
            _fsync_dir(folder)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return DatasetFile(dataset_id, final, digest.hexdigest(), size, shape)


@functools.cache
def validation_slots(n: int) -> threading.BoundedSemaphore:
    """The process's ``n`` validation slots (one semaphore per size: every app of a process that has
    the same setting shares it, as they share the process's memory)."""
    return threading.BoundedSemaphore(n)


@contextlib.contextmanager
def _validation_slot(validations: int | None, wait_s: float) -> Iterator[None]:
    if validations is None:
        yield
        return
    slots = validation_slots(validations)
    acquired = slots.acquire(timeout=wait_s) if wait_s > 0 else slots.acquire(blocking=False)
    if not acquired:
        raise HTTPException(
            status_code=503,
            detail=f"the server is validating {validations} uploads already "
            f"(REVTUNE_UPLOAD_VALIDATIONS); retry in {_RETRY_AFTER_S} seconds",
            headers={"Retry-After": str(_RETRY_AFTER_S)},
        )
    try:
        yield
    finally:
        slots.release()


def remove_stale_uploads(folder: Path, older_than_s: float = STALE_UPLOAD_S) -> int:
    """Remove the ``.upload-*.tmp`` files an API killed mid-upload left in ``folder`` that are older
    than ``older_than_s`` (see `STALE_UPLOAD_S`); return how many. Called at start-up."""
    removed = 0
    cutoff = time.time() - older_than_s
    for path in folder.glob(_TEMPORARY):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another process removed it first
            continue
    if removed:
        log.info("removed %d stale temporary upload file(s) from %s", removed, folder)
    return removed


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


def validate_npz(
    path: Path, limits: SpecLimits, max_bytes: int, *, max_array_bytes: int | None = None
) -> NpzShape:
    """Check the arrays; return the layout and the counts. Raises `InvalidInput` on ``file``.

    The file is checked by `hypercore.arrays.inspect_npz`, the one reader of the layout (the worker
    and ``revtune run`` build their datasets through it too), without loading it: the zip's
    directory, the ``.npy`` headers and the server's size limits first, then the values, streamed."""

    def within_limits(n_rows: int, n_features: int) -> None:  # from the headers, before any value
        if n_rows > limits.max_dataset_rows:
            raise _refuse(f"{n_rows} examples; at most {limits.max_dataset_rows} are allowed")
        if n_features > limits.max_features:
            raise _refuse(f"{n_features} features; at most {limits.max_features} are allowed")

    try:
        # The sizes the archive declares bound what reading can produce, so checking them first
        # refuses a small "zip bomb" before it is inflated.
        shape = inspect_npz(
            path,
            max_inflated_bytes=8 * max_bytes,
            max_array_bytes=max_array_bytes,
            limit_name="REVTUNE_MAX_UPLOAD_ARRAY_BYTES",
            check_shape=within_limits,
        )
    except LayoutError as e:
        raise _refuse(e.message) from None
    if shape.target == "real":
        # A regression's outputs widen the output layer as classes do: the same limit.
        if shape.n_outputs > limits.max_classes:
            raise _refuse(
                f"a real target (float y) of {shape.n_outputs} outputs; at most {limits.max_classes} "
                "are allowed (max_classes)"
            )
    elif not 2 <= shape.n_classes <= limits.max_classes:
        raise _refuse(f"{shape.n_classes} classes; between 2 and {limits.max_classes} are allowed")
    return shape
