"""What the exact division by gamma's numerator costs the reversible engine, and whether a division
without an integer divide instruction is faster (issue 21, "profile first"), side by side in one
process.

The information buffer multiplies every velocity by ``gamma = n / 2**16`` forward (`mul_gamma`) and
divides backward (`div_gamma`), each with a 64-bit integer division by ``n`` per weight and step.
``before`` is the engine as it is: `hypercore._fixed.divmod_unsigned`, XLA's integer ``//``.
``after`` swaps in `float_divmod_unsigned` below: long division in base 2**32 on float64 estimates,
corrected by one compare (vector arithmetic only, no divide instruction). Both are checked to give the
same hypergradient bit for bit. On the paper's MNIST net (`benchmarks/engine.py`'s problem:
784-50-50-50-10, batch 200):

* ``plain``: float32 training of the same T steps (forward only, no hypergradient);
* ``rev before`` and ``rev after``: forward + backward through `reversible_sgd`;
* ``div before`` and ``div after``: `mul_gamma` then `div_gamma` alone on the net's 44,860 weights,
  T times (the division's share of a forward and backward pass).

Medians of ``--repeats`` runs, alternating the variants so that machine noise hits them alike.

    .venv/bin/python benchmarks/division.py               # T = 100 and 1000
    .venv/bin/python benchmarks/division.py --steps 100 --repeats 9

Prints a table and writes ``docs/figures/division.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import make_problem, meta_grad_fns, plain_training  # noqa: E402

from hypercore import _fixed  # noqa: E402

_U64 = jnp.uint64


_I64 = jnp.int64
_LOW32 = 0xFFFFFFFF


def _divmod_below_2_48(a, n, inv):
    """``(a // n, a % n)`` for int64 ``0 <= a < 2**48``, ``1 <= n <= 2**16``, ``inv = 1 / n``: the
    float64 estimate ``floor(a * inv)`` is within one of the truth (``a`` is exact in float64, the
    product's absolute error is below 1/16), fixed by comparing the remainder with 0 and ``n``."""
    q = jnp.floor(a.astype(jnp.float64) * inv).astype(_I64)
    r = a - q * n
    low, high = r < 0, r >= n
    q = q - low.astype(_I64) + high.astype(_I64)
    r = r + jnp.where(low, n, 0) - jnp.where(high, n, 0)
    return q, r


def float_divmod_unsigned(x, n):
    """``(x // n, x % n)`` for uint64 ``x``, ``1 <= n <= 2**16``, exactly, with no integer division:
    long division in base ``2**32`` (each partial dividend below ``2**48``) on float estimates."""
    n = n.astype(_I64)
    inv = 1.0 / n.astype(jnp.float64)
    high = jax.lax.bitcast_convert_type(x >> jnp.asarray(32, _U64), _I64)
    q_high, r_high = _divmod_below_2_48(high, n, inv)
    low = jax.lax.bitcast_convert_type(x & jnp.asarray(_LOW32, _U64), _I64)
    q_low, r = _divmod_below_2_48((r_high << jnp.asarray(32, _I64)) | low, n, inv)
    return (q_high.astype(_U64) << jnp.asarray(32, _U64)) + q_low.astype(_U64), r.astype(_U64)


@contextlib.contextmanager
def division(kind: str):
    """Run `hypercore._fixed` with the engine's (``before``) or the float (``after``) division."""
    current = _fixed.divmod_unsigned
    if kind == "after":
        _fixed.divmod_unsigned = float_divmod_unsigned
    try:
        yield
    finally:
        _fixed.divmod_unsigned = current


def gamma_only(shapes, T: int, n: int, capacity: int):
    """``mul_gamma`` then ``div_gamma`` on velocities of ``shapes``, T times each (the buffer as the
    engine keeps it): the division's share of a forward and backward pass."""
    ns = [jnp.asarray(n, jnp.int64)] * len(shapes)

    @jax.jit
    def run(vs):
        buf = _fixed.empty_buffer(shapes, capacity)

        def forward(carry, _):
            vs, buf = carry
            vs, buf, spilled = _fixed.mul_gamma(vs, ns, buf)
            return (vs, buf), spilled

        def backward(carry, spilled):
            vs, buf = carry
            vs, buf = _fixed.div_gamma(vs, ns, buf, spilled)
            return (vs, buf), None

        (vs_T, buf), spills = jax.lax.scan(forward, (vs, buf), None, length=T)
        (vs_0, _), _ = jax.lax.scan(backward, (vs_T, buf), spills, reverse=True)
        return vs_0

    return run


def median_times(fns: dict, args: dict, repeats: int) -> dict:
    for name, fn in fns.items():
        with division(name.split()[-1] if name.split()[-1] in ("before", "after") else "after"):
            jax.block_until_ready(fn(*args[name]))  # compile and warm up under its division
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(T: int, gamma: float, repeats: int) -> dict:
    loss, valid, w0 = make_problem()
    alphas, gammas = jnp.full((T,), 0.3), jnp.full((T,), gamma)
    fns, args = {"plain": plain_training(loss, w0, T)}, {"plain": (alphas, gammas)}
    grads = {}
    for kind in ("before", "after"):
        with division(kind):
            # a fresh jit per variant: each traces the division it runs with
            fn = meta_grad_fns(loss, valid, w0, T, gamma)[0]["reversible"]
            grads[kind] = jax.block_until_ready(fn(alphas, gammas))
        fns[f"rev {kind}"], args[f"rev {kind}"] = fn, (alphas, gammas)
    for a, b in zip(jax.tree.leaves(grads["before"]), jax.tree.leaves(grads["after"]), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "the two divisions must agree bit for bit"

    shapes = [tuple(x.shape) for x in jax.tree.leaves(w0)]
    n = int(_fixed.gamma_numerator(gamma))
    capacity = _fixed.capacity_for(T, gamma, bucket=False)
    rng = np.random.default_rng(0)
    vs = [jnp.asarray(rng.integers(-(2**50), 2**50, s), jnp.int64) for s in shapes]
    for kind in ("before", "after"):
        with division(kind):
            fn = gamma_only(shapes, T, n, capacity)
            back = jax.block_until_ready(fn(vs))
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(back, vs, strict=True))
        fns[f"div {kind}"], args[f"div {kind}"] = fn, (vs,)
    times = median_times(fns, args, repeats)
    row = {"T": T, "gamma": gamma, "n_params": int(sum(int(np.prod(s)) for s in shapes))}
    row.update({f"time_{name.replace(' ', '_')}_s": t for name, t in times.items()})
    row["ratio_before"] = times["rev before"] / times["plain"]
    row["ratio_after"] = times["rev after"] / times["plain"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/division.json"))
    args = parser.parse_args()
    rows = [run(T, args.gamma, args.repeats) for T in args.steps]
    meta = {"machine": platform.processor() or platform.machine(), "device": str(jax.devices()[0])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(
        "| T | plain | reversible before | after | (x plain before -> after) | division part before | after |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['T']} | {r['time_plain_s']:.3f} s | {r['time_rev_before_s']:.3f} s | "
            f"{r['time_rev_after_s']:.3f} s | {r['ratio_before']:.2f}x -> {r['ratio_after']:.2f}x | "
            f"{r['time_div_before_s']:.3f} s | {r['time_div_after_s']:.3f} s |"
        )


if __name__ == "__main__":
    main()
