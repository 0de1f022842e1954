"""The Numba side of `hypercore._fused`: SGD's loops, the fingerprint's, and the plumbing every
handler uses to decode XLA's call frame.

Imported (and compiled) only by `hypercore._fused.available`. Each handler is a C function
``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)`` (``xla/ffi/api/c_api.h``, API 0.x). Layouts read
here, in 8-byte words on a 64-bit platform:

* ``XLA_FFI_CallFrame``: struct_size, extension_start, api, ctx, stage, then ``args`` (struct_size,
  extension_start, size, types, args) at word 5 and ``rets`` (the same) at word 10;
* ``XLA_FFI_Buffer``: struct_size, extension_start, dtype, data, rank, dims;
* a metadata query (``extension_start`` of type 1) is answered with the API version the layouts
  above are from, 0.1, and no traits.

Every loop computes what `hypercore._fixed`'s formulation computes, operation for operation but for
the division by gamma's numerator (`_divmod_unsigned`, `_divmod_signed`: the same integers) and the
conversions between integers and floats (`_i2f` and the rest: the same bits, see there); unsigned
and signed 64-bit values are never mixed (Numba would promote them to float64). Each loop reads and
writes its arrays in place, one pointer per array, which is what lets LLVM vectorise it. Compiled
code is cached on disk (Numba's ``cache=True``: next to this file, or in ``NUMBA_CACHE_DIR``), so
only a machine's first process compiles.

The loops are single-threaded: `hypercore._fused_launch` (the steps' handlers) runs an array's
elements in chunks on XLA's own intra-op thread pool. (Numba's threads, OpenMP, inside the loops had
made the engine slower, not faster, on this project's 2-core machine.)
"""

from __future__ import annotations

import ctypes
import platform

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from hypercore import _fixed, _kernel_cache

_kernel_cache.install()  # before the first decorator: the kernels' cache is keyed by all their sources

# `hypercore._fixed`'s constants, typed for Numba (which freezes globals into the compiled code)
SCALE = _fixed.SCALE
INV_SCALE = 1.0 / SCALE
RANGE = _fixed.RANGE
LIMIT = np.int64(int(_fixed.RANGE) << _fixed.FRAC_BITS)
LIMIT_BELOW = LIMIT - np.int64(1)
GAMMA_BITS = np.uint64(_fixed.GAMMA_BITS)
SHIFT_S = np.int64(_fixed.GAMMA_BITS)
LOW16_S = np.int64(_fixed.D - 1)
LOW16_U = np.uint64(_fixed.D - 1)
SLOT_BITS = np.uint64(_fixed.SLOT_BITS)
LOW32_U = np.uint64((1 << _fixed.SLOT_BITS) - 1)
D_S = np.int64(_fixed.D)
API_MAJOR, API_MINOR = 0, 1
EXTENSION_METADATA = 1


@intrinsic
def _ptr(typingctx, address):
    """An int64 address as a ``void*``."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


@intrinsic
def _null(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(cgutils.voidptr_t, None)

    return types.voidptr(), codegen


@njit(inline="always", cache=True)
def _words(address, n):
    return carray(_ptr(address), (n,), np.int64)


@njit(inline="always", cache=True)
def _metadata(frame):
    """If this call is XLA's metadata query, answer it and return True."""
    ext = frame[1]
    if ext == 0:
        return False
    base = _words(ext, 4)  # struct_size, type (+ padding), next, metadata*
    if (base[1] & 0xFFFFFFFF) != EXTENSION_METADATA:
        return False
    md = _words(base[3], 6)  # struct_size, api_version{struct_size, ext, major|minor}, traits, state id
    md[1] = 24
    md[2] = 0
    md[3] = API_MAJOR | (API_MINOR << 32)
    md[4] = 0
    if md[0] >= 48:
        md[5] = 0  # state_type_id: XLA_FFI_UNKNOWN_TYPE_ID
    return True


@njit(inline="always", cache=True)
def _buffers(frame, word):
    return _words(frame[word + 4], frame[word + 2])  # (args|rets).args, of length .size


@njit(inline="always", cache=True)
def _size(buffer):
    b = _words(buffer, 6)
    dims = _words(b[5], b[4])
    n = 1
    for i in range(b[4]):
        n *= dims[i]
    return n


@njit(inline="always", cache=True)
def _data(buffer):
    return _words(buffer, 6)[3]


@njit(inline="always", cache=True)
def _array(buffer, n, dtype):
    return carray(_ptr(_data(buffer)), (n,), dtype)


@njit(inline="always", cache=True)
def _aliased(ret, arg, n, dtype):
    """A result the call updates in place: XLA aliases it to its argument (``input_output_aliases``);
    should the buffers ever differ, the argument is copied in first. In place, every array in a loop
    is read and written through one pointer, so LLVM's overlap checks pass and the loop vectorises
    (with a separate result pointer to the same memory they fail, and the loop runs scalar)."""
    out = _array(ret, n, dtype)
    if _data(ret) != _data(arg):
        out[:] = _array(arg, n, dtype)
    return out


@njit(inline="always", cache=True)
def _elems(table, i, n, dtype):
    """Entry ``i`` of a launch's pointer table (`hypercore._fused_launch`) as ``n`` elements."""
    return carray(_ptr(table[i]), (n,), dtype)


@njit(inline="always", cache=True)
def _value(table, i, dtype):
    """The scalar at entry ``i`` of a launch's pointer table."""
    return carray(_ptr(table[i]), (1,), dtype)[0]


@njit(inline="always", cache=True)
def _table_row(table, i, n, word):
    """Row ``word`` of the stack at entry ``i`` (``(words, *leaf)``, C order): n uint64s."""
    return carray(_ptr(table[i] + word * n * 8), (n,), np.uint64)


# Conversions between 64-bit integers and float64 in operations AVX2 has for vectors. x86 converts a
# 64-bit integer to or from a float only one element at a time before AVX-512DQ: in a vectorised loop
# each conversion became four extracts, four scalar conversions and four inserts, about a quarter of
# the reversible Adam step's time on an AVX2 CPU (BENCHMARKS.md). The ``_bits`` functions build the
# float from its bits instead: an integer below 2**51 in magnitude, added to the bits of
# ``2**52 + 2**51``, is that float's mantissa. A 64-bit integer is split into two parts, each converted
# exactly, and their sum rounded once, which is the correct rounding; a float is split into its integer
# part and the rest, each rounded to an integer through that mantissa. Each gives exactly what the
# hardware conversion gives, so nothing that reads their results can tell them apart
# (`tests/hypercore/test_fused.py` checks them against it). Where the CPU Numba compiles for converts
# vectors itself (AVX-512DQ, or not x86), the plain conversions are used.
MAGIC_F = 6755399441055744.0  # 2**52 + 2**51
MAGIC_I = np.int64(0x4338000000000000)  # its bits
TWO52_F = 4503599627370496.0  # 2**52
TWO52_I = np.int64(0x4330000000000000)
TWO52_U = np.uint64(0x4330000000000000)
TWO32_F = 4294967296.0
INV_TWO32_F = 1.0 / TWO32_F
SCALE_HI = SCALE * INV_TWO32_F  # 2**16: `_to_fixed`'s scale, less the 32 bits `_rint_hi_bits` adds
HALF_S = np.int64(32)
SIGN_S = np.int64(-(2**63))
SHIFT16_S = np.int64(16)
HIGH16_S = np.int64(0x0000FFFF00000000)  # bits 32 to 47
LOW48_S = np.int64(0x0000FFFFFFFFFFFF)


def _split_constants(e: int) -> tuple[np.int64, float, np.int64]:
    """`_i2f_split`'s constants for ``float64(x) * 2**e``: the bits of ``3 * 2**(67 + e)`` (whose
    mantissa's spacing is ``2**(16 + e)``, so that bit 32 of an integer added to them counts
    ``2**(48 + e)``), that float plus the offsets ``2**(63 + e)`` and ``2**(52 + e)`` taken off again,
    and the bits of ``2**(52 + e)`` (spacing ``2**e``)."""
    top = 3 * 2.0 ** (67 + e)
    return (
        np.float64(top).view(np.int64),
        top + 2.0 ** (63 + e) + 2.0 ** (52 + e),
        np.float64(2.0 ** (52 + e)).view(np.int64),
    )


I2F_TOP_I, I2F_TOP_F, I2F_LOW_I = _split_constants(0)
FIXED_TOP_I, FIXED_TOP_F, FIXED_LOW_I = _split_constants(-_fixed.FRAC_BITS)  # `_from_fixed`'s


def _native_conversions() -> bool:
    """Whether the CPU Numba compiles for converts 64-bit integers and floats in vectors."""
    from numba.core import config

    if config.CPU_NAME or config.CPU_FEATURES:  # compiling for some other CPU: the portable way
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True  # AArch64 (NEON, SVE) and the rest convert vectors of 64-bit lanes
    return bool(llvm.get_host_cpu_features().get("avx512dq", False))


NATIVE_CONVERSIONS = _native_conversions()  # frozen into the compiled code, cached per CPU by Numba


def _bitcast(to_float: bool):
    def generic(typingctx, x):
        src = types.int64 if to_float else types.float64
        if to_float and isinstance(x, types.Integer) and x.bitwidth == 64:
            src = x
        dst = types.float64 if to_float else types.int64
        llvm_dst = ir.DoubleType() if to_float else ir.IntType(64)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_dst)

        return dst(src), codegen

    return intrinsic(generic)


_as_f64 = _bitcast(True)  # the float64 with these 64 bits (an int64 or uint64)
_as_i64 = _bitcast(False)  # the int64 with this float64's bits


@intrinsic
def _bits_u64(typingctx, x):
    """A float32's or float64's bits, zero-extended to a uint64 (the fingerprint's reading of them)."""
    if not isinstance(x, types.Float):
        return None
    width = x.bitwidth

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], ir.IntType(width))
        return bits if width == 64 else builder.zext(bits, ir.IntType(64))

    return types.uint64(x), codegen


@intrinsic
def _llrint(typingctx, x):
    """LLVM's ``llrint``: the float64 rounded to an int64 in the current rounding mode, which is
    round-half-to-even as ``np.rint`` (neither Numba nor XLA's threads change it). With AVX-512DQ a
    vector of them is one instruction (``vcvtpd2qq``), where ``rint`` and the conversion are three; the
    result is unspecified for ``|x| >= 2**63``, which no caller passes."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.DoubleType()])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.llrint.i64.f64"), args)

    return types.int64(types.float64), codegen


@intrinsic
def _fmuladd(typingctx, a, b, c):
    """LLVM's ``fmuladd``: ``a * b + c``, fused into one rounding where the CPU has FMA, in two
    otherwise; only for a product that is exact, where both give the same bits."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType()] * 3)
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.fmuladd.f64"), args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@njit(inline="always", cache=True)
def _i2f_small_bits(x):
    """``float64(x)`` for an int64 ``|x| < 2**51`` (exact)."""
    return _as_f64(x + MAGIC_I) - MAGIC_F


@njit(inline="always", cache=True)
def _i2f_split(x, top_i, top_f, low_i):
    """``float64(x) * 2**e`` for any int64, correctly rounded (`_split_constants(e)`): the top 16 bits
    of ``x`` with the sign bit flipped (``x``'s top part plus ``2**15``) go into bits 32 to 47 of the
    mantissa of ``3 * 2**(67 + e)``, the low 48 bits into that of ``2**(52 + e)``; both floats are
    exact, and their sum, less the offsets, is rounded once. Six vector operations on AVX2."""
    top = _as_f64((((x ^ SIGN_S) >> SHIFT16_S) & HIGH16_S) + top_i) - top_f
    return top + _as_f64((x & LOW48_S) | low_i)


@njit(inline="always", cache=True)
def _i2f_bits(x):
    """``float64(x)`` for any int64, correctly rounded."""
    return _i2f_split(x, I2F_TOP_I, I2F_TOP_F, I2F_LOW_I)


@njit(inline="always", cache=True)
def _u2f_bits(x):
    """``float64(x)`` for any uint64, correctly rounded."""
    hi = _as_f64((x >> np.uint64(32)) | TWO52_U) - TWO52_F
    return hi * TWO32_F + (_as_f64((x & LOW32_U) | TWO52_U) - TWO52_F)


@njit(inline="always", cache=True)
def _f2i_small_bits(d):
    """``int64(d)`` for an integral float64 ``|d| < 2**51``."""
    return _as_i64(d + MAGIC_F) - MAGIC_I


@njit(inline="always", cache=True)
def _rint_hi_bits(y):
    """``int64(rint(y * 2**32))`` for float64 ``|y| < 2**31``: the integer part ``t`` of ``y``
    (truncated) and the rest ``(y - t) 2**32`` (``|r| < 2**32``) are both exact; ``t`` converts through
    `MAGIC_F`'s mantissa, and so does the rest, rounded to an integer there once, half to even. As ``t
    2**32`` is even, that is the rounding of the whole. No separate ``rint``; the multiply-add is exact
    whether fused or not. (`MAGIC_I`'s low 32 bits are zero: the shift leaves ``t 2**32`` alone.)"""
    t = np.trunc(y)
    r = _as_i64(_fmuladd(y - t, TWO32_F, MAGIC_F))
    return (_as_i64(t + MAGIC_F) << HALF_S) + r - MAGIC_I


@njit(inline="always", cache=True)
def _f2i_bits(d):
    """``int64(rint(d))`` for float64 ``|d| < 2**63``: ``int64(d)`` for an integral ``d``."""
    return _rint_hi_bits(d * INV_TWO32_F)


@njit(inline="always", cache=True)
def _f2u_bits(d):
    """``uint64(d)`` for an integral float64 ``0 <= d < 2**64``."""
    hi = np.floor(d * INV_TWO32_F)
    lo = _as_i64(d - hi * TWO32_F + TWO52_F) - TWO52_I
    return np.uint64(_f2i_small_bits(hi) << HALF_S) | np.uint64(lo)


@njit(inline="always", cache=True)
def _i2f_small(x):
    return np.float64(x) if NATIVE_CONVERSIONS else _i2f_small_bits(x)


@njit(inline="always", cache=True)
def _i2f(x):
    return np.float64(x) if NATIVE_CONVERSIONS else _i2f_bits(x)


@njit(inline="always", cache=True)
def _u2f(x):
    return np.float64(x) if NATIVE_CONVERSIONS else _u2f_bits(x)


@njit(inline="always", cache=True)
def _f2i_small(d):
    return np.int64(d) if NATIVE_CONVERSIONS else _f2i_small_bits(d)


@njit(inline="always", cache=True)
def _f2i(d):
    return np.int64(d) if NATIVE_CONVERSIONS else _f2i_bits(d)


@njit(inline="always", cache=True)
def _f2u(d):
    return np.uint64(d) if NATIVE_CONVERSIONS else _f2u_bits(d)


@njit(inline="always", cache=True)
def _rint_i64(d):
    """``int64(rint(d))`` for float64 ``|d| < 2**63``."""
    return _llrint(d) if NATIVE_CONVERSIONS else _f2i_bits(d)


@njit(inline="always", cache=True)
def _to_fixed(x):
    """`hypercore._fixed.to_fixed` for one float64: ``(value, ok)``."""
    ok = abs(x) < RANGE
    x = x if ok else 0.0
    return (_llrint(x * SCALE) if NATIVE_CONVERSIONS else _rint_hi_bits(x * SCALE_HI)), ok


@njit(inline="always", cache=True)
def _from_fixed_bits(i):
    """``float64(i) * 2**-48``, the scale folded into `_i2f_split`'s constants (exact)."""
    return _i2f_split(i, FIXED_TOP_I, FIXED_TOP_F, FIXED_LOW_I)


@njit(inline="always", cache=True)
def _from_fixed(i):
    return np.float64(i) * INV_SCALE if NATIVE_CONVERSIONS else _from_fixed_bits(i)


@njit(inline="always", cache=True)
def _outside(x):
    """Negative exactly where the fixed-point ``x`` is outside ``(-LIMIT, LIMIT)``
    (`hypercore._fixed.in_range`): two adds, which cannot overflow inside, and no compare, so that a
    loop ORs its elements' flags into one int64 and tests the sign once."""
    return (x + LIMIT_BELOW) | (LIMIT_BELOW - x)


# Exact division by gamma's numerator ``1 <= n <= 2**16`` in float64, which vectorises (a 64-bit
# integer division does not): a quotient estimate from the float reciprocal, off by at most
# ``3 * 2**11 / n + 1`` for a 64-bit dividend, is corrected once by the remainder's own estimate (an
# exact float64 integer, off by at most one) and once by a compare. ``inv`` is ``1.0 / n``.
_BELOW_2_64 = 18446744073709549568.0  # the largest float64 below 2**64


@njit(inline="always", cache=True)
def _divmod_unsigned(x, n, inv):
    """``(x // n, x % n)`` for uint64 ``x``, as uint64 and int64."""
    q = _f2u(np.floor(min(_u2f(x) * inv, _BELOW_2_64)))
    r = np.int64(x - q * np.uint64(n))  # |r| <= (3 * 2**11 + 1) n: exact as int64 and float64
    c = _f2i_small(np.floor(_i2f_small(r) * inv))
    q = np.uint64(np.int64(q) + c)
    r = r - c * n
    if r < 0:
        q -= np.uint64(1)
        r += n
    if r >= n:
        q += np.uint64(1)
        r -= n
    return q, r


@njit(inline="always", cache=True)
def _divmod_signed(x, n, inv):
    """Floor ``(x // n, x mod n)`` for int64 ``|x| < 2**62``."""
    q = _f2i(np.floor(_i2f(x) * inv))
    r = x - q * n
    c = _f2i_small(np.floor(_i2f_small(r) * inv))
    q = q + c
    r = r - c * n
    if r < 0:
        q -= 1
        r += n
    if r >= n:
        q += 1
        r -= n
    return q, r


@njit(inline="always", cache=True)
def _pow2_exponent(n):
    """``j`` where gamma's numerator ``n`` is ``2**j``, else -1. The scaled velocity multiplies by
    powers of two alone (its renormalisations, `hypercore.reversible.sgd_renormalisations`), and
    dividing by those is a shift and a mask."""
    if n & (n - 1) != 0:
        return np.int64(-1)
    j = np.int64(0)
    while (np.int64(1) << j) < n:
        j += 1
    return j


@njit(inline="always", cache=True)
def _divmod_unsigned_by(x, n, inv, j):
    """`_divmod_unsigned`, by a shift and a mask where ``n = 2**j`` (``j >= 0``)."""
    if j >= 0:
        return x >> np.uint64(j), np.int64(x & np.uint64(n - 1))
    return _divmod_unsigned(x, n, inv)


@njit(inline="always", cache=True)
def _divmod_signed_by(x, n, inv, j):
    """`_divmod_signed`, by an arithmetic shift (floor) and a mask where ``n = 2**j`` (``j >= 0``)."""
    if j >= 0:
        return x >> j, x & (n - 1)
    return _divmod_signed(x, n, inv)


# `hypercore.reversible._fingerprint`: a leaf's term is ``LEAF_MUL * sum_e bits_e * (e ELEM_MUL +
# 2 leaf + 1)`` over its elements ``e`` in C order, mod 2**64. The multiplier is odd and affine in the
# index, so a chunk ``[a, b)`` of any kernel that reads the gradient adds its part from its first
# multiplier (`_fingerprint_first`); uint64 arithmetic wraps, so the parts add up in any order to the
# same bits. A loop carries the multiplier ``mul`` from element to element (``mul += ELEM_MUL``): an add
# per vector where the product ``i * ELEM_MUL`` was three 32-bit multiplies on AVX2.
ELEM_MUL = np.uint64(_fixed.FINGERPRINT_ELEM_MUL)
LEAF_MUL = np.uint64(_fixed.FINGERPRINT_LEAF_MUL)


@njit(inline="always", cache=True)
def _fingerprint_first(a, leaf):
    """The multiplier of element ``a`` of leaf number ``leaf``."""
    return np.uint64(a) * ELEM_MUL + np.uint64(2 * leaf + 1)


@njit(inline="always", cache=True)
def _fingerprint_term(x, mul):
    """An element's term, its multiplier ``mul``."""
    return _bits_u64(x) * mul


@njit(cache=True)
def _fingerprint_part(g, first):
    """A chunk's part of the hash (before `LEAF_MUL`), its first element's multiplier ``first``."""
    h = np.uint64(0)
    mul = first
    for i in range(g.size):
        h += _fingerprint_term(g[i], mul)
        mul += ELEM_MUL
    return h


@njit(cache=True)
def _spill_loop(head, row, shift):
    """`hypercore._fixed._spill_one`: every head's low 32 bits into its stack word at ``shift``."""
    for i in range(head.size):
        h = head[i]
        row[i] = row[i] | ((h & LOW32_U) << shift)
        head[i] = h >> SLOT_BITS


@njit(inline="always", cache=True)
def _update(wi, vi, gi, om, alpha):
    """The step after the velocity's multiplication: ``(w, v, bad)``, ``bad`` negative where the step
    left the range (`_outside`)."""
    d, ok1 = _to_fixed(om * np.float64(gi))
    vi = vi - d
    dw, ok2 = _to_fixed(alpha * _from_fixed(vi))
    wi = wi + dw
    return wi, vi, _outside(vi) | _outside(wi) | (np.int64(ok1 & ok2) - np.int64(1))


@njit(cache=True)
def _forward_loop(w, v, head, g, n, om, alpha, wf, first):
    """The step on ``[a, b)``; ``wf`` gets the new weights in the model's dtype (``g``'s), the copy the
    next step's gradient reads, so that XLA need not pass over the weights again to make it. Returns
    the range flag and the gradient's fingerprint part (`_fingerprint_part`, from ``first``). With
    ``n = 2**16``, the identity (the scaled velocity's steps without a renormalisation: most steps),
    the loop skips the division and leaves the heads alone."""
    if n == D_S:
        return _forward_plain_loop(w, v, g, om, alpha, wf, first)
    inv = 1.0 / np.float64(n)
    j = _pow2_exponent(n)
    bad = np.int64(0)
    h = np.uint64(0)
    mul = first
    for i in range(w.size):
        h += _fingerprint_term(g[i], mul)
        mul += ELEM_MUL
        vi = v[i]
        r = np.uint64(vi & LOW16_S)
        q = vi >> SHIFT_S
        quotient, s = _divmod_unsigned_by((head[i] << GAMMA_BITS) | r, n, inv, j)
        wi, vi, bad_i = _update(w[i], q * n + s, g[i], om, alpha)
        head[i] = quotient
        v[i] = vi
        w[i] = wi
        wf[i] = _from_fixed(wi)
        bad |= bad_i
    return bad >= 0, h


@njit(cache=True)
def _forward_plain_loop(w, v, g, om, alpha, wf, first):
    """`_forward_loop` at a step whose multiplier is the identity."""
    bad = np.int64(0)
    h = np.uint64(0)
    mul = first
    for i in range(w.size):
        h += _fingerprint_term(g[i], mul)
        mul += ELEM_MUL
        wi, vi, bad_i = _update(w[i], v[i], g[i], om, alpha)
        v[i] = vi
        w[i] = wi
        wf[i] = _from_fixed(wi)
        bad |= bad_i
    return bad >= 0, h


@njit(inline="always", cache=True)
def _stack_row(frame_args, index, n, word):
    """Row ``word`` of the stack argument ``index`` (``(words, *leaf)``, C order): n uint64s."""
    return carray(_ptr(_data(frame_args[index]) + word * n * 8), (n,), np.uint64)


# Each kernel below is a `prepare` (the copies into results XLA did not alias, before any chunk runs), a
# `body` on elements ``[a, b)`` of its arrays, which writes what it reduces into ``part``, and, where
# it reduces, a `finish` that combines the chunks' parts in chunk order; `hypercore._fused_launch`
# splits the elements into chunks and runs the bodies, on XLA's threads where it can. The arrays are
# read through a table of the call's buffer pointers: arguments first, then results.


@njit(cache=True)
def _sgd_forward_prepare(args, rets, n):
    # args: w, v, head, stack, g, n, om, alpha, word, shift, do, leaf
    # rets: w, v, head, stack, w_model, ok, fingerprint
    for i in range(3):
        _aliased(rets[i], args[i], n, np.int64)
    _aliased(rets[3], args[3], _size(args[3]), np.uint64)


@njit(cache=True)
def _sgd_forward_body(table, n, a, b, part, gdtype):
    w = _elems(table, 12, n, np.int64)[a:b]
    v = _elems(table, 13, n, np.int64)[a:b]
    head = _elems(table, 14, n, np.uint64)[a:b]
    if _value(table, 10, np.bool_):
        _spill_loop(
            head, _table_row(table, 15, n, _value(table, 8, np.int64))[a:b], _value(table, 9, np.uint64)
        )
    g = _elems(table, 4, n, gdtype)[a:b]
    ok, h = _forward_loop(
        w,
        v,
        head,
        g,
        _value(table, 5, np.int64),
        _value(table, 6, np.float64),
        _value(table, 7, np.float64),
        _elems(table, 16, n, gdtype)[a:b],
        _fingerprint_first(a, _value(table, 11, np.int64)),
    )
    part[0] = 1.0 if ok else 0.0
    part[1] = _as_f64(h)


@njit(cache=True)
def _undo_weights_loop(w, v, alpha, wf):
    for i in range(w.size):
        dw, _ = _to_fixed(alpha * _from_fixed(v[i]))
        wi = w[i] - dw
        w[i] = wi
        wf[i] = _from_fixed(wi)


@njit(cache=True)
def _sgd_undo_weights_prepare(args, rets, n):
    # args: w, v, alpha; rets: w, w_model
    _aliased(rets[0], args[0], n, np.int64)


@njit(cache=True)
def _sgd_undo_weights_body(table, n, a, b, part, dtype):
    _undo_weights_loop(
        _elems(table, 3, n, np.int64)[a:b],
        _elems(table, 1, n, np.int64)[a:b],
        _value(table, 2, np.float64),
        _elems(table, 4, n, dtype)[a:b],
    )


@njit(inline="always", cache=True)
def _undo_one(vi, h, gi, n, nu, inv, j, om, row_i, mask, shift, do):
    """One parameter's `undo_state`: ``(v_t, head)`` from ``v_{t+1}`` and the head (``j``:
    `_pow2_exponent` of ``n``)."""
    d, _ = _to_fixed(om * np.float64(gi))
    q, s = _divmod_signed_by(vi + d, n, inv, j)
    h = h * nu + np.uint64(s)
    r = np.int64(h & LOW16_U)
    h = h >> GAMMA_BITS
    if do:
        h = (h << SLOT_BITS) | ((row_i & mask) >> shift)
    return (q << SHIFT_S) + r, h


@njit(cache=True)
def _undo_state_loop(v, head, g, row, n, om, shift, do):
    nu = np.uint64(n)
    inv = 1.0 / np.float64(n)
    j = _pow2_exponent(n)
    mask = LOW32_U << shift
    for i in range(v.size):
        v[i], head[i] = _undo_one(v[i], head[i], g[i], n, nu, inv, j, om, row[i], mask, shift, do)


@njit(cache=True)
def _sgd_undo_state_prepare(args, rets, n):
    # args: v, head, g, stack, n, om, word, shift, do; rets: v, head
    _aliased(rets[0], args[0], n, np.int64)
    _aliased(rets[1], args[1], n, np.uint64)


@njit(cache=True)
def _sgd_undo_state_body(table, n, a, b, part, gdtype):
    _undo_state_loop(
        _elems(table, 9, n, np.int64)[a:b],
        _elems(table, 10, n, np.uint64)[a:b],
        _elems(table, 2, n, gdtype)[a:b],
        _table_row(table, 3, n, _value(table, 6, np.int64))[a:b],
        _value(table, 4, np.int64),
        _value(table, 5, np.float64),
        _value(table, 7, np.uint64),
        _value(table, 8, np.bool_),
    )


# Reassociation lets LLVM vectorise the two sums (several partial sums, added at the end). Every
# other float operation in these loops is one rounding, or a product with a power of two (exact), so
# it cannot move anything else: the integer results stay XLA's, bit for bit (the engine's tests and
# `hypercore._fused`'s check compare them). The sums are fixed by the compiled code, the same bits
# on every run.
@njit(inline="always", cache=True, fastmath={"reassoc"})
def _adjoint_one(i, v_next, vi, v, g, dw, hw, dv, ct, w, wf, alpha, c, gm, s0, alpha_p):
    """Parameter ``i``'s adjoint, from ``v'_{t+1}`` (``v_next``) and the restored ``v'_t`` (``vi``,
    stored here), and the step before's undo of its weight with the weight's copy; ``d = dv + alpha
    dw`` is ``v_{t+1}``'s whole cotangent. Returns its ``dalpha`` (before the scale ``s1``) and
    ``dgamma`` terms. Both reverse loops run it after their own undo of the velocity."""
    dwi = dw[i] - np.float64(hw[i])
    d = dv[i] + alpha * dwi
    x, _ = _to_fixed(alpha_p * _from_fixed(vi))
    wi = w[i] - x
    v[i] = vi
    dw[i] = dwi
    ct[i] = c * d
    dv[i] = d * gm
    w[i] = wi
    wf[i] = _from_fixed(wi)
    return dwi * _from_fixed(v_next), d * (s0 * _from_fixed(vi) + np.float64(g[i]))


@njit(cache=True, fastmath={"reassoc"})
def _undo_adjoint_loop(  # noqa: PLR0913
    v, head, g, row, dw, dv, ct, n, om, alpha, shift, do, first, hw, w, wf, alpha_p, c, gm, s1, s0
):
    """The step's undo of the stored velocity ``v'`` (``om``: its increment's factor, ``n``: its
    multiplier) with the rule's adjoint (``alpha``, ``c = 1 - gamma``, ``gm = gamma``; ``s1``,
    ``s0``: the scales after and before the step; ``dw - hw``, ``hw`` the later step's
    vector-Jacobian product, is ``w_{t+1}``'s cotangent, and ``dw`` becomes it), then the step
    before's undo of the weights from the restored ``v'_t`` (``alpha_p``: its scaled alpha; 0 where
    there is none) and their copy ``wf`` in the model's dtype: the engine's reverse loop pipelined.
    Returns the sums of ``dalpha``, ``dgamma`` and the gradient's fingerprint part. With ``n =
    2**16`` and no unspill (most steps), the loop leaves the heads alone."""
    if n == D_S and not do:
        return _undo_adjoint_plain_loop(v, g, dw, dv, ct, om, alpha, first, hw, w, wf, alpha_p, c, gm, s1, s0)
    nu = np.uint64(n)
    inv = 1.0 / np.float64(n)
    j = _pow2_exponent(n)
    mask = LOW32_U << shift
    dalpha = 0.0
    dgamma = 0.0
    h = np.uint64(0)
    mul = first
    for i in range(v.size):
        h += _fingerprint_term(g[i], mul)
        mul += ELEM_MUL
        v_next = v[i]
        vi, head[i] = _undo_one(v_next, head[i], g[i], n, nu, inv, j, om, row[i], mask, shift, do)
        da, dg = _adjoint_one(i, v_next, vi, v, g, dw, hw, dv, ct, w, wf, alpha, c, gm, s0, alpha_p)
        dalpha += da
        dgamma += dg
    return s1 * dalpha, dgamma, h


@njit(cache=True, fastmath={"reassoc"})
def _undo_adjoint_plain_loop(v, g, dw, dv, ct, om, alpha, first, hw, w, wf, alpha_p, c, gm, s1, s0):
    """`_undo_adjoint_loop` at a step whose multiplier is the identity and that unspills nothing:
    the velocity's undo is an addition."""
    dalpha = 0.0
    dgamma = 0.0
    h = np.uint64(0)
    mul = first
    for i in range(v.size):
        h += _fingerprint_term(g[i], mul)
        mul += ELEM_MUL
        v_next = v[i]
        x, _ = _to_fixed(om * np.float64(g[i]))
        da, dg = _adjoint_one(i, v_next, v_next + x, v, g, dw, hw, dv, ct, w, wf, alpha, c, gm, s0, alpha_p)
        dalpha += da
        dgamma += dg
    return s1 * dalpha, dgamma, h


@njit(cache=True)
def _sgd_undo_adjoint_prepare(args, rets, n):
    # args: v, head, dv, g, stack, dw, n, om, alpha, word, shift, do, leaf, hw, w, alpha_p, c, gm, s1, s0
    # rets: v, head, dv, ct, dalpha, dgamma, fingerprint, dw, w, w_model
    _aliased(rets[0], args[0], n, np.int64)
    _aliased(rets[1], args[1], n, np.uint64)
    _aliased(rets[2], args[2], n, np.float64)
    _aliased(rets[7], args[5], n, np.float64)
    _aliased(rets[8], args[14], n, np.int64)


@njit(cache=True)
def _sgd_undo_adjoint_body(table, n, a, b, part, gdtype):
    part[0], part[1], h = _undo_adjoint_loop(
        _elems(table, 20, n, np.int64)[a:b],
        _elems(table, 21, n, np.uint64)[a:b],
        _elems(table, 3, n, gdtype)[a:b],
        _table_row(table, 4, n, _value(table, 9, np.int64))[a:b],
        _elems(table, 27, n, np.float64)[a:b],
        _elems(table, 22, n, np.float64)[a:b],
        _elems(table, 23, n, gdtype)[a:b],
        _value(table, 6, np.int64),
        _value(table, 7, np.float64),
        _value(table, 8, np.float64),
        _value(table, 10, np.uint64),
        _value(table, 11, np.bool_),
        _fingerprint_first(a, _value(table, 12, np.int64)),
        _elems(table, 13, n, gdtype)[a:b],
        _elems(table, 28, n, np.int64)[a:b],
        _elems(table, 29, n, gdtype)[a:b],
        _value(table, 15, np.float64),
        _value(table, 16, np.float64),
        _value(table, 17, np.float64),
        _value(table, 18, np.float64),
        _value(table, 19, np.float64),
    )
    part[2] = _as_f64(h)


@njit(cache=True)
def _fingerprint_body(table, n, a, b, part, dtype):
    # args: g, leaf; rets: hash. The chunk's uint64 part travels in a float64 word, bit for bit.
    part[0] = _as_f64(
        _fingerprint_part(_elems(table, 0, n, dtype)[a:b], _fingerprint_first(a, _value(table, 1, np.int64)))
    )


_HANDLER = types.voidptr(types.voidptr)  # every handler's C type (`hypercore._fused_launch`'s)


_registered: list[bool] = []


def _capsule(address: int):
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
    return new(address, b"xla._CUSTOM_CALL_TARGET", None)


def register() -> None:
    """Register every handler with XLA's FFI for the CPU (once per process)."""
    import jax

    from hypercore import _fused_launch  # the steps' handlers, which use this module's plumbing

    if _registered:
        return
    for name, handler in _fused_launch.HANDLERS.items():
        jax.ffi.register_ffi_target(name, _capsule(handler.address), platform="cpu")
    _registered.append(True)
