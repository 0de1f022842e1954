"""Uploads cannot cost the API memory, 500s, megabyte error bodies or stray files.

1. Validation streams: the 764 KB deflated ``.npz`` of zeros whose ``X`` is 98,000 x 1,000 float64
   (it passes the declared-size check) is validated in a few MiB, not the ~840 MiB of loading it;
   arrays declaring more than ``REVTUNE_MAX_UPLOAD_ARRAY_BYTES`` are refused from their headers,
   before a value is read; at most ``REVTUNE_UPLOAD_VALIDATIONS`` run at once (one more waits
   ``REVTUNE_UPLOAD_VALIDATION_WAIT_S``, then gets 503 with Retry-After); values beyond float32's
   range are refused naming the array (every job on them failed later).
2. Crafted containers are 422 on ``file`` naming the member: no ``.npy`` magic, a header declaring
   shape (10^12, 4), zip compression method 93 (zstd), the "encrypted" flag, a corrupt deflate
   stream.
3. A zip of 150,000 members is refused with a short message naming a few and the count.
4. ``.upload-*.tmp`` files an API killed mid-validation left are removed at start-up.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from api_support import TestClient, problems
from security_support import npz, upload

import hypercore.arrays
from api import create_app, uploads

MIB = 1024 * 1024
ROWS, FEATURES = 98_000, 1_000  # the reproduced upload: 784,000,000 bytes of float64 zeros


@pytest.fixture(scope="module")
def zeros_npz(tmp_path_factory) -> bytes:
    """The reproduced upload, written a block at a time (the test never holds the 784 MB array)."""
    path = tmp_path_factory.mktemp("zeros") / "zeros.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("X.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f8", "fortran_order": False, "shape": (ROWS, FEATURES)}
            np.lib.format.write_array_header_1_0(f, header)
            block = bytes(8 * FEATURES * 1_000)
            for _ in range(ROWS // 1_000):
                f.write(block)
        with z.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.arange(ROWS) % 2)
    data = path.read_bytes()
    assert len(data) < MIB
    return data


@contextlib.contextmanager
def alice_on(service, **changes):
    """Alice on an app of her service's database with ``changes`` to the settings (the body cap,
    ``REVTUNE_MAX_UPLOAD_BYTES``, is fixed when the app is built: a new app gets a new one)."""
    settings = service.settings.model_copy(update=changes)
    app = create_app(settings, enqueue=service.enqueued.append)
    with TestClient(app, headers={"Authorization": f"Bearer {service.keys['alice']}"}) as client:
        yield client


def leftovers(service) -> list[str]:
    folder = service.settings.datasets_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---- 1. memory ------------------------------------------------------------------------------------


def test_validating_the_98000_by_1000_zeros_upload_takes_a_few_mib_not_the_array(service, zeros_npz):
    with alice_on(service, max_upload_bytes=100 * MIB, max_upload_array_bytes=1024 * MIB) as alice:
        tracemalloc.start()
        try:
            reply = upload(alice, zeros_npz, name="zeros")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert reply.status_code == 201, reply.text
    assert (reply.json()["n_rows"], reply.json()["n_features"]) == (ROWS, FEATURES)
    # Loading it took ~840 MiB (numpy's allocations are traced); streamed, a few chunks of 1 MiB.
    assert peak < 32 * MIB, f"peak {peak / MIB:.0f} MiB"


def test_arrays_declaring_more_than_the_setting_are_refused_from_their_headers(
    service, zeros_npz, monkeypatch
):
    read = []
    chunks = hypercore.arrays.NpzReader.chunks
    monkeypatch.setattr(
        hypercore.arrays.NpzReader,
        "chunks",
        lambda self, name, *a: read.append(name) or chunks(self, name, *a),
    )
    # The default limit (512 MiB) is below the zeros' 784,000,000 bytes.
    assert service.settings.max_upload_array_bytes == 512 * MIB
    with alice_on(service, max_upload_bytes=100 * MIB) as alice:
        tracemalloc.start()
        try:
            found = problems(upload(alice, zeros_npz))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    says = found["body.file"]
    assert says.startswith("X declares shape (98000, 1000) float64 (784000000 bytes)"), says
    assert f"at most {512 * MIB} (REVTUNE_MAX_UPLOAD_ARRAY_BYTES)" in says
    assert read == [], "no value was read"
    assert peak < 8 * MIB, f"peak {peak / MIB:.0f} MiB"
    assert leftovers(service) == []

    # A small upload over a small limit: the same refusal, naming the array that crosses it.
    service.app.state.settings = service.settings.model_copy(update={"max_upload_array_bytes": 1000})
    found = problems(upload(service.alice, npz(X=np.ones((40, 3)), y=np.arange(40) % 2)))
    assert found["body.file"].startswith("y declares shape (40,) int64 (320 bytes)"), found
    assert "at most 1000 (REVTUNE_MAX_UPLOAD_ARRAY_BYTES)" in found["body.file"]
    assert upload(service.bob, npz(X=np.ones((40, 3)), y=np.arange(40) % 2)).status_code == 422


def test_concurrent_validations_beyond_the_limit_wait_a_bounded_time_then_get_503(service, monkeypatch):
    service.app.state.settings = service.settings.model_copy(
        update={"upload_validations": 1, "upload_validation_wait_s": 0.3}
    )
    entered, release = threading.Event(), threading.Event()
    validate = uploads.validate_npz

    def slow_first(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        return validate(*args, **kwargs)

    monkeypatch.setattr(uploads, "validate_npz", slow_first)
    data = npz(X=np.ones((20, 3)), y=np.arange(20) % 2)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(upload(service.alice, data, name="first")))
    thread.start()
    try:
        assert entered.wait(30)
        started = time.monotonic()
        busy = upload(service.bob, data, name="second")
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join(30)
    assert busy.status_code == 503, busy.text
    assert busy.headers["Retry-After"] == "5"
    assert "REVTUNE_UPLOAD_VALIDATIONS" in busy.json()["detail"]
    assert 0.3 <= waited < 10, waited  # it waited for a slot, boundedly
    assert first[0].status_code == 201, first[0].text
    # The slot is free again: the next upload goes through, and no temporary file was left.
    assert upload(service.bob, data, name="third").status_code == 201
    assert not [n for n in leftovers(service) if n.endswith(".tmp")]


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        (
            {"X": np.array([[1e39, 0.0]] * 10), "y": np.arange(10) % 2},
            "X holds values beyond float32's range",
        ),
        (
            {
                "X_train": np.ones((10, 2)),
                "y_train": np.arange(10) % 2,
                "X_valid": np.array([[0.0, -3.5e38]] * 4),
                "y_valid": np.arange(4) % 2,
            },
            "X_valid holds values beyond float32's range (|x| > 3.4028235e+38)",
        ),
    ],
    ids=["X", "X_valid-negative"],
)
def test_values_beyond_float32s_range_are_refused_naming_the_array(service, arrays, says):
    found = problems(upload(service.alice, npz(**arrays)))
    assert says in found["body.file"], found
    assert leftovers(service) == []
    # float32's largest value itself is fine.
    big = np.float64(np.finfo(np.float32).max)
    assert upload(service.alice, npz(X=np.full((10, 2), big), y=np.arange(10) % 2)).status_code == 201


# ---- 2. crafted containers ------------------------------------------------------------------------


def patched(data: bytes, member: str, *, flag: int = 0, method: int | None = None) -> bytes:
    """``data`` with ``member``'s general-purpose flag bits or-ed with ``flag`` and its compression
    method set to ``method``, in both its local header and its central-directory entry."""
    out = bytearray(data)
    local = zipfile.ZipFile(io.BytesIO(data)).getinfo(member).header_offset
    end = out.rfind(b"PK\x05\x06")
    directory_bytes, at = struct.unpack("<2L", out[end + 12 : end + 20])
    central = None
    while at < end:
        assert out[at : at + 4] == b"PK\x01\x02"
        n, m, k = struct.unpack("<3H", out[at + 28 : at + 34])
        if out[at + 46 : at + 46 + n].decode() == member:
            central = at
        at += 46 + n + m + k
    assert out[local : local + 4] == b"PK\x03\x04" and central is not None
    for flags_at, method_at in ((local + 6, local + 8), (central + 8, central + 10)):
        (bits,) = struct.unpack("<H", out[flags_at : flags_at + 2])
        out[flags_at : flags_at + 2] = struct.pack("<H", bits | flag)
        if method is not None:
            out[method_at : method_at + 2] = struct.pack("<H", method)
    return bytes(out)


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def huge_header() -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 4)}
    )
    return buffer.getvalue() + bytes(64)


def corrupt_deflate() -> bytes:
    data = bytearray(
        zip_of({"X.npy": npy(np.ones((200, 30))), "y.npy": npy(np.arange(200) % 2)}, zipfile.ZIP_DEFLATED)
    )
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("X.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 2 : start + 12] = b"\xff" * 10
    return bytes(data)


GOOD = {"X": np.ones((20, 3)), "y": np.arange(20) % 2}
Y = npy(np.arange(20) % 2)

CRAFTED = {
    "no-npy-magic": (
        zip_of({"X.npy": b"these bytes are no .npy array", "y.npy": Y}),
        "X.npy is not a .npy array",
    ),
    "shape-10^12-by-4": (
        zip_of({"X.npy": huge_header(), "y.npy": Y}),
        "X.npy declares shape (1000000000000, 4) float64 (32000000000000 bytes) but holds 64 bytes",
    ),
    "zstd-method-93": (patched(npz(**GOOD), "X.npy", method=93), "X.npy uses zip compression method 93"),
    "encrypted-flag": (patched(npz(**GOOD), "y.npy", flag=0x1), "y.npy is encrypted"),
    "corrupt-deflate": (corrupt_deflate(), "X.npy: not a readable .npz file"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_containers_are_422_naming_the_member(service, case):
    data, says = CRAFTED[case]
    found = problems(upload(service.alice, data))
    assert says in found["body.file"], found
    assert leftovers(service) == []


# ---- 3. a zip of 150,000 members ------------------------------------------------------------------


def test_a_zip_of_150000_members_is_refused_naming_five_and_the_count(service):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for i in range(150_000):
            z.writestr(f"a{i}.npy", b"")
    data = buffer.getvalue()
    with alice_on(service, max_upload_bytes=100 * MIB) as alice:
        reply = upload(alice, data)
    says = problems(reply)["body.file"]
    assert len(reply.content) < 1_000, len(reply.content)
    assert "['a0', 'a1', 'a2', 'a3', 'a4', ...] (150000 in all)" in says, says
    assert "'a5'" not in says
    # A few too many arrays, within the body cap of the usual app: named alike.
    found = problems(upload(service.alice, zip_of({f"m{i}.npy": Y for i in range(12)})))
    assert (
        "holds arrays ['m0', 'm1', 'm10', 'm11', 'm2', ...] (12 in all); expected X and y"
        in found["body.file"]
    )


# ---- 4. stale temporary files ---------------------------------------------------------------------


def test_start_up_removes_the_temporary_files_a_killed_api_left(service):
    folder = service.settings.datasets_dir
    folder.mkdir(parents=True, exist_ok=True)
    old = time.time() - uploads.STALE_UPLOAD_S - 60
    for name in (".upload-killed.tmp", ".upload-also-killed.tmp", "kept.npz"):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (old, old))
    # Another API process sharing the folder may be validating this one right now: it stays.
    (folder / ".upload-in-flight.tmp").write_bytes(b"x")
    app = create_app(service.settings, enqueue=service.enqueued.append)
    with TestClient(app):
        pass
    assert leftovers(service) == [".upload-in-flight.tmp", "kept.npz"]
