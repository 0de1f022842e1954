"""Engine benchmark: memory and time of exact reversal against storing or checkpointing the trajectory.

On the paper's MNIST net (784-50-50-50-10 tanh, 44,860 parameters, batch 200) with shared learning
rate and momentum schedules (T,) that are traced and differentiated:

* memory: XLA's ``memory_analysis()`` of the compiled ``jax.grad`` of a meta-objective through
  ``reversible_sgd`` (temp + arguments + outputs), against the same through a plain ``lax.scan``
  (stored trajectory) and through a ``jax.checkpoint``-ed step; the information buffer's bytes
  against the information-theoretic ``N * sum_t log2(1/gamma_t) / 8``.
* time: forward + backward divided by plain float32 training of the same T (medians of --repeats
  runs, measured side by side in this process).

Inputs are Gaussian noise of MNIST's shape: memory and time do not depend on pixel values.

    .venv/bin/python benchmarks/engine.py     # T in 100, 1000, 10000; writes benchmarks/out/engine.json
    .venv/bin/python benchmarks/engine.py --steps 100 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import hypercore
from hypercore import _fixed

LAYERS = [784, 50, 50, 50, 10]
BATCH = 200
N_EXAMPLES = 1000


def minibatch_indices(seed, batch, table_steps=None):
    """``t ->`` step ``t``'s minibatch indices, drawn with ``jax.random`` inside the loss; with
    ``table_steps``, the same indices read from a table drawn before training, as `hypercore.tune`
    does (`benchmarks/minibatch_rng.py` compares the two)."""

    def draw(t):
        return jax.random.randint(jax.random.fold_in(jax.random.key(seed), t), (batch,), 0, N_EXAMPLES)

    if table_steps is None:
        return draw
    table = jax.vmap(draw)(jnp.arange(table_steps, dtype=jnp.int32))
    return lambda t: table[t]


def make_problem(seed=0, layers=LAYERS, batch=BATCH, table_steps=None):
    """``(loss, valid, w0)``; ``table_steps``: see `minibatch_indices`."""
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.normal(size=(N_EXAMPLES, layers[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, layers[-1], N_EXAMPLES), jnp.int32)
    w0 = {}
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        w0[f"layer{i}.W"] = jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32)
        w0[f"layer{i}.b"] = jnp.zeros((b,), jnp.float32)
    n_layers = len(layers) - 1

    def predict(w, Xb):
        h = Xb
        for i in range(n_layers):
            h = h @ w[f"layer{i}.W"] + w[f"layer{i}.b"]
            if i < n_layers - 1:
                h = jnp.tanh(h)
        return jax.nn.log_softmax(h)

    indices = minibatch_indices(seed, batch, table_steps)

    def loss(w, meta, t):
        idx = indices(t)
        logp = predict(w, X[idx])
        return -jnp.mean(jnp.take_along_axis(logp, y[idx, None], axis=1))

    def valid(w):
        logp = predict(w, X[:BATCH])
        return -jnp.mean(jnp.take_along_axis(logp, y[:BATCH, None], axis=1))

    return loss, valid, w0


def meta_grad_fns(loss, valid, w0, T, gamma):
    capacity = _fixed.capacity_for(T, gamma, bucket=False)

    def objective(engine):
        def f(alphas, gammas):
            if engine == "reversible":
                w_T = hypercore.reversible_sgd(loss, w0, {}, alphas, gammas, capacity=capacity)
            else:
                w_T = hypercore.unrolled_sgd(loss, w0, {}, alphas, gammas, checkpoint=engine == "checkpoint")
            return valid(w_T)

        return jax.jit(jax.grad(f, argnums=(0, 1)))

    return {name: objective(name) for name in ("reversible", "stored", "checkpoint")}, capacity


def plain_training(loss, w0, T):
    grad = jax.grad(loss)

    @jax.jit
    def train(alphas, gammas):
        def step(carry, xs):
            w, v = carry
            t, a, c = xs
            g = grad(w, {}, t)
            v = jax.tree.map(lambda vi, gi: c * vi - (1 - c) * gi, v, g)
            w = jax.tree.map(lambda wi, vi: wi + a * vi, w, v)
            return (w, v), None

        v0 = jax.tree.map(jnp.zeros_like, w0)
        xs = (jnp.arange(T, dtype=jnp.int32), alphas.astype(jnp.float32), gammas.astype(jnp.float32))
        (w, _), _ = jax.lax.scan(step, (w0, v0), xs)
        return w

    return train


def memory_bytes(fn, *args) -> int:
    m = fn.lower(*args).compile().memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def timed(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict, args, rounds: int, repeats: int, against: str = "reversible") -> dict:
    """The functions ``fns`` (name -> compiled or jitted) timed in turn, ``rounds`` times, each the
    fastest of ``repeats`` runs (the first run after another function's pays for its memory and
    caches, which matters most to plain training's short runs): each round's seconds
    (``rounds_time_<name>``), and each round's ratio of ``against``'s time to every other's
    (``rounds_ratio_<name>``). Timed one after another instead, engines' ratios moved by 20 % between
    runs on this project's machines: the rounds let a drift reach every function alike."""
    seconds = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                best = min(best, time.perf_counter() - t0)
            seconds[name].append(best)
    out = {f"rounds_time_{n}": ts for n, ts in seconds.items()}
    for name in fns:
        if name != against:
            out[f"rounds_ratio_{name}"] = [
                a / x for a, x in zip(seconds[against], seconds[name], strict=True)
            ]
    return out


def ratios_text(ratios: list[float] | None) -> str:
    """Per-round ratios as ``median x (lowest to highest)``."""
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f} to {max(ratios):.2f})"


def run(T: int, gamma: float, repeats: int, time_it: bool) -> dict:
    loss, valid, w0 = make_problem()
    n_params = sum(x.size for x in jax.tree.leaves(w0))
    alphas = jnp.full((T,), 0.3)
    gammas = jnp.full((T,), gamma)
    fns, capacity = meta_grad_fns(loss, valid, w0, T, gamma)
    row = {"T": T, "gamma": gamma, "n_params": int(n_params), "capacity_slots": capacity}
    for name, fn in fns.items():
        row[f"mem_{name}"] = memory_bytes(fn, alphas, gammas)
    state = hypercore.forward_state(loss, w0, {}, alphas, gammas, capacity=capacity)
    n = int(_fixed.gamma_numerator(gamma))
    info_bits = n_params * T * math.log2(_fixed.D / n)
    row["buffer_bytes_allocated"] = int(state.buf.nbytes)
    used_words = (int(state.buf.used) + 1) // 2
    row["buffer_bytes_used"] = int(n_params * 8 * (1 + used_words))
    row["slots_used"] = int(state.buf.used)
    row["buffer_info_bytes"] = info_bits / 8
    row["reversal_exact"] = hypercore.check_reversal(loss, w0, {}, alphas, gammas, capacity=capacity)
    if time_it:
        train = plain_training(loss, w0, T)
        t_plain = timed(train, (alphas, gammas), repeats)
        t_rev = timed(fns["reversible"], (alphas, gammas), repeats)
        row["time_plain_s"] = t_plain
        row["time_reversible_s"] = t_rev
        row["time_ratio"] = t_rev / t_plain
    return row


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-time", action="store_true", help="memory only")
    parser.add_argument("--out", default="benchmarks/out/engine.json")
    args = parser.parse_args()
    rows = []
    for T in args.steps:
        row = run(T, args.gamma, args.repeats, not args.no_time)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}"
    )
    print(
        "| T | stored / reversible memory | checkpoint / reversible memory | reversible MiB | stored MiB "
        "| buffer used / info-theoretic | buffer allocated / info-theoretic | (fwd+bwd) / plain training |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mib = 2**20
        ratio = f"{r['time_ratio']:.2f}x" if "time_ratio" in r else "-"
        print(
            f"| {r['T']} | {r['mem_stored'] / r['mem_reversible']:.0f}x | "
            f"{r['mem_checkpoint'] / r['mem_reversible']:.1f}x | {r['mem_reversible'] / mib:.1f} | "
            f"{r['mem_stored'] / mib:.0f} | {r['buffer_bytes_used'] / r['buffer_info_bytes']:.2f}x | "
            f"{r['buffer_bytes_allocated'] / r['buffer_info_bytes']:.2f}x | {ratio} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
