"""Property tests of the exact arithmetic: multiplying by a rational and dividing back is the identity,
for any int64 velocities (negative included), any numerators, and through spills onto the stack."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import hypercore  # noqa: F401  (turns on x64)
from hypercore import _fixed

N, STEPS, CAPACITY = 16, 48, 8
V_LIMIT = 2**62 - 1


@functools.cache
def _roundtrip():
    @jax.jit
    def run(v0, numerators):
        # two leaves, as the engine keeps one buffer array per weight array
        buf = _fixed.empty_buffer([(N // 2,), (N // 2,)], CAPACITY)

        def split(x):
            return [x[: N // 2], x[N // 2 :]]

        def fwd(carry, n):
            v, buf = carry
            v, buf, spilled = _fixed.mul_gamma(v, split(n), buf)
            return (v, buf), spilled

        (v, buf), spills = jax.lax.scan(fwd, (split(v0), buf), numerators)
        used = buf.used

        def bwd(carry, xs):
            v, buf = carry
            n, spilled = xs
            return _fixed.div_gamma(v, split(n), buf, spilled), None

        (v_back, buf_back), _ = jax.lax.scan(bwd, (v, buf), (numerators, spills), reverse=True)
        return jnp.concatenate(v), jnp.concatenate(v_back), buf_back, used, spills, buf.overflow

    return run


velocities = st.lists(st.integers(-V_LIMIT, V_LIMIT), min_size=N, max_size=N)
numerator_rows = st.lists(
    st.lists(st.integers(1, _fixed.D), min_size=N, max_size=N), min_size=STEPS, max_size=STEPS
)


@settings(max_examples=60, deadline=None)
@given(v0=velocities, numerators=numerator_rows)
def test_multiply_then_divide_restores_everything(v0, numerators):
    v0 = jnp.asarray(v0, jnp.int64)
    n = jnp.asarray(numerators, jnp.int64)
    v, v_back, buf, used, spills, overflow = _roundtrip()(v0, n)
    if bool(overflow):
        # the stack was too small for these rationals: reported, and then nothing is promised
        assert int(used) == CAPACITY
        return
    assert np.array_equal(np.asarray(v_back), np.asarray(v0))
    assert not any(np.any(np.asarray(h)) for h in buf.heads)
    assert not any(np.any(np.asarray(x)) for x in buf.stacks)
    assert int(buf.used) == 0
    assert int(used) == int(np.sum(np.asarray(spills)))


@settings(max_examples=30, deadline=None)
@given(v0=velocities, gamma=st.floats(0.3, 0.999))
def test_multiplication_is_the_rational_product_up_to_the_popped_bits(v0, gamma):
    """One step: ``v * n / D`` rounded down, plus at most ``n - 1`` units taken from the buffer."""
    v0 = np.asarray(v0, np.int64)
    n = int(_fixed.gamma_numerator(gamma))
    (v,), _, _ = _fixed.mul_gamma([jnp.asarray(v0)], [jnp.int64(n)], _fixed.empty_buffer([(N,)], 2))
    exact = [(int(x) // _fixed.D) * n for x in v0]  # Python ints: floor semantics, no overflow
    extra = np.asarray(v, dtype=object) - np.asarray(exact, dtype=object)
    assert all(0 <= e < n for e in extra)


def test_small_gammas_spill_and_restore():
    """gamma = 1/2**16 adds 16 bits a step: the stack fills after a few steps and is emptied exactly."""
    v0 = jnp.asarray(np.random.default_rng(0).integers(-(2**62), 2**62, N), jnp.int64)
    numerators = jnp.ones((STEPS, N), jnp.int64)
    _, v_back, buf, used, spills, overflow = _roundtrip()(v0, numerators)
    assert bool(overflow)  # 48 steps x 16 bits cannot fit 8 slots: reported, never silent
    numerators = jnp.full((STEPS, N), 6000, jnp.int64)  # ~3.4 bits a step: ~163 bits, 4 spills
    _, v_back, buf, used, spills, overflow = _roundtrip()(v0, numerators)
    assert not bool(overflow) and int(used) >= 3
    assert np.array_equal(np.asarray(v_back), np.asarray(v0))


@functools.cache
def _roundtrip_by_bound():
    """As `_roundtrip`, with one numerator per leaf and step (a shared or per-array gamma): the spill
    is decided on ``buf.bound``. Also returns every step's heads and bound before the push."""

    @jax.jit
    def run(v0, numerators):
        buf = _fixed.empty_buffer([(N // 2,), (N // 2,)], CAPACITY)

        def fwd(carry, n):
            v, buf = carry
            v, buf, spilled = _fixed.mul_gamma(v, [n[0], n[1]], buf)
            return (v, buf), (spilled, jnp.concatenate(buf.heads), buf.bound)

        v_start = [v0[: N // 2], v0[N // 2 :]]
        (v, buf), (spills, heads, bounds) = jax.lax.scan(fwd, (v_start, buf), numerators)

        def bwd(carry, xs):
            v, buf = carry
            n, spilled = xs
            return _fixed.div_gamma(v, [n[0], n[1]], buf, spilled), None

        (v_back, buf_back), _ = jax.lax.scan(bwd, (v, buf), (numerators, spills), reverse=True)
        return jnp.concatenate(v_back), buf_back, buf.used, spills, buf.overflow, heads, bounds

    return run


numerator_pairs = st.lists(
    st.lists(st.integers(1, _fixed.D), min_size=2, max_size=2), min_size=STEPS, max_size=STEPS
)


# Found by hypothesis: the heads reach 2**48 after the last push but one, with the bound just below
# it, so the last step (gamma 2**-16) pushes 16 bits onto them without a spill: correct, and exact.
_FULL_LAST_PUSH = dict(
    v0=[0] * 7 + [106724] + [0] * 8,
    numerators=[[1, 1], [33, 2053], [54, 59], [75, 45544], [79, 334], [111, 15005], [127, 2466], [171, 1336]]
    + [[224, 5879], [239, 3467], [257, 3253], [305, 1853], [357, 57735], [375, 9983], [388, 65518]]
    + [[418, 702], [464, 755], [573, 618], [603, 631], [633, 2212], [707, 52095], [728, 746]]
    + [[n, n] for n in (729, 739, 767, 855, 946, 949, 1082, 1093, 1148, 1316, 1489, 1635, 1817, 1979)]
    + [[n, n] for n in (2062, 2053, 2614, 2974, 4434, 5159, 5790, 9501, 17482, 37083, 45056, 1)],
)


@settings(max_examples=60, deadline=None)
@given(v0=velocities, numerators=numerator_pairs)
@example(**_FULL_LAST_PUSH)
def test_the_head_bound_bounds_every_head_and_spills_in_time(v0, numerators):
    """With one numerator per leaf the spill test reads ``buf.bound``, not the heads: the bound is at
    or above every head after each step, so no head reaches 2**48 before a push (a push adds at most
    16 bits: no head wraps), and the round trip is exact whenever the stack held."""
    v0 = jnp.asarray(v0, jnp.int64)
    v_back, buf, used, spills, overflow, heads, bounds = _roundtrip_by_bound()(v0, jnp.asarray(numerators))
    heads = np.asarray(heads).astype(object)  # Python ints: no float rounding in the comparison
    bounds = np.asarray(bounds)
    assert all(int(h) <= b for row, b in zip(heads, bounds, strict=True) for h in row)
    if bool(overflow):
        assert int(used) == CAPACITY
        return
    # each step's heads before its push: the last step's, after this step's spill (a push then adds up
    # to 16 bits, so a head may pass 2**48 after one, as with gamma 2**-16, and is spilled next step)
    spilled = np.asarray(spills)
    before_push = [h >> (32 * int(s)) for row, s in zip(heads[:-1], spilled[1:], strict=True) for h in row]
    assert all(int(h) < 2**_fixed.HEAD_BITS for h in before_push)
    assert np.array_equal(np.asarray(v_back), np.asarray(v0))
    assert not any(np.any(np.asarray(h)) for h in buf.heads) and int(buf.used) == 0
    assert int(used) == int(np.sum(np.asarray(spills)))


def test_the_bound_decides_spills_no_later_than_the_heads_and_within_capacity_for():
    """Over a long run at one gamma the bound spills at least as often as the heads would, and never
    more often than `capacity_for`, which sizes the stack, allows."""
    steps, n = 400, _fixed.gamma_numerator(0.8)
    numerators = jnp.full((steps, 2), n, jnp.int64)
    v0 = jnp.asarray(np.random.default_rng(1).integers(-(2**62), 2**62, N), jnp.int64)

    def count(by_bound):
        def fwd(carry, n_row):
            v, buf = carry
            ns = [n_row[0], n_row[1]] if by_bound else [jnp.broadcast_to(n_row[0], (N // 2,))] * 2
            v, buf, spilled = _fixed.mul_gamma(v, ns, buf)
            return (v, buf), spilled

        buf = _fixed.empty_buffer([(N // 2,), (N // 2,)], 64)
        (_, buf), _ = jax.lax.scan(fwd, ([v0[: N // 2], v0[N // 2 :]], buf), numerators)
        return int(buf.used), bool(buf.overflow)

    (by_bound, o1), (by_heads, o2) = count(True), count(False)
    assert not o1 and not o2
    assert by_heads <= by_bound <= _fixed.capacity_for(steps, 0.8, bucket=False)
    assert by_bound >= 1


@pytest.mark.parametrize("x", [0.0, 1.5, -1.5, -(2.0**-48), 1234.5678, -16383.0])
def test_fixed_point_round_trip(x):
    i, ok = _fixed.to_fixed(jnp.asarray(x))
    assert bool(ok) and i.dtype == jnp.int64
    assert float(_fixed.from_fixed(i)) == x


@pytest.mark.parametrize("x", [np.inf, -np.inf, np.nan, 2.0**14, -(2.0**15)])
def test_fixed_point_flags_values_out_of_range(x):
    _, ok = _fixed.to_fixed(jnp.asarray(x))
    assert not bool(ok)


def test_gamma_quantisation_is_within_half_a_lattice_step():
    g = jnp.linspace(0.3, 0.999, 101)
    q = _fixed.quantize_gamma(g)
    assert float(jnp.max(jnp.abs(q - g))) <= 2.0**-17
    assert np.array_equal(np.asarray(q * _fixed.D), np.round(np.asarray(q * _fixed.D)))
    assert float(jax.grad(lambda x: jnp.sum(_fixed.quantize_gamma(x)))(g)[0]) == 1.0


def test_capacity_buckets_and_arguments():
    assert [_fixed.capacity_for(T, 0.9) for T in (0, 100, 1000, 10000)] == sorted(
        _fixed.capacity_for(T, 0.9) for T in (0, 100, 1000, 10000)
    )
    assert _fixed.capacity_for(1000, 0.9, bucket=False) <= _fixed.capacity_for(1000, 0.9)
    with pytest.raises(ValueError, match="min_gamma"):
        _fixed.capacity_for(10, 0.0)
