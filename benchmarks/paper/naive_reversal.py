"""Experiment G: reversing SGD with momentum in floating point loses w_0 exponentially fast; exact
reversal restores it bit for bit.

Naive reversal runs the rule backwards in floats, ``w_t = w_{t+1} - alpha v_{t+1}``,
``v_t = (v_{t+1} + (1 - gamma) g(w_t)) / gamma``: every division by gamma multiplies the rounding
error already in ``v`` by ``1 / gamma`` (the paper's section 3; HIPS/hypergrad
``experiments/Jan_25_Figure_1/4_naive_reverse``). The same training reversed by
`hypercore.check_reversal` restores ``w_0`` exactly at every T.

Model: a 64-50-10 tanh MLP on scikit-learn's digits (batch 50), alpha = 0.1, gamma = 0.9.

    .venv/bin/python benchmarks/paper/naive_reversal.py          # writes docs/figures/naive_reversal.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from sklearn.datasets import load_digits

import hypercore

ALPHA, GAMMA, BATCH = 0.1, 0.9, 50


def problem(dtype):
    digits = load_digits()
    X = jnp.asarray(digits.data / 16.0 - (digits.data / 16.0).mean(0), dtype)
    y = jnp.asarray(digits.target, jnp.int32)
    k1, k2 = jax.random.split(jax.random.key(0))
    w0 = {
        "layer0.W": (0.1 * jax.random.normal(k1, (64, 50))).astype(dtype),
        "layer0.b": jnp.zeros(50, dtype),
        "layer1.W": (0.1 * jax.random.normal(k2, (50, 10))).astype(dtype),
        "layer1.b": jnp.zeros(10, dtype),
    }

    def loss(w, meta, t):
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(1), t), (BATCH,), 0, X.shape[0])
        h = jnp.tanh(X[idx] @ w["layer0.W"] + w["layer0.b"])
        logp = jax.nn.log_softmax(h @ w["layer1.W"] + w["layer1.b"])
        return -jnp.mean(jnp.take_along_axis(logp, y[idx, None], axis=1))

    return loss, w0


def naive_error(loss, w0, T, dtype) -> float:
    """Relative error of w_0 recovered by running the float rule backwards."""
    grad = jax.grad(loss)
    alpha, gamma = jnp.asarray(ALPHA, dtype), jnp.asarray(GAMMA, dtype)

    @jax.jit
    def run(w0):
        def fwd(carry, t):
            w, v = carry
            g = grad(w, {}, t)
            v = jax.tree.map(lambda vi, gi: gamma * vi - (1 - gamma) * gi, v, g)
            return (jax.tree.map(lambda wi, vi: wi + alpha * vi, w, v), v), None

        def bwd(carry, t):
            w, v = carry
            w = jax.tree.map(lambda wi, vi: wi - alpha * vi, w, v)
            g = grad(w, {}, t)
            v = jax.tree.map(lambda vi, gi: (vi + (1 - gamma) * gi) / gamma, v, g)
            return (w, v), None

        ts = jnp.arange(T, dtype=jnp.int32)
        state, _ = jax.lax.scan(fwd, (w0, jax.tree.map(jnp.zeros_like, w0)), ts)
        (w_back, _), _ = jax.lax.scan(bwd, state, ts, reverse=True)
        num = sum(
            jnp.sum((a.astype(jnp.float64) - b.astype(jnp.float64)) ** 2)
            for a, b in zip(jax.tree.leaves(w_back), jax.tree.leaves(w0), strict=True)
        )
        den = sum(jnp.sum(b.astype(jnp.float64) ** 2) for b in jax.tree.leaves(w0))
        return jnp.sqrt(num / den)

    return float(run(w0))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000])
    parser.add_argument("--out", default="docs/figures/naive_reversal.png")
    args = parser.parse_args()
    rows = []
    for T in args.steps:
        row = {"T": T}
        for name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
            loss, w0 = problem(dtype)
            row[f"naive_{name}"] = naive_error(loss, w0, T, dtype)
        loss, w0 = problem(jnp.float32)
        row["exact"] = (
            0.0
            if hypercore.check_reversal(loss, w0, {}, jnp.full((T,), ALPHA), jnp.full((T,), GAMMA))
            else float("nan")
        )
        rows.append(row)
        print(json.dumps(row), flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    Ts = [r["T"] for r in rows]
    for name in ("float32", "float64"):
        ax.loglog(Ts, [max(r[f"naive_{name}"], 1e-20) for r in rows], "o-", label=f"naive reversal, {name}")
    ax.loglog(Ts, [1e-20] * len(Ts), "k--", label="exact reversal (error exactly 0, drawn at 1e-20)")
    ax.loglog(
        Ts, [2.0**-52 * GAMMA ** (-t) for t in Ts], ":", color="gray", label=r"$\epsilon_{64}\,\gamma^{-T}$"
    )
    ax.set_ylim(1e-21, 1e3)
    ax.set_xlabel("training steps T")
    ax.set_ylabel(r"relative error of recovered $w_0$")
    ax.set_title(rf"Reversing SGD with momentum ($\gamma$={GAMMA}, $\alpha$={ALPHA})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
