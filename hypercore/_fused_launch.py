"""How `hypercore._fused`'s step kernels run: each call's elements in chunks, on XLA's CPU threads.

A kernel is one weight array's loop (`hypercore._fused_kernels`, `_fused_kernels_adam`), bound by
memory and by exact 64-bit arithmetic, or a gradient's fingerprint, and XLA runs one custom call at a
time here: on its own, a large array's loop used one core of several. So a handler splits the
elements into chunks fixed by the array's size alone (`chunk_bounds`), hands the chunks to XLA's
intra-op thread pool through its FFI (``XLA_FFI_ThreadPool_Schedule``) and returns at once with an
FFI future (``XLA_FFI_Future_Create``), which the last chunk to finish sets available; XLA keeps the
call's buffers alive until then.

The handler never waits, so it cannot deadlock on a busy pool: it works through the chunks itself
too, each chunk taken by exactly one worker through an atomic counter, and a task that starts after
every chunk was taken only lets go of the launch. A launch record (`malloc`'d: the tasks may outlive the
handler's frame) holds the counters, the call's buffer pointers and each chunk's reductions; the last
participant frees it. What a chunk reduces (the forward steps' range flag, the adjoints' sums) is
combined in chunk order, so the results do not depend on which thread ran what, or on how many
there are: a machine with one thread runs the same chunks in turn. Small arrays, and a runtime
without a thread pool or futures, run the chunks in the handler, synchronously.

The task's address is process-specific while the compiled code is cached on disk, so the code reads
it from a symbol (``revtune_fused_task``) each process defines before it loads the handlers; the most
threads a launch may use, likewise (``REVTUNE_FUSED_THREADS``, `thread_limit`: 0, the default, for the
pool's size; 1 for the calling thread alone).
"""

from __future__ import annotations

import ctypes
import os

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from hypercore import _fused_kernels as sgd
from hypercore import _fused_kernels_adam as adam
from hypercore._fused_kernels import _HANDLER, _buffers, _data, _metadata, _null, _ptr, _size, _words

_I64 = ir.IntType(64)

# ---------------------------------------------------------------------------------------------------
# What Numba has no words for: atomics, the C heap, calls through XLA's API table, the task's symbol.


@intrinsic
def _fetch_add(typingctx, address, value):
    """Atomically add ``value`` to the int64 at ``address``; returns the value before."""

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], _I64.as_pointer())
        return builder.atomic_rmw("add", ptr, args[1], "seq_cst")

    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _malloc(typingctx, nbytes):
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(cgutils.voidptr_t, [_I64]), "malloc"
        )
        return builder.ptrtoint(builder.call(fn, [args[0]]), _I64)

    return types.int64(types.int64), codegen


@intrinsic
def _free(typingctx, address):
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "free")
        builder.call(fn, [builder.inttoptr(args[0], cgutils.voidptr_t)])
        return context.get_dummy_value()

    return types.none(types.int64), codegen


@intrinsic
def _api_call(typingctx, function, arguments):
    """``XLA_FFI_Error* function(arguments*)``, both addresses; returns the error's address (0: none)."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(cgutils.voidptr_t, [cgutils.voidptr_t])
        ret = builder.call(
            builder.inttoptr(args[0], fnty.as_pointer()), [builder.inttoptr(args[1], cgutils.voidptr_t)]
        )
        return builder.ptrtoint(ret, _I64)

    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _address(typingctx, pointer):
    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], _I64)

    return types.int64(types.voidptr), codegen


TASK_SYMBOL = "revtune_fused_task"
THREADS_SYMBOL = "revtune_fused_threads"


def _process_word(name: str):
    """An intrinsic that loads the int64 this process defines as the symbol ``name``."""

    @intrinsic
    def load(typingctx):
        def codegen(context, builder, signature, args):
            gv = builder.module.globals.get(name)
            if gv is None:
                gv = ir.GlobalVariable(builder.module, _I64, name)
                gv.linkage = "external"
            return builder.load(gv)

        return types.int64(), codegen

    return load


_task_address = _process_word(TASK_SYMBOL)
_thread_limit = _process_word(THREADS_SYMBOL)


# `XLA_FFI_Api`'s function table (xla/ffi/api/c_api.h, API 0.x), in 8-byte words; a runtime whose table
# (its ``struct_size``) stops before the futures' functions runs every call here, synchronously.
API_FUTURE_CREATE, API_FUTURE_SET_AVAILABLE = 19, 20
API_THREAD_POOL_SCHEDULE, API_THREAD_POOL_NUM_THREADS = 17, 18
# `XLA_FFI_CallFrame`: ``ctx``, and ``future``, the out field after ``attrs`` (its ``struct_size`` ends
# at ``attrs``)
FRAME_CTX, FRAME_FUTURE, FRAME_WORDS_WITH_FUTURE = 3, 21, 22

# ---------------------------------------------------------------------------------------------------
# The kernels, by number: a launch record names one, and `_body` and `_finish` dispatch on it.

SGD_FORWARD_F32, SGD_FORWARD_F64, SGD_UNDO_WEIGHTS_F32, SGD_UNDO_WEIGHTS_F64 = 0, 1, 2, 3
SGD_UNDO_STATE_F32, SGD_UNDO_STATE_F64, SGD_UNDO_ADJOINT_F32, SGD_UNDO_ADJOINT_F64 = 4, 5, 6, 7
ADAM_FORWARD_F32, ADAM_FORWARD_F64, ADAM_UNDO_WEIGHTS = 8, 9, 10
ADAM_UNDO_ADJOINT_F32, ADAM_UNDO_ADJOINT_F64 = 11, 12
FINGERPRINT_F32, FINGERPRINT_F64 = 13, 14


@njit(cache=True)
def _prepare(kind, args, rets, n):
    if kind >= FINGERPRINT_F32:
        return  # reads its gradient, writes one hash
    if kind <= SGD_FORWARD_F64:
        sgd._sgd_forward_prepare(args, rets, n)
    elif kind <= SGD_UNDO_WEIGHTS_F64:
        sgd._sgd_undo_weights_prepare(args, rets, n)
    elif kind <= SGD_UNDO_STATE_F64:
        sgd._sgd_undo_state_prepare(args, rets, n)
    elif kind <= SGD_UNDO_ADJOINT_F64:
        sgd._sgd_undo_adjoint_prepare(args, rets, n)
    elif kind <= ADAM_FORWARD_F64:
        adam._adam_forward_prepare(args, rets, n)
    elif kind == ADAM_UNDO_WEIGHTS:
        adam._adam_undo_weights_prepare(args, rets, n)
    else:
        adam._adam_undo_adjoint_prepare(args, rets, n)


@njit(cache=True)
def _body(kind, table, n, a, b, part):
    if kind == SGD_FORWARD_F32:
        sgd._sgd_forward_body(table, n, a, b, part, np.float32)
    elif kind == SGD_FORWARD_F64:
        sgd._sgd_forward_body(table, n, a, b, part, np.float64)
    elif kind == SGD_UNDO_WEIGHTS_F32:
        sgd._sgd_undo_weights_body(table, n, a, b, part, np.float32)
    elif kind == SGD_UNDO_WEIGHTS_F64:
        sgd._sgd_undo_weights_body(table, n, a, b, part, np.float64)
    elif kind == SGD_UNDO_STATE_F32:
        sgd._sgd_undo_state_body(table, n, a, b, part, np.float32)
    elif kind == SGD_UNDO_STATE_F64:
        sgd._sgd_undo_state_body(table, n, a, b, part, np.float64)
    elif kind == SGD_UNDO_ADJOINT_F32:
        sgd._sgd_undo_adjoint_body(table, n, a, b, part, np.float32)
    elif kind == SGD_UNDO_ADJOINT_F64:
        sgd._sgd_undo_adjoint_body(table, n, a, b, part, np.float64)
    elif kind == ADAM_FORWARD_F32:
        adam._adam_forward_body(table, n, a, b, part, np.float32)
    elif kind == ADAM_FORWARD_F64:
        adam._adam_forward_body(table, n, a, b, part, np.float64)
    elif kind == ADAM_UNDO_WEIGHTS:
        adam._adam_undo_weights_body(table, n, a, b, part)
    elif kind == ADAM_UNDO_ADJOINT_F32:
        adam._adam_undo_adjoint_body(table, n, a, b, part, np.float32)
    elif kind == ADAM_UNDO_ADJOINT_F64:
        adam._adam_undo_adjoint_body(table, n, a, b, part, np.float64)
    elif kind == FINGERPRINT_F32:
        sgd._fingerprint_body(table, n, a, b, part, np.float32)
    else:
        sgd._fingerprint_body(table, n, a, b, part, np.float64)


@njit(cache=True)
def _finish(kind, table, nargs, chunks, parts):
    """Write what the chunks reduced: the range flag of a forward step (all chunks in range), the
    adjoints' sums (added in chunk order), the gradient's fingerprint (a forward step's, an undo with
    its adjoint's, or the fingerprint kernel's own)."""
    if kind <= SGD_FORWARD_F64 or kind == ADAM_FORWARD_F32 or kind == ADAM_FORWARD_F64:
        ok = True
        for c in range(chunks):
            ok = ok & (parts[c, 0] == 1.0)
        flag = nargs + (5 if kind <= SGD_FORWARD_F64 else 6)
        carray(_ptr(table[flag]), (1,), np.bool_)[0] = ok
        _write_fingerprint(table[flag + 1], parts, chunks, 1)
    elif kind == SGD_UNDO_ADJOINT_F32 or kind == SGD_UNDO_ADJOINT_F64:
        for j in range(2):  # dalpha, dgamma: a result each
            carray(_ptr(table[nargs + 4 + j]), (1,), np.float64)[0] = _chunk_sum(parts, chunks, j)
        _write_fingerprint(table[nargs + 6], parts, chunks, 2)
    elif kind == ADAM_UNDO_ADJOINT_F32 or kind == ADAM_UNDO_ADJOINT_F64:
        sums = carray(_ptr(table[nargs + 8]), (6,), np.float64)
        for j in range(6):
            sums[j] = _chunk_sum(parts, chunks, j)
        _write_fingerprint(table[nargs + 9], parts, chunks, 6)
    elif kind >= FINGERPRINT_F32:
        _write_fingerprint(table[nargs], parts, chunks, 0)


@njit(inline="always", cache=True)
def _chunk_sum(parts, chunks, j):
    total = 0.0
    for c in range(chunks):  # in chunk order, whichever thread ran which
        total += parts[c, j]
    return total


@njit(inline="always", cache=True)
def _write_fingerprint(address, parts, chunks, j):
    """The leaf's fingerprint term at ``address``: the chunks' uint64 parts (word ``j``, its bits in a
    float64), added with uint64's wrap-around (any order), times `LEAF_MUL`."""
    total = np.uint64(0)
    for c in range(chunks):
        total += np.uint64(sgd._as_i64(parts[c, j]))
    carray(_ptr(address), (1,), np.uint64)[0] = total * sgd.LEAF_MUL


# ---------------------------------------------------------------------------------------------------
# Chunks and launches

MIN_CHUNK = 16384  # elements: below two of these an array runs as one chunk
MAX_CHUNKS = 16
PART_WORDS = 8  # a chunk's reductions
MAX_TABLE = 40  # buffer pointers: a kernel's arguments and results (Adam's reverse half has 36;
# `hypercore._fused._call` refuses more while tracing)
# A launch record, in 8-byte words: the counters, the call, its table, then `parts` (chunks x PART_WORDS)
REFS, NEXT, REMAINING, CHUNKS, SIZE, KIND, NARGS, API, FUTURE, TABLE = range(10)
HEADER_WORDS = TABLE + MAX_TABLE


@njit(inline="always", cache=True)
def chunk_count(n):
    """How many chunks an array of ``n`` elements runs as: a function of ``n`` alone."""
    return max(1, min(MAX_CHUNKS, n // MIN_CHUNK))


@njit(inline="always", cache=True)
def chunk_bounds(n, chunks, c):
    step = (n + chunks - 1) // chunks
    a = min(c * step, n)
    return a, min(a + step, n)


@njit(cache=True)
def _participate(record):
    """Run chunks of the launch at ``record`` until none is left; the one that finishes the last chunk
    combines the reductions and sets the future; the last participant frees the record."""
    head = _words(record, HEADER_WORDS)
    chunks, n, kind = head[CHUNKS], head[SIZE], head[KIND]
    table = head[TABLE:]
    parts = carray(_ptr(record + 8 * HEADER_WORDS), (chunks, PART_WORDS), np.float64)
    while True:
        c = _fetch_add(record + 8 * NEXT, 1)
        if c >= chunks:
            break
        a, b = chunk_bounds(n, chunks, c)
        _body(kind, table, n, a, b, parts[c])
        if _fetch_add(record + 8 * REMAINING, -1) == 1:  # the last chunk: every other one is done
            _finish(kind, table, head[NARGS], chunks, parts)
            future = head[FUTURE]
            if future != 0:
                args = np.zeros(3, np.int64)  # XLA_FFI_Future_SetAvailable_Args
                args[0], args[2] = 24, future
                _api_call(_words(head[API], 24)[API_FUTURE_SET_AVAILABLE], args.ctypes.data)
    if _fetch_add(record + 8 * REFS, -1) == 1:
        _free(record)


@cfunc(types.void(types.voidptr), cache=True)
def _task(record):
    _participate(_address(record))


# The compiled launches read the task's address, and the most threads a launch may use (0: the pool's
# size; 1: none but the caller's), from these symbols, defined before they are loaded.
_task_slot = ctypes.c_int64(_task.address)
llvm.add_symbol(TASK_SYMBOL, ctypes.addressof(_task_slot))
thread_limit = ctypes.c_int64(int(os.environ.get("REVTUNE_FUSED_THREADS", "0") or 0))
llvm.add_symbol(THREADS_SYMBOL, ctypes.addressof(thread_limit))


@njit(cache=True)
def _pool_threads(api, ctx):
    """XLA's intra-op thread pool's size for this call, or 0 without one."""
    out = np.zeros(1, np.int64)
    args = np.zeros(4, np.int64)  # XLA_FFI_ThreadPool_NumThreads_Args
    args[0], args[2], args[3] = 32, ctx, out.ctypes.data
    if _api_call(_words(api, 24)[API_THREAD_POOL_NUM_THREADS], args.ctypes.data) != 0:
        return 0  # (an error object XLA does not free: once per call on a runtime without a pool)
    return out[0]


@njit(cache=True)
def _launch(call_frame, kind):
    frame = carray(call_frame, (15,), np.int64)
    if _metadata(frame):
        return _null()
    args, rets = _buffers(frame, 5), _buffers(frame, 10)
    nargs, nrets = frame[7], frame[12]
    n = _size(args[0])
    _prepare(kind, args, rets, n)
    chunks = chunk_count(n)
    api = frame[2]
    threads = 0
    limit = _thread_limit()
    if chunks > 1 and _words(api, 1)[0] >= 8 * (API_FUTURE_SET_AVAILABLE + 1) and limit != 1:
        threads = _pool_threads(api, frame[FRAME_CTX])
        if limit > 1:
            threads = min(threads, limit)
    words = HEADER_WORDS + chunks * PART_WORDS
    record, future = 0, 0
    if threads > 1:
        record = _malloc(8 * words)
        created = np.zeros(3, np.int64)  # XLA_FFI_Future_Create_Args
        created[0] = 16
        if record != 0 and _api_call(_words(api, 24)[API_FUTURE_CREATE], created.ctypes.data) == 0:
            future = created[2]
        elif record != 0:
            _free(record)
    if future == 0:  # one thread, no pool, no future or no memory: the same chunks, here
        local = np.zeros(words, np.int64)
        _fill(local.ctypes.data, 2, chunks, n, kind, nargs, args, nrets, rets, api, 0)  # never freed
        _participate(local.ctypes.data)
        local[REFS] = 0  # (`local` lives until here)
        return _null()
    tasks = min(chunks - 1, threads)
    _fill(record, 1 + tasks, chunks, n, kind, nargs, args, nrets, rets, api, future)
    carray(call_frame, (FRAME_WORDS_WITH_FUTURE,), np.int64)[FRAME_FUTURE] = future
    schedule = np.zeros(5, np.int64)  # XLA_FFI_ThreadPool_Schedule_Args
    for _ in range(tasks):
        schedule[0], schedule[2], schedule[3], schedule[4] = 40, frame[FRAME_CTX], _task_address(), record
        if _api_call(_words(api, 24)[API_THREAD_POOL_SCHEDULE], schedule.ctypes.data) != 0:
            _fetch_add(record + 8 * REFS, -1)  # not scheduled: one participant fewer
    _participate(record)
    return _null()


@njit(cache=True)
def _fill(record, refs, chunks, n, kind, nargs, args, nrets, rets, api, future):
    head = _words(record, HEADER_WORDS + chunks * PART_WORDS)
    head[:] = 0
    head[REFS], head[REMAINING], head[CHUNKS], head[SIZE] = refs, chunks, chunks, n
    head[KIND], head[NARGS], head[API], head[FUTURE] = kind, nargs, api, future
    for i in range(nargs):
        head[TABLE + i] = _data(args[i])
    for i in range(nrets):
        head[TABLE + nargs + i] = _data(rets[i])


@cfunc(_HANDLER, cache=True)
def _sgd_forward_f32(call_frame):
    return _launch(call_frame, SGD_FORWARD_F32)


@cfunc(_HANDLER, cache=True)
def _sgd_forward_f64(call_frame):
    return _launch(call_frame, SGD_FORWARD_F64)


@cfunc(_HANDLER, cache=True)
def _sgd_undo_weights_f32(call_frame):
    return _launch(call_frame, SGD_UNDO_WEIGHTS_F32)


@cfunc(_HANDLER, cache=True)
def _sgd_undo_weights_f64(call_frame):
    return _launch(call_frame, SGD_UNDO_WEIGHTS_F64)


@cfunc(_HANDLER, cache=True)
def _sgd_undo_state_f32(call_frame):
    return _launch(call_frame, SGD_UNDO_STATE_F32)


@cfunc(_HANDLER, cache=True)
def _sgd_undo_state_f64(call_frame):
    return _launch(call_frame, SGD_UNDO_STATE_F64)


@cfunc(_HANDLER, cache=True)
def _sgd_undo_adjoint_f32(call_frame):
    return _launch(call_frame, SGD_UNDO_ADJOINT_F32)


@cfunc(_HANDLER, cache=True)
def _sgd_undo_adjoint_f64(call_frame):
    return _launch(call_frame, SGD_UNDO_ADJOINT_F64)


@cfunc(_HANDLER, cache=True)
def _adam_forward_f32(call_frame):
    return _launch(call_frame, ADAM_FORWARD_F32)


@cfunc(_HANDLER, cache=True)
def _adam_forward_f64(call_frame):
    return _launch(call_frame, ADAM_FORWARD_F64)


@cfunc(_HANDLER, cache=True)
def _adam_undo_weights(call_frame):
    return _launch(call_frame, ADAM_UNDO_WEIGHTS)


@cfunc(_HANDLER, cache=True)
def _adam_undo_adjoint_f32(call_frame):
    return _launch(call_frame, ADAM_UNDO_ADJOINT_F32)


@cfunc(_HANDLER, cache=True)
def _adam_undo_adjoint_f64(call_frame):
    return _launch(call_frame, ADAM_UNDO_ADJOINT_F64)


@cfunc(_HANDLER, cache=True)
def _fingerprint_f32(call_frame):
    return _launch(call_frame, FINGERPRINT_F32)


@cfunc(_HANDLER, cache=True)
def _fingerprint_f64(call_frame):
    return _launch(call_frame, FINGERPRINT_F64)


HANDLERS = {
    "revtune_fingerprint_float32": _fingerprint_f32,
    "revtune_fingerprint_float64": _fingerprint_f64,
    "revtune_sgd_forward_float32": _sgd_forward_f32,
    "revtune_sgd_forward_float64": _sgd_forward_f64,
    "revtune_sgd_undo_weights_float32": _sgd_undo_weights_f32,
    "revtune_sgd_undo_weights_float64": _sgd_undo_weights_f64,
    "revtune_sgd_undo_state_float32": _sgd_undo_state_f32,
    "revtune_sgd_undo_state_float64": _sgd_undo_state_f64,
    "revtune_sgd_undo_adjoint_float32": _sgd_undo_adjoint_f32,
    "revtune_sgd_undo_adjoint_float64": _sgd_undo_adjoint_f64,
    "revtune_adam_forward_float32": _adam_forward_f32,
    "revtune_adam_forward_float64": _adam_forward_f64,
    "revtune_adam_undo_weights": _adam_undo_weights,
    "revtune_adam_undo_adjoint_float32": _adam_undo_adjoint_f32,
    "revtune_adam_undo_adjoint_float64": _adam_undo_adjoint_f64,
}
