"""``/v1/jobs/{id}/training-examples?rows=12,40,7``: a few examples of a job's dataset, as its source
holds them.

A per-example result (a learned ``example_weight``) names each training example by its row in the
dataset's source (`hypercore.arrays.Dataset.train_rows`): an upload's own row of ``X`` (of
``X_train`` for a pre-split upload), a built-in's row of its raw arrays. This route turns those rows
back into the examples themselves, so that a reader (the dashboard's "most down-weighted examples")
can look at what the learned weights distrust, uncentred, in the units the user gave.

Memory stays bounded by the rows asked, not the dataset: an upload's ``.npz`` is opened through
`hypercore.arrays.NpzReader` (its layout and headers checked, nothing inflated), and only the asked
rows are read: seeked to in a stored (``numpy.savez``) member, streamed past in a deflated one
(``numpy.savez_compressed``) or a Fortran-ordered array. A built-in's raw arrays are small (mnist5k's
are 16 MB) and cached per process, as the engine caches them.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import zipfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep, TenantDep
from hypercore import arrays
from jobs import repository
from jobs.errors import Conflict, InvalidInput, NotFound

router = APIRouter(prefix="/v1/jobs", tags=["hyperparameters"])

#: Rows one request may ask for: the dashboard shows 24; a reader wanting more pages through them.
MAX_ROWS = 100
_ROWS = ["query", "rows"]
_ROW_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: int() would also take "+5" and "١٢"
# The pool of mnist5k_tasks: mnist5k's images upright, then the same ones turned by 90 degrees.
_ROTATED_POOL = "mnist5k_tasks"


class TrainingExample(BaseModel):
    row: int = Field(description="the example's row in the dataset's source, as asked")
    x: Any = Field(description="the example as nested lists of shape example_shape, uncentred")


class TrainingExamplesOut(BaseModel):
    example_shape: list[int] = Field(
        description="one example's shape ([8, 8, 1] for digits; an upload's X.shape[1:])"
    )
    items: list[TrainingExample]


@router.get(
    "/{job_id}/training-examples",
    response_model=TrainingExamplesOut,
    # api.app documents 404 and 422 on every such path; 409 is this route's own
    responses={
        409: {
            "description": "the job's upload was deleted, or the job has no dataset",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    },
)
def training_examples(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    rows: Annotated[
        str,
        Query(
            max_length=2000,
            description=f"rows of the dataset's source, comma-separated (at most {MAX_ROWS}): the "
            "labels of example_weight's `example` axis",
        ),
    ],
) -> TrainingExamplesOut:
    """The examples at ``rows`` of the job's dataset, in the order asked: a built-in's raw arrays
    (pixels in [0, 1]) or the tenant's upload (``X``, or ``X_train`` of a pre-split upload), as
    stored, before any centring. 422 on ``rows`` (not whole numbers, more than 100, out of range);
    409 when the job's upload has been deleted or the job has no dataset."""
    spec = repository.get_job(session, tenant, job_id).spec
    wanted = parse_rows(rows)
    dataset = spec.get("dataset") or {}
    upload = None
    if dataset.get("name") is None and dataset.get("id") is not None:
        try:
            upload = repository.get_dataset(session, tenant, dataset["id"]).id
        except NotFound:
            upload = None
        if upload is None or not settings.dataset_path(upload).is_file():
            raise Conflict(f"the job's uploaded dataset {dataset['id']} has been deleted")
    session.rollback()  # no connection held while the file is read
    if upload is not None:
        shape, found = upload_rows(settings.dataset_path(upload), wanted)
    elif dataset.get("name") is not None:
        shape, found = builtin_rows(dataset["name"], wanted)
    else:
        kind = (spec.get("model") or {}).get("kind")
        raise Conflict(f"job {job_id} trains on no dataset (model {kind}): it has no training examples")
    return TrainingExamplesOut(
        example_shape=list(shape),
        items=[TrainingExample(row=r, x=found[r].tolist()) for r in wanted],
    )


def parse_rows(text: str) -> list[int]:
    """``"12, 40,7"`` as ``[12, 40, 7]``; a `InvalidInput` on ``rows`` for anything but 1 to
    `MAX_ROWS` whole numbers."""
    parts = [p.strip() for p in text.split(",")]
    if parts == [""]:
        raise InvalidInput(_ROWS, "give at least one row, e.g. rows=12,40,7")
    if len(parts) > MAX_ROWS:
        raise InvalidInput(_ROWS, f"asks for {len(parts)} rows; at most {MAX_ROWS} a request")
    for p in parts:
        if not _ROW_NUMBER.fullmatch(p):
            shown = p if len(p) <= 20 else p[:20] + "..."
            raise InvalidInput(_ROWS, f"{shown!r} is not a row number: rows are whole numbers from 0")
    return [int(p) for p in parts]


def _check_range(rows: list[int], n: int, source: str) -> None:
    bad = [r for r in rows if r >= n]
    if bad:
        shown = str(bad[0]) if bad[0] < 10**20 else f"{str(bad[0])[:20]}..."
        raise InvalidInput(_ROWS, f"row {shown} is out of range: {source} has {n} rows (0..{n - 1})")


def builtin_rows(name: str, rows: list[int]) -> tuple[tuple[int, ...], dict[int, np.ndarray]]:
    """A built-in's examples at ``rows`` of its raw arrays (the rows ``Dataset.train_rows`` names),
    each shaped as one example. ``mnist5k_tasks``'s pool is mnist5k's images, then the same ones
    rotated as `hypercore.arrays.load` rotates them."""
    try:
        info = arrays.builtin_info(name)
    except arrays.DataError:
        raise Conflict(f"the job's dataset {name!r} is not a built-in this server has") from None
    shape = tuple(info["example_shape"])
    _check_range(rows, info["n_examples"], f"the built-in {name}")
    # `_raw` is the engine's own reader of the built-ins (JAX-free), so the rows mean the same here.
    X, _ = arrays._raw("mnist5k" if name == _ROTATED_POOL else name)
    found = {}
    for r in set(rows):
        if name == _ROTATED_POOL:
            image = X[r % len(X)].reshape(28, 28)
            found[r] = (np.rot90(image, k=1) if r >= len(X) else image).reshape(shape)
        else:
            found[r] = X[r].reshape(shape)
    return shape, found


def upload_rows(path: Path, rows: list[int]) -> tuple[tuple[int, ...], dict[int, np.ndarray]]:
    """An upload's examples at ``rows`` of ``X`` (``X_train`` when pre-split), each as stored; only
    those rows are read (module docstring)."""
    try:
        with arrays.NpzReader(path) as reader:
            name = "X" if "X" in reader.headers else "X_train"
            header = reader.headers[name]
            shape = header.shape[1:]
            _check_range(rows, header.shape[0], f"the upload's {name}")
            wanted = sorted(set(rows))
            if header.fortran_order:
                with contextlib.closing(reader.chunks(name)) as chunks:
                    values = _pick_fortran(chunks, header, wanted)
            else:
                values = _seek_rows(path, header, wanted)
    except arrays.DataError as e:  # a file changed or damaged since its upload was checked
        raise Conflict(f"the job's uploaded dataset cannot be read: {e}") from None
    return shape, dict(zip(wanted, values, strict=True))


def _seek_rows(path: Path, header: arrays.NpyHeader, rows: list[int]) -> list[np.ndarray]:
    """C-ordered rows, ascending: read in place from a stored member, or (deflated) by seeking
    forward through the member, which inflates in bounded chunks and never goes back."""
    example = header.shape[1:]
    row_bytes = math.prod(example) * header.dtype.itemsize
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(header.member)
        start = _stored_start(path, info) if info.compress_type == zipfile.ZIP_STORED else None
        opened = open(path, "rb") if start is not None else archive.open(info)  # noqa: SIM115
        with opened as fp:
            if start is not None:
                fp.seek(start)
            # past the .npy header (NpzReader took only versions 1.0 and 2.0)
            if np.lib.format.read_magic(fp) == (1, 0):
                np.lib.format.read_array_header_1_0(fp)
            else:
                np.lib.format.read_array_header_2_0(fp)
            base = fp.tell()
            out = []
            for r in rows:
                fp.seek(base + r * row_bytes)
                buffer = fp.read(row_bytes)
                if len(buffer) != row_bytes:
                    raise arrays.LayoutError(f"{header.member} ends before row {r}")
                out.append(np.frombuffer(buffer, header.dtype).reshape(example))
    return out


def _stored_start(path: Path, info: zipfile.ZipInfo) -> int | None:
    """Where a stored member's bytes begin in the file: after its local header (30 bytes, then the
    name and extra field, whose lengths only the local header gives); None if that header is not
    where the directory says, and the member is then read through `zipfile`."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<2H", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _pick_fortran(chunks, header: arrays.NpyHeader, rows: list[int]) -> list[np.ndarray]:
    """Rows of a Fortran-ordered array, whose values lie a column apart: picked from the streamed
    chunks (`NpzReader.chunks`), so memory stays at a chunk plus the rows asked."""
    n, example = header.shape[0], header.shape[1:]
    d = math.prod(example)
    # Element j (Fortran order within the example) of row r is value r + n j of the stream.
    positions = (np.asarray(rows, np.int64)[:, None] + n * np.arange(d, dtype=np.int64)[None, :]).ravel()
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    picked = np.empty(positions.size, header.dtype)
    start = done = 0
    for chunk in chunks:
        end = start + chunk.size
        upto = int(np.searchsorted(ordered, end))
        picked[order[done:upto]] = chunk[ordered[done:upto] - start]
        done, start = upto, end
        if done == ordered.size:
            break
    if done != ordered.size:
        raise arrays.LayoutError(f"{header.member} ends before the rows asked")
    return [row.reshape(example, order="F") for row in picked.reshape(len(rows), d)]
