"""Fused CPU kernels for reversible SGD with momentum: one pass over a weight array per half-step.

XLA on a CPU splits a step's integer work on one weight array into several kernels (the head's
shift, the division by gamma's numerator, the velocity, the weights, the checks), each a pass over
memory, plus copies where the reverse loop's in-place updates conflict. These kernels do each half
of a step in one loop over the elements instead, reading every array once:

* `sgd_forward`: the exact forward step after the spill, ``v <- v n / D`` through the buffer's
  head, ``v -= (1 - gamma) g``, ``w += alpha v``, and the step's range checks as one flag;
* `sgd_undo_weights`: ``w -= alpha v``;
* `sgd_undo_state`: ``v += (1 - gamma) g``, ``v <- v D / n`` through the head, and the head's
  un-spill from the stack word the forward pass recorded;
* `sgd_adjoint`: the step's adjoint in float64 (``dv``, ``ct``) and its two sums (``dalpha``,
  ``dgamma``).

The integer results are bit for bit those of the XLA formulation in `hypercore._fixed` (the same
rounding, half to even, the same float64 products in the same order), so a forward pass on one
path is undone exactly on the other. The float64 sums of the adjoint are taken in another order, so
hypergradients agree with the XLA path to float64 rounding, not bit for bit.

The kernels are compiled by Numba and called through XLA's FFI (``jax.ffi.ffi_call``) as custom
calls on the CPU; the handlers decode XLA's C call frame (``xla/ffi/api/c_api.h``) themselves. On
other platforms, without Numba, or with ``REVTUNE_FUSED_KERNELS=0``, the engine keeps the XLA
formulation. `available` compiles and registers them on first use and checks them against the XLA
formulation on a small problem; a mismatch or a failure turns them off, with a warning.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import _x64  # noqa: F401

FRAC_BITS = 48
RANGE = 2.0**14
GAMMA_BITS = 16
D = 2**GAMMA_BITS

_lock = threading.Lock()
_state: dict[str, object] = {"checked": None}
_override: list[bool] = []


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Turn the fused kernels on or off while tracing inside the block (for tests and benchmarks)."""
    _override.append(on)
    try:
        yield
    finally:
        _override.pop()


def wanted() -> bool:
    if _override:
        return _override[-1]
    return os.environ.get("REVTUNE_FUSED_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def available() -> bool:
    """Whether the engine may call the fused kernels (on a CPU): wanted, compiled and checked."""
    if not wanted():
        return False
    with _lock:
        if _state["checked"] is None:
            _state["checked"] = _register_and_check()
    return bool(_state["checked"])


def _register_and_check() -> bool:
    try:
        importlib.import_module("hypercore._fused_kernels").register()  # Numba: loaded on first use
    except Exception as e:  # noqa: BLE001  (no Numba, or it cannot compile here: keep XLA's path)
        if not isinstance(e, ImportError):
            warnings.warn(f"revtune: fused CPU kernels unavailable ({e!r}); using XLA's", stacklevel=3)
        return False
    try:
        with jax.ensure_compile_time_eval():  # the first call may come while a step is being traced
            _self_check()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"revtune: fused CPU kernels failed their check ({e!r}); using XLA's", stacklevel=3)
        return False
    return True


# ----------------------------------------------------------------------------------------------------
# The calls. Scalars travel as rank-0 buffers.

_S64, _U64, _F64 = jnp.int64, jnp.uint64, jnp.float64


def _call(name: str, outs, *args, aliases: dict[int, int]):
    """The custom call ``name``; ``aliases`` (argument -> result) are updated in place, as the loops
    read each element before they write it."""
    return jax.ffi.ffi_call(name, outs, input_output_aliases=aliases)(*args)


def _like(x, dtype=None):
    return jax.ShapeDtypeStruct(x.shape, dtype or x.dtype)


def _scalar(x, dtype):
    return jnp.asarray(x).astype(dtype).reshape(())


def sgd_forward(w, v, head, stack, g, n, one_minus, alpha, k, do):
    """``(w, v, head, stack, ok)`` after one forward step on one weight array (`SGDM.forward_step`):
    the spill of the head into slot ``k`` of ``stack`` if ``do``, then the step. ``ok``: every
    conversion and range check passed."""
    word, shift = _slot(k)
    return _call(
        f"revtune_sgd_forward_{g.dtype.name}",
        (_like(w), _like(v), _like(head), _like(stack), jax.ShapeDtypeStruct((), jnp.bool_)),
        w,
        v,
        head,
        stack,
        g,
        _scalar(n, _S64),
        _scalar(one_minus, _F64),
        _scalar(alpha, _F64),
        word,
        shift,
        _scalar(do, jnp.bool_),
        aliases={0: 0, 1: 1, 2: 2, 3: 3},
    )


def sgd_undo_weights(w, v, alpha):
    """``w - alpha v`` in fixed point (`SGDM.undo_weights`)."""
    return _call("revtune_sgd_undo_weights", _like(w), w, v, _scalar(alpha, _F64), aliases={0: 0})


def sgd_undo_state(v, head, g, n, one_minus, stack, k, do):
    """``(v, head)`` one step back (`SGDM.undo_state`): the velocity update, the division by gamma,
    and the head's un-spill of slot ``k`` of the read-only ``stack`` if ``do``."""
    word, shift = _slot(k)
    return _call(
        f"revtune_sgd_undo_state_{g.dtype.name}",
        (_like(v), _like(head)),
        v,
        head,
        g,
        stack,
        _scalar(n, _S64),
        _scalar(one_minus, _F64),
        word,
        shift,
        _scalar(do, jnp.bool_),
        aliases={0: 0, 1: 1},
    )


def sgd_undo_adjoint(v, head, dv, g, stack, dw, n, one_minus, alpha, k, do):
    """`sgd_undo_state` and the step's adjoint in one pass (`SGDM.undo_and_adjoint`): ``(v, head, dv,
    ct, dalpha, dgamma)``, ``ct`` in ``g``'s dtype, ``dalpha`` and ``dgamma`` summed over the array."""
    word, shift = _slot(k)
    scalar = jax.ShapeDtypeStruct((), _F64)
    return _call(
        f"revtune_sgd_undo_adjoint_{g.dtype.name}",
        (_like(v), _like(head), _like(dv), _like(g), scalar, scalar),
        v,
        head,
        dv,
        g,
        stack,
        dw,
        _scalar(n, _S64),
        _scalar(one_minus, _F64),
        _scalar(alpha, _F64),
        word,
        shift,
        _scalar(do, jnp.bool_),
        aliases={0: 0, 1: 1, 2: 2},
    )


def fingerprint(g, leaf: int):
    """`hypercore.reversible._fingerprint`'s term for leaf number ``leaf``, in one pass."""
    return _call(
        f"revtune_fingerprint_{g.dtype.name}",
        jax.ShapeDtypeStruct((), _U64),
        g,
        jnp.int64(leaf),
        aliases={},
    )


def _slot(k):
    from hypercore._fixed import slot_position

    word, shift = slot_position(k)
    return _scalar(word, _S64), _scalar(shift, _U64)


FUSED_DTYPES = ("float32", "float64")
"""The gradient dtypes the kernels are compiled for; other models keep XLA's path."""


def on_cpu(args, fused: Callable, xla: Callable):
    """``fused(*args)`` where the computation runs on a CPU and the kernels are available, else
    ``xla(*args)`` (decided when lowering, per platform)."""
    if not available():
        return xla(*args)
    return jax.lax.platform_dependent(*args, cpu=fused, default=xla)


def _self_check() -> None:
    """Run every kernel once on a small problem, through a spill and back, in one compiled program:
    the undo must restore the state bit for bit, and the fingerprint must see a one-bit change. (That
    they compute what the XLA formulation computes, bit for bit, is tests/hypercore/test_fused.py's;
    here the XLA side would cost seconds of compilation at every start.)"""
    rng = np.random.default_rng(0)
    shape = (37, 5)
    problems = [
        (
            jnp.asarray(rng.integers(-(2**50), 2**50, shape), _S64),
            jnp.asarray(rng.integers(-(2**50), 2**50, shape), _S64),
            jnp.asarray(rng.integers(0, 2**47, shape), _U64),
            jnp.asarray(rng.integers(0, 2**32, (2, *shape)), _U64),
            jnp.asarray(rng.normal(size=shape) * 3, dt),
            jnp.asarray(rng.normal(size=shape), _F64),
        )
        for dt in FUSED_DTYPES
    ]

    def check(problems):
        n = jnp.int64(58982)
        om = (jnp.int64(D) - n).astype(_F64) / D
        a, k, do = jnp.float64(0.3), jnp.int32(1), jnp.bool_(True)
        failures = []
        for w, v, head, stack, g, dv in problems:
            w1, v1, h1, s1, ok = sgd_forward(w, v, head, stack, g, n, om, a, k, do)
            moved = jnp.any(w1 != w) & jnp.any(v1 != v) & jnp.any(h1 != head) & jnp.any(s1 != stack)
            w_b = sgd_undo_weights(w1, v1, a)
            v_b, h_b = sgd_undo_state(v1, h1, g, n, om, s1, k, do)
            v_c, h_c, *_ = sgd_undo_adjoint(v1, h1, dv, g, s1, dv, n, om, a, k, do)
            same = [w_b == w, v_b == v, h_b == head, v_c == v, h_c == head]
            failures.append(~(ok & moved & jnp.all(jnp.stack([jnp.all(x) for x in same]))))
            flipped = g.at[3, 2].set(jnp.nextafter(g[3, 2], jnp.inf))
            failures.append(fingerprint(g, 0) == fingerprint(flipped, 0))
        return jnp.stack(failures)

    failed = np.asarray(jax.jit(check)(problems))
    if failed.any():
        what = ("step and undo", "fingerprint")
        bad = sorted({f"{what[i % 2]} ({FUSED_DTYPES[i // 2]})" for i in np.flatnonzero(failed)})
        raise AssertionError("failed: " + ", ".join(bad))
