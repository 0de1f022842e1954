"""The Numba loops of `hypercore._fused` for reversible Adam and AdamW: the forward step, the undo of
the weights, and the undo of ``m`` and ``v`` with the step's adjoint.

Each function is `hypercore.adam`'s operation of the same name on one element: the exact
multiplication by ``n / 2**24`` through the head (`_mul_beta`, `_mul_beta_v`) and the inverse
`_div_beta`, ``v``'s two 62-bit limbs, the update direction (`_direction`'s operations in its order),
so that the integers come out as XLA's, bit for bit. ``error_model="numpy"``: a float division by zero
is IEEE's, not a Python exception, whose test in every iteration kept the loops from vectorising. The
plumbing (the call frame, results in place) is `hypercore._fused_kernels`'; the handlers, which run
chunks of an array on XLA's threads, are `hypercore._fused_launch`'s.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hypercore import _fixed, adam
from hypercore._fused_kernels import (
    ELEM_MUL,
    INV_SCALE,
    MAGIC_F,
    MAGIC_I,
    _aliased,
    _as_f64,
    _as_i64,
    _elems,
    _f2i,
    _fingerprint_first,
    _fingerprint_term,
    _from_fixed,
    _i2f,
    _outside,
    _rint_i64,
    _size,
    _spill_loop,
    _table_row,
    _to_fixed,
    _value,
)

# `hypercore.adam`'s constants, typed for Numba
BETA_BITS_S = np.int64(adam.BETA_BITS)
BETA_BITS_U = np.uint64(adam.BETA_BITS)
DB = np.int64(adam.DB)
INV_DB = 1.0 / adam.DB
LIMB_BITS = np.int64(adam.LIMB_BITS)
LIMB_MASK = np.int64((1 << adam.LIMB_BITS) - 1)
LIMB_UNIT = float(2**adam.LIMB_BITS)
V_SCALE = adam.V_SCALE
V_RANGE = adam.V_RANGE
HI_SCALE = 2.0 ** (adam.LIMB_BITS - adam.V_FRAC_BITS)
LO_SCALE = 1.0 / V_SCALE
M24, M31, M32 = (np.int64((1 << k) - 1) for k in (24, 31, 32))
M24_U = np.uint64(adam.DB - 1)


# The quotient estimate is biased low by ``DIVMOD_BIAS`` so that it is the quotient or one less, never
# one more, and one correction finishes it: for ``|x| < 2**63`` and ``n >= 2**23`` the quotient is below
# ``2**40``, and the float64 estimate (three roundings, the product of the converted ``x`` with the
# rounded ``1 / n``) is within ``3 * 2**-13`` of ``x / n``, the subtraction of the bias within
# another ``2**-13``: far less than the bias, which is far less than one.
#
# The floor is taken by rounding to nearest instead, which the float adds do for free: ``y = x / n``
# estimated, less ``1/2`` and the bias, lies in ``(Q - 1/2 - 2**-8 - 2**-11, Q + 1/2 - 2**-8 + 2**-11)``
# for the quotient ``Q = floor(x / n)``, so its nearest integer is ``Q - 1`` or ``Q``; added to
# ``2**52 + 2**51`` (where the float64 spacing is 1) it is rounded to that integer, whose bits, less
# those of the constant, are the int64 (`_f2i_small_bits`' trick). That replaces a floor (two
# instructions on x86) and a conversion with an add and an integer subtraction. AdamW did eleven of
# these divisions per weight and step (three forward, two in the undo of ``w``, six in that of ``m`` and
# ``v``); with `_rint_i64`'s one-instruction rounding, the three loops ran 1.11 to 1.26 times as fast
# (BENCHMARKS.md, on an Intel Xeon). Since the state is stored scaled (`hypercore.adam`, "Scaled
# state"), they run only at a step that halves ``m``, ``v`` or ``w``: none at most steps.
DIVMOD_BIAS = 2.0**-8
_DIVMOD_SHIFT = 0.5 + DIVMOD_BIAS


@njit(inline="always", cache=True, error_model="numpy")
def _divmod(x, n, inv):
    """`hypercore.adam._divmod`: floor ``(x div n, x mod n)`` for int64 ``x``, ``2**23 <= n <= 2**24``."""
    q = _as_i64((_i2f(x) * inv - _DIVMOD_SHIFT) + MAGIC_F) - MAGIC_I
    r = x - q * n
    if r >= n:
        q += 1
        r -= n
    return q, r


@njit(inline="always", cache=True, error_model="numpy")
def _push(h1, r):
    return (np.uint64(h1) << BETA_BITS_U) | np.uint64(r)


@njit(inline="always", cache=True, error_model="numpy")
def _mul_beta(x, n, inv, head):
    h1, s = _divmod(np.int64(head), n, inv)  # `_pop`: the head is below 2**63
    low = (x & M32) * n + s
    x = (x >> np.int64(32)) * n * np.int64(256) + (low >> BETA_BITS_S)
    return x, _push(h1, low & M24)


@njit(inline="always", cache=True, error_model="numpy")
def _div_beta(x, n, inv, head):
    h1, r = np.int64(head >> BETA_BITS_U), np.int64(head & M24_U)  # `_unpush`
    a, b = _divmod(x, n, inv)
    q, s = _divmod((b << BETA_BITS_S) | r, n, inv)
    return a * DB + q, np.uint64(h1 * n + s)


@njit(inline="always", cache=True, error_model="numpy")
def _mul_beta_v(hi, lo, n, inv, head):
    h1, s = _divmod(np.int64(head), n, inv)
    c = (lo & M31) * n + s
    d0 = c & M31
    c = (lo >> np.int64(31)) * n + (c >> np.int64(31))
    d1 = c & M31
    c = (hi & M31) * n + (c >> np.int64(31))
    d2 = c & M31
    c3 = (hi >> np.int64(31)) * n + (c >> np.int64(31))
    lo = ((d2 & M24) << np.int64(38)) | (d1 << np.int64(7)) | (d0 >> BETA_BITS_S)
    hi = (c3 << np.int64(7)) | (d2 >> BETA_BITS_S)
    return hi, lo, _push(h1, d0 & M24)


@njit(inline="always", cache=True, error_model="numpy")
def _to_fixed_v(x):
    ok = np.isfinite(x) & (x >= 0.0) & (x < V_RANGE)
    y = (x if ok else 0.0) * V_SCALE
    hi = np.floor(y * (1.0 / LIMB_UNIT))
    return _f2i(hi), _rint_i64(y - hi * LIMB_UNIT), ok


@njit(inline="always", cache=True, error_model="numpy")
def _from_fixed_v(hi, lo):
    return _i2f(hi) * HI_SCALE + _i2f(lo) * LO_SCALE


@njit(inline="always", cache=True, error_model="numpy")
def _from_fixed_scalar(i):
    """`_from_fixed` by the hardware's conversion, which the float-only loop (`_adjoint_block`) runs
    faster with than with `hypercore._fused_kernels`' bit-built one on AVX2."""
    return np.float64(i) * INV_SCALE


@njit(inline="always", cache=True, error_model="numpy")
def _from_fixed_v_scalar(hi, lo):
    """`_from_fixed_v` by the hardware's conversions (see `_from_fixed_scalar`)."""
    return np.float64(hi) * HI_SCALE + np.float64(lo) * LO_SCALE


@njit(inline="always", cache=True, error_model="numpy")
def _add_v(ah, al, bh, bl):
    lo = al + bl
    return ah + bh + (lo >> LIMB_BITS), lo & LIMB_MASK


@njit(inline="always", cache=True, error_model="numpy")
def _direction(m, vh, vl, s1, c1, k2, eps):
    """`hypercore.adam._direction` from the stored moments, ``m``'s scale ``s1`` and ``k2 = s2 *
    (1.0 / c2)``, as XLA computes it once: ``(mhat, vhat, den, u)``."""
    m_f = _from_fixed(m) * s1
    vhat = _from_fixed_v(vh, vl) * k2
    den = np.sqrt(vhat) + eps
    return m_f / c1, vhat, den, m_f / (c1 * den)


# The renormalisations of the stored moments and (AdamW) weights (`hypercore.adam.renormalisations`): an
# exact multiplication by ``R / 2**24`` through the head before a step's update, ``m``'s, ``v``'s then
# ``w``'s, and their undo after the reverse step's, in the reverse order. The engine's are halvings,
# ``R = 2**23``; ``R = 2**24`` (none) is the identity, skipped: most steps have none.


@njit(cache=True, error_model="numpy")
def _renorm_loop(w, m, vh, vl, head, r1, r2, rw):
    """The renormalisations due at a forward step, in the head's order: ``m``'s, ``v``'s, ``w``'s."""
    inv1, inv2, invw = 1.0 / np.float64(r1), 1.0 / np.float64(r2), 1.0 / np.float64(rw)
    if r1 != DB:
        for i in range(m.size):
            m[i], head[i] = _mul_beta(m[i], r1, inv1, head[i])
    if r2 != DB:
        for i in range(m.size):
            vh[i], vl[i], head[i] = _mul_beta_v(vh[i], vl[i], r2, inv2, head[i])
    if rw != DB:
        for i in range(m.size):
            w[i], head[i] = _mul_beta(w[i], rw, invw, head[i])


@njit(cache=True, error_model="numpy")
def _unrenorm_loop(m, vh, vl, head, r1, r2):
    """The moments' renormalisations undone, ``v``'s then ``m``'s (``w``'s is `_undo_weights_loop`'s)."""
    inv1, inv2 = 1.0 / np.float64(r1), 1.0 / np.float64(r2)
    if r2 != DB:
        for i in range(m.size):
            vh[i], vl[i], head[i] = _div_beta_v(vh[i], vl[i], r2, inv2, head[i])
    if r1 != DB:
        for i in range(m.size):
            m[i], head[i] = _div_beta(m[i], r1, inv1, head[i])


# ---------------------------------------------------------------------------------------------------
# The forward step (after the spill): m's, then v's, then (AdamW) w's multiplication on one head.


@njit(cache=True, error_model="numpy")
def _forward_loop(w, m, vh, vl, head, g, n1, n2, lr, c1, c2, eps, first, r1, s1, r2, s2, rw, sw, wf):
    """The step on one chunk: the renormalisations where due, then the moments' updates (divided by
    their scales ``s1``, ``s2`` after the step) and the weights' (by ``sw``), and the new weights'
    copy ``wf = sw w'`` in the model's dtype, which the next gradient reads. Returns the range flag
    (of the moments and the new weights: the engine does not test the weights again) and the
    gradient's fingerprint part (from ``first``)."""
    if r1 != DB or r2 != DB or rw != DB:
        _renorm_loop(w, m, vh, vl, head, r1, r2, rw)
    k2 = s2 * (1.0 / c2)
    om1 = np.float64(DB - n1) * INV_DB
    om2 = np.float64(DB - n2) * INV_DB
    i1, i2 = om1 * (1.0 / s1), om2 * (1.0 / s2)  # `hypercore.adam.Adam._increments`' factors
    kw = lr * (1.0 / sw)
    bad = np.int64(0)  # negative once any element left the range (`_outside`)
    fp = np.uint64(0)
    mul = first
    for i in range(m.size):
        fp += _fingerprint_term(g[i], mul)
        mul += ELEM_MUL
        g64 = np.float64(g[i])
        dm, ok_m = _to_fixed(i1 * g64)
        dvh, dvl, ok_v = _to_fixed_v(i2 * (g64 * g64))
        mi = m[i] + dm
        vhi, vlo = _add_v(vh[i], vl[i], dvh, dvl)
        _, _, _, u = _direction(mi, vhi, vlo, s1, c1, k2, eps)
        d, ok_d = _to_fixed(kw * u)
        wi = w[i] - d
        w[i] = wi
        wf[i] = _from_fixed(wi) * sw
        m[i] = mi
        vh[i] = vhi
        vl[i] = vlo
        not_ok = np.int64(ok_m & ok_v & ok_d) - np.int64(1)  # -1 where a conversion was out of range
        # one OR into ``bad`` per element: two statements made LLVM leave the loop scalar
        bad |= _outside(mi) | _outside(wi) | vhi | (LIMB_MASK - vhi) | not_ok  # 0 <= vhi <= LIMB_MASK
    return bad >= 0, fp


@njit(cache=True)
def _adam_forward_prepare(args, rets, n):
    # args: w, m, vh, vl, head, stack, g, n1, n2, rw, lr, c1, c2, eps, word, shift, do, leaf, r1, s1, r2,
    # s2, sw; rets: w, m, vh, vl, head, stack, ok, fingerprint, wf
    for i in range(4):
        _aliased(rets[i], args[i], n, np.int64)
    _aliased(rets[4], args[4], n, np.uint64)
    _aliased(rets[5], args[5], _size(args[5]), np.uint64)


@njit(cache=True, error_model="numpy")
def _adam_forward_body(table, n, a, b, part, gdtype):
    w = _elems(table, 23, n, np.int64)[a:b]
    m = _elems(table, 24, n, np.int64)[a:b]
    vh = _elems(table, 25, n, np.int64)[a:b]
    vl = _elems(table, 26, n, np.int64)[a:b]
    head = _elems(table, 27, n, np.uint64)[a:b]
    if _value(table, 16, np.bool_):
        _spill_loop(
            head, _table_row(table, 28, n, _value(table, 14, np.int64))[a:b], _value(table, 15, np.uint64)
        )
    ok, fp = _forward_loop(
        w,
        m,
        vh,
        vl,
        head,
        _elems(table, 6, n, gdtype)[a:b],
        _value(table, 7, np.int64),
        _value(table, 8, np.int64),
        _value(table, 10, np.float64),
        _value(table, 11, np.float64),
        _value(table, 12, np.float64),
        _value(table, 13, np.float64),
        _fingerprint_first(a, _value(table, 17, np.int64)),
        _value(table, 18, np.int64),
        _value(table, 19, np.float64),
        _value(table, 20, np.int64),
        _value(table, 21, np.float64),
        _value(table, 9, np.int64),
        _value(table, 22, np.float64),
        _elems(table, 31, n, gdtype)[a:b],
    )
    part[0] = 1.0 if ok else 0.0
    part[1] = _as_f64(fp)


# ---------------------------------------------------------------------------------------------------
# The reverse step's first half: the weights back (w + lr u, then AdamW's division on the head).


@njit(cache=True, error_model="numpy")
def _undo_weights_loop(w, m, vh, vl, head, rw, lr, c1, c2, eps, s1, s2, sw):
    """``w_t`` from ``w_{t+1}``: the step's update added back, then (AdamW, where one was due) the
    weights' renormalisation undone."""
    k2, kw = s2 * (1.0 / c2), lr * (1.0 / sw)
    for i in range(w.size):
        _, _, _, u = _direction(m[i], vh[i], vl[i], s1, c1, k2, eps)
        d, _ = _to_fixed(kw * u)
        w[i] = w[i] + d
    if rw != DB:
        invw = 1.0 / np.float64(rw)
        for i in range(w.size):
            w[i], head[i] = _div_beta(w[i], rw, invw, head[i])


@njit(cache=True, error_model="numpy")
def _copy_block(w, wf, fs):
    """``wf = F w'`` in the model's dtype (``wf``'s): `hypercore.adam.Adam._copy`'s conversion, the
    same float64 product rounded once."""
    for i in range(w.size):
        wf[i] = _from_fixed(w[i]) * fs


@njit(cache=True)
def _adam_undo_weights_prepare(args, rets, n):
    # args: w, m, vh, vl, head, rw, lr, c1, c2, eps, s1, s2, sw; rets: w, head
    _aliased(rets[0], args[0], n, np.int64)
    _aliased(rets[1], args[4], n, np.uint64)


@njit(cache=True, error_model="numpy")
def _adam_undo_weights_body(table, n, a, b, part):
    _undo_weights_loop(
        _elems(table, 13, n, np.int64)[a:b],
        _elems(table, 1, n, np.int64)[a:b],
        _elems(table, 2, n, np.int64)[a:b],
        _elems(table, 3, n, np.int64)[a:b],
        _elems(table, 14, n, np.uint64)[a:b],
        _value(table, 5, np.int64),
        _value(table, 6, np.float64),
        _value(table, 7, np.float64),
        _value(table, 8, np.float64),
        _value(table, 9, np.float64),
        _value(table, 10, np.float64),
        _value(table, 11, np.float64),
        _value(table, 12, np.float64),
    )


# ---------------------------------------------------------------------------------------------------
# The reverse step's second half, `Adam.undo_adjoint_then_weights`: the adjoint of the step, all from
# ``m_{t+1}``, ``v_{t+1}`` and ``g_t`` (`hypercore.adam._adjoint_leaf`), then the undo of the moments'
# updates, of their renormalisations where due, and of the spill; then, from the restored ``m_t, v_t``
# still in cache, the step before's undo of the weights (`_undo_weights_loop`) and their copy in the
# model's dtype, which the next gradient reads (the engine's reverse loop is pipelined: a pass over
# the state and one over the weights per step saved). One loop touching every array did not vectorise
# (about 14 arrays: too many for LLVM's overlap checks), so each block of `BLOCK` weights goes through
# short loops, which do. The integer loops are `hypercore.adam`'s operations, bit for bit; the float
# loop reassociates (its sums vectorise, and scalar divisions become multiplications by the
# reciprocal), which moves the adjoint's float64 values by an ulp or so and nothing else: no integer
# depends on them.

BLOCK = 512
M13, M25, M37 = (np.int64((1 << k) - 1) for k in (13, 25, 37))
SLOT_BITS_U = np.uint64(_fixed.SLOT_BITS)
LOW32_U = np.uint64((1 << _fixed.SLOT_BITS) - 1)


@njit(inline="always", cache=True, error_model="numpy")
def _div_beta_v(hi, lo, n, inv, head):
    """`hypercore.adam.div_beta_v`: the long division of ``v 2**24 + (B mod 2**24)`` by ``n`` in
    37-bit chunks."""
    h1, r = np.int64(head >> BETA_BITS_U), np.int64(head & M24_U)
    q3, rem = _divmod(hi >> np.int64(25), n, inv)
    q2, rem = _divmod((rem << np.int64(37)) | ((hi & M25) << np.int64(12)) | (lo >> np.int64(50)), n, inv)
    q1, rem = _divmod((rem << np.int64(37)) | ((lo >> np.int64(13)) & M37), n, inv)
    q0, rem = _divmod((rem << np.int64(37)) | ((lo & M13) << BETA_BITS_S) | r, n, inv)
    lo = q0 | ((q1 & M25) << np.int64(37))
    hi = (q1 >> np.int64(25)) | (q2 << np.int64(12)) | (q3 << np.int64(49))
    return hi, lo, np.uint64(h1 * n + rem)


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _adjoint_block(  # noqa: PLR0913
    m, vh, vl, g, dw, hw, dm, dv, w, ct, lr, rc1, rc2, s1, s2, om1, om2, nd1, nd2, eps, f, first
):
    """The step's adjoint from the stored ``m_{t+1}, v_{t+1}`` (scaled by ``s1``, ``s2``): ``dw - hw``
    is ``w_{t+1}``'s cotangent (``hw`` the later step's vector-Jacobian product of the gradient, which
    the engine leaves to this pass), ``dm, dv`` become the cotangents of ``m_t, v_t``, ``ct`` minus
    ``g_t``'s, and ``dw`` becomes ``f (dw - hw)`` (AdamW's ``f``; 1 for Adam).
    Returns the block's sums of ``dlr, dc1, dc2, dfactor`` and of ``db1 b1, db2 b2`` (the caller
    divides), and its part of the gradient's fingerprint (from ``first``)."""
    s_lr, s_c1, s_c2, s_f, s_b1, s_b2 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    fp = np.uint64(0)
    mul = first
    for i in range(m.size):
        fp += _fingerprint_term(g[i], mul)
        mul += ELEM_MUL
        g64 = np.float64(g[i])
        m_f = _from_fixed_scalar(m[i]) * s1
        v_f = _from_fixed_v_scalar(vh[i], vl[i]) * s2
        mhat = m_f * rc1
        vhat = v_f * rc2
        root = np.sqrt(vhat)
        rden = 1.0 / (root + eps)
        u = mhat * rden
        d = dw[i] - np.float64(hw[i])
        s_lr -= d * u
        du = -lr * d
        dmhat = du * rden
        dvhat = (-0.5 * du * u * rden) / root if vhat > 0.0 else 0.0
        s_c1 -= dmhat * mhat * rc1
        s_c2 -= dvhat * vhat * rc2
        dmn = dm[i] + dmhat * rc1
        dvn = dv[i] + dvhat * rc2
        s_b1 += dmn * (m_f - g64)
        s_b2 += dvn * (v_f - g64 * g64)
        ct[i] = -(om1 * dmn + om2 * 2.0 * g64 * dvn)
        dm[i] = dmn * nd1
        dv[i] = dvn * nd2
        s_f += d * _from_fixed_scalar(w[i])  # read and written unconditionally: a branch with memory
        dw[i] = f * d  # access in it keeps the loop scalar (``f`` is 1 and ``w`` unused for Adam)
    return s_lr, s_c1, s_c2, s_f, s_b1, s_b2, fp


@njit(cache=True, error_model="numpy")
def _undo_updates_block(m, vh, vl, g, i1, i2):
    """`hypercore.adam.Adam.undo_state`'s subtractions on one block: ``v``'s update, then ``m``'s;
    ``i1``, ``i2`` are `hypercore.adam.Adam._increments`' factors."""
    for i in range(m.size):
        g64 = np.float64(g[i])
        dvh, dvl, _ = _to_fixed_v(i2 * (g64 * g64))
        lo = vl[i] - dvl
        vh[i] = vh[i] - dvh + (lo >> LIMB_BITS)
        vl[i] = lo & LIMB_MASK
        dmi, _ = _to_fixed(i1 * g64)
        m[i] = m[i] - dmi


@njit(cache=True, error_model="numpy")
def _unspill_block(head, row, mask, shift):
    """`hypercore._fixed.unspill_from` on one block."""
    for i in range(head.size):
        head[i] = (head[i] << SLOT_BITS_U) | ((row[i] & mask) >> shift)


@njit(cache=True, error_model="numpy")
def _undo_adjoint_loop(  # noqa: PLR0913
    m,
    vh,
    vl,
    head,
    g,
    row,
    dw,
    hw,
    dm,
    dv,
    w,
    ct,
    sums,
    n1,
    n2,
    nf,
    lr,
    c1,
    c2,
    eps,
    shift,
    do,
    first,
    r1,
    s1,
    r2,
    s2,
    wf,
    prev,
):
    """The chunk's adjoint and undo, then the earlier step's undo of the weights with their copy
    ``wf`` (``prev``: that step's ``lr, c1, c2, s1, s2, sw``, the copy's scale and ``rw``), in
    blocks; returns its part of the gradient's fingerprint."""
    om1 = np.float64(DB - n1) * INV_DB
    om2 = np.float64(DB - n2) * INV_DB
    rc1, rc2 = 1.0 / c1, 1.0 / c2
    i1, i2 = om1 * (1.0 / s1), om2 * (1.0 / s2)
    f = np.float64(nf) * INV_DB
    nd1, nd2 = np.float64(n1) * INV_DB, np.float64(n2) * INV_DB
    renorm = r1 != DB or r2 != DB
    mask = LOW32_U << shift
    lr_p, c1_p, c2_p, s1_p, s2_p, sw_p, fs_p = prev[0], prev[1], prev[2], prev[3], prev[4], prev[5], prev[6]
    rw_p = np.int64(prev[7])
    sums[:] = 0.0
    s_b1, s_b2 = 0.0, 0.0
    fp = np.uint64(0)
    for start in range(0, m.size, BLOCK):
        b = slice(start, min(start + BLOCK, m.size))  # the loops index views from 0: with offsets,
        # Numba's negative-index wraparound is a branch in every iteration, and they ran scalar
        s_lr, s_c1, s_c2, s_f, b1, b2, fp_b = _adjoint_block(
            m[b],
            vh[b],
            vl[b],
            g[b],
            dw[b],
            hw[b],
            dm[b],
            dv[b],
            w[b],
            ct[b],
            lr,
            rc1,
            rc2,
            s1,
            s2,
            om1,
            om2,
            nd1,
            nd2,
            eps,
            f,
            first + np.uint64(start) * ELEM_MUL,
        )
        _undo_updates_block(m[b], vh[b], vl[b], g[b], i1, i2)
        if renorm:
            _unrenorm_loop(m[b], vh[b], vl[b], head[b], r1, r2)
        if do:
            _unspill_block(head[b], row[b], mask, shift)
        _undo_weights_loop(w[b], m[b], vh[b], vl[b], head[b], rw_p, lr_p, c1_p, c2_p, eps, s1_p, s2_p, sw_p)
        _copy_block(w[b], wf[b], fs_p)
        fp += fp_b
        sums[0] += s_lr
        s_b1 += b1
        s_b2 += b2
        sums[3] += s_c1
        sums[4] += s_c2
        sums[5] += s_f
    sums[1] = s_b1 / nd1
    sums[2] = s_b2 / nd2
    return fp


@njit(cache=True)
def _adam_undo_adjoint_prepare(args, rets, n):
    # args: m, vh, vl, head, stack, g, dw, dm, dv, w, n1, n2, nf, lr, c1, c2, eps, word, shift, do, leaf,
    # r1, s1, r2, s2, hw, prev (8); rets: m, vh, vl, head, dw, dm, dv, ct, sums (6), fingerprint, w, wf
    for i in range(3):
        _aliased(rets[i], args[i], n, np.int64)
    _aliased(rets[3], args[3], n, np.uint64)
    for i in range(3):
        _aliased(rets[4 + i], args[6 + i], n, np.float64)
    _aliased(rets[10], args[9], n, np.int64)


@njit(cache=True, error_model="numpy")
def _adam_undo_adjoint_body(table, n, a, b, part, gdtype):
    fp = _undo_adjoint_loop(
        _elems(table, 27, n, np.int64)[a:b],
        _elems(table, 28, n, np.int64)[a:b],
        _elems(table, 29, n, np.int64)[a:b],
        _elems(table, 30, n, np.uint64)[a:b],
        _elems(table, 5, n, gdtype)[a:b],
        _table_row(table, 4, n, _value(table, 17, np.int64))[a:b],
        _elems(table, 31, n, np.float64)[a:b],
        _elems(table, 25, n, gdtype)[a:b],
        _elems(table, 32, n, np.float64)[a:b],
        _elems(table, 33, n, np.float64)[a:b],
        _elems(table, 37, n, np.int64)[a:b],
        _elems(table, 34, n, gdtype)[a:b],
        part[:6],
        _value(table, 10, np.int64),
        _value(table, 11, np.int64),
        _value(table, 12, np.int64),
        _value(table, 13, np.float64),
        _value(table, 14, np.float64),
        _value(table, 15, np.float64),
        _value(table, 16, np.float64),
        _value(table, 18, np.uint64),
        _value(table, 19, np.bool_),
        _fingerprint_first(a, _value(table, 20, np.int64)),
        _value(table, 21, np.int64),
        _value(table, 22, np.float64),
        _value(table, 23, np.int64),
        _value(table, 24, np.float64),
        _elems(table, 38, n, gdtype)[a:b],
        _elems(table, 26, 8, np.float64),
    )
    part[6] = _as_f64(fp)
