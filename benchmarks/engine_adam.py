"""Engine benchmark for exact reversible Adam(W): memory and time against storing or checkpointing.

The companion of ``benchmarks/engine.py`` (same net, data and measurements), with AdamW in the
training-optimizer slot. On the paper's MNIST net (784-50-50-50-10 tanh, 44,860 parameters, batch
200) with shared schedules ``lr, b1, b2, wd`` of shape (T,) that are traced and differentiated:

* memory: XLA's ``memory_analysis()`` of the compiled ``jax.grad`` of ``valid(w_T)`` w.r.t. the four
  schedules through ``hypercore.reversible_adam`` (temp + arguments + outputs), against the same
  through a plain ``lax.scan`` of float32 ``optax.adamw`` (stored trajectory) and through the same
  scan with each step under ``jax.checkpoint``, and through equinox's checkpointed
  ``while_loop`` (online treeverse, its default number of checkpoints; with the ``bench`` extra);
  the information buffer's bytes against the
  information-theoretic ``N * sum_t (log2(1/b1_t) + log2(1/b2_t) + log2(1/f_t)) / 8``, with
  ``f_t = 1 - lr_t wd_t`` and the quantised values the engine uses.
* time: forward + backward through ``reversible_adam`` divided by plain float32 ``optax.adamw``
  training of the same T (jitted, medians of --repeats runs, measured side by side in this process),
  and against the same meta-gradient through per-step ``jax.checkpoint`` where its memory estimate is
  below --mem-limit-gb. Those run one after another; ``--rounds R`` then times the three in turn, R
  times (`engine.interleaved`), and prints each round's ratios: the figures to read the targets from.

--cell picks the model: the paper's net (the default) or one of ``engine_grid.py``'s MLP cells at its
batch of 50 (``1e4`` 784-12-10, ``1e5`` 784-128-10, ``1e6`` 784-1000-200-10).

optax's ``adamw`` runs under ``optax.inject_hyperparams`` with the four schedules indexed by its
step count, so its hyperparameters are traced too (with constant schedules its bias correction
``1 - b**count`` equals the engine's ``1 - prod b``). Inputs are Gaussian noise of MNIST's shape.

    .venv/bin/python benchmarks/engine_adam.py            # T in 100, 1000; benchmarks/out/engine_adam.json
    .venv/bin/python benchmarks/engine_adam.py --long     # T = 10000 too
    .venv/bin/python benchmarks/engine_adam.py --steps 100 --repeats 5
    # engine_grid.py's MLP cells at batch 50 (timing per-step jax.checkpoint too, where it fits):
    .venv/bin/python benchmarks/engine_adam.py --cell 1e5 --out docs/figures/engine_adam_1e5.json
    .venv/bin/python benchmarks/engine_adam.py --cell 1e5 --steps 100 --rounds 5   # ratios in rounds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from engine import (
    BATCH,
    LAYERS,
    interleaved,
    make_problem,
    memory_bytes,
    ratios_text,
    timed,
)  # the paper-net benchmark's net, data, helpers

import hypercore
from hypercore import adam as _adam

# The models: the paper's net (the default) and `engine_grid.py`'s MLP cells at its batch of 50.
CELLS = {
    "paper": (LAYERS, BATCH),
    "1e4": ([784, 12, 10], 50),
    "1e5": ([784, 128, 10], 50),
    "1e6": ([784, 1000, 200, 10], 50),
}

# The targets at T = 1000.
TARGET_MEMORY_RATIO = 300.0  # stored trajectory / reversible, at least
TARGET_BUFFER_RATIO = 1.5  # buffer used / information bound, at most
TARGET_TIME_RATIO = 5.0  # (fwd + bwd) / plain Adam training, at most


def adamw_scan(loss, w0, T, *, checkpoint=False):
    """T steps of float32 ``optax.adamw`` in a ``lax.scan``, the schedules ``(T,)`` indexed by step."""
    grad = jax.grad(loss)
    f32 = jnp.float32

    def train(lrs, b1s, b2s, wds):
        lrs, b1s, b2s, wds = (x.astype(f32) for x in (lrs, b1s, b2s, wds))
        opt = optax.inject_hyperparams(optax.adamw, hyperparam_dtype=f32)(
            learning_rate=lambda c: lrs[c],
            b1=lambda c: b1s[c],
            b2=lambda c: b2s[c],
            weight_decay=lambda c: wds[c],
            eps=1e-8,
        )

        def step(carry, t):
            w, state = carry
            updates, state = opt.update(grad(w, {}, t), state, w)
            return (optax.apply_updates(w, updates), state), None

        if checkpoint == "equinox":  # equinox's online checkpointed loop (treeverse), its default count
            import equinox.internal as eqxi

            def body(carry):
                t, w, state = carry
                (w, state), _ = step((w, state), t)
                return t + 1, w, state

            _, w, _ = eqxi.while_loop(
                lambda c: c[0] < T,
                body,
                (jnp.int32(0), w0, opt.init(w0)),
                max_steps=T,
                kind="checkpointed",
            )
            return w
        step = jax.checkpoint(step) if checkpoint else step
        (w, _), _ = jax.lax.scan(step, (w0, opt.init(w0)), jnp.arange(T, dtype=jnp.int32))
        return w

    return train


def meta_grad_fns(loss, valid, w0, T, capacity):
    def objective(engine):
        def f(lrs, b1s, b2s, wds):
            if engine == "reversible":
                w_T = hypercore.reversible_adam(loss, w0, {}, lrs, b1s, b2s, wds, capacity=capacity)
            else:
                mode = {"stored": False, "checkpoint": True, "equinox": "equinox"}[engine]
                w_T = adamw_scan(loss, w0, T, checkpoint=mode)(lrs, b1s, b2s, wds)
            return valid(w_T)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))

    names = ("reversible", "stored", "checkpoint")
    if importlib.util.find_spec("equinox"):
        names = (*names, "equinox")
    return {name: objective(name) for name in names}


def fidelity(loss, w0, T, lr, b1, b2, wd) -> dict:
    """How far the engine's trajectory is from what users run: ``w_T`` of `reversible_adam` with a
    float64 model against float64 ``optax.adamw`` with the raw (unquantised) values, the same
    minibatches. Relative errors: ``|w_rev - w_optax| / |w_optax|`` over all weights (2-norms), and
    against how far training moved the weights, ``|w_rev - w_optax| / |w_optax - w0|``."""
    w64 = jax.tree.map(lambda x: x.astype(jnp.float64), w0)
    opt = optax.adamw(lr, b1=b1, b2=b2, eps=1e-8, weight_decay=wd)
    grad = jax.grad(loss)

    @jax.jit
    def reference(w):
        def step(carry, t):
            w, state = carry
            updates, state = opt.update(grad(w, {}, t), state, w)
            return (optax.apply_updates(w, updates), state), None

        return jax.lax.scan(step, (w, opt.init(w)), jnp.arange(T, dtype=jnp.int32))[0][0]

    schedule = jnp.full((T,), lr, jnp.float64)
    capacity = hypercore.adam_capacity(T, b1, b2, 1.0 - lr * wd, bucket=False)
    engine = jax.jit(
        lambda w: hypercore.reversible_adam(loss, w, {}, schedule, b1, b2, wd, capacity=capacity)
    )
    flat = [
        jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(t)])
        for t in (engine(w64), reference(w64), w64)
    ]
    rev, ref, start = (np.asarray(x, np.float64) for x in flat)
    diff = float(np.linalg.norm(rev - ref))
    return {
        "fidelity_rel_err": diff / float(np.linalg.norm(ref)),
        "fidelity_rel_to_motion": diff / float(np.linalg.norm(ref - start)),
    }


def bit_lengths(h: np.ndarray) -> int:
    """Sum over a uint64 array of each element's bit length (0 for 0)."""
    h = np.asarray(h, np.uint64)
    return int(sum(np.count_nonzero(h >> np.uint64(k)) for k in range(64)))


def info_bound_bits(n_params, lrs, b1s, b2s, wds) -> float:
    """``N * sum_t (log2(1/b1_t) + log2(1/b2_t) + log2(1/f_t))`` bits at the quantised values used."""
    db = float(_adam.DB)
    n1 = np.asarray(_adam.beta_numerator(b1s), np.float64)
    n2 = np.asarray(_adam.beta_numerator(b2s), np.float64)
    nf = np.asarray(_adam.decay_numerator(_adam.weight_decay_factors(lrs, wds)), np.float64)
    per_step = np.log2(db / n1) + np.log2(db / n2) + np.log2(db / nf)
    return float(n_params * per_step.sum())


def run(T, lr, b1, b2, wd, repeats, time_it, cell="paper", mem_limit_gb=4.0, rounds=1) -> dict:
    layers, batch = CELLS[cell]
    loss, valid, w0 = make_problem(layers=layers, batch=batch)
    n_params = sum(x.size for x in jax.tree.leaves(w0))
    args = tuple(jnp.full((T,), x, jnp.float64) for x in (lr, b1, b2, wd))
    capacity = hypercore.adam_capacity(T, b1, b2, 1.0 - lr * wd, bucket=False)
    fns = meta_grad_fns(loss, valid, w0, T, capacity)
    row = {
        "cell": cell,
        "layers": layers,
        "batch": batch,
        "T": T,
        "lr": lr,
        "b1": b1,
        "b2": b2,
        "weight_decay": wd,
        "lr_wd": lr * wd,
        "n_params": int(n_params),
        "capacity_slots": capacity,
    }
    for name, fn in fns.items():
        row[f"mem_{name}"] = memory_bytes(fn, *args)
    if "equinox" not in fns:
        row["mem_equinox"] = None
        row["equinox"] = "not installed (pip install -e '.[bench]'): skipped"

    state = hypercore.forward_state_adam(loss, w0, {}, *args, capacity=capacity)
    buf = state.buf
    used = int(buf.used)
    n_heads = len(buf.heads) // len(jax.tree.leaves(w0))
    head_bytes = sum(int(h.nbytes) for h in buf.heads)  # 8 bytes per head per weight
    info_bits = info_bound_bits(n_params, *args)
    row["heads_per_weight"] = n_heads
    row["slots_used"] = used
    row["buffer_overflow"] = bool(buf.overflow)
    row["buffer_bytes_allocated"] = int(buf.nbytes)
    row["buffer_bytes_used"] = head_bytes * (1 + (used + 1) // 2)  # engine.py's count: 64-bit words
    row["buffer_bytes_used_slots"] = head_bytes + n_heads * int(n_params) * 4 * used  # 32-bit slots
    row["buffer_bits_occupied"] = sum(bit_lengths(h) for h in buf.heads) + 32 * used * n_heads * int(n_params)
    row["head_bits_per_weight"] = sum(bit_lengths(h) for h in buf.heads) / n_params  # one head, shared
    row["buffer_info_bytes"] = info_bits / 8
    row["buffer_info_bits_per_weight_step"] = info_bits / (n_params * T)
    row["reversal_exact"] = bool(hypercore.check_reversal_adam(loss, w0, {}, *args, capacity=capacity))
    row.update(fidelity(loss, w0, T, lr, b1, b2, wd))
    grads = fns["reversible"](*args)
    row["hypergradients_finite"] = bool(all(np.isfinite(np.asarray(g)).all() for g in grads))
    if time_it:
        train = jax.jit(adamw_scan(loss, w0, T))
        t_plain = timed(train, args, repeats)
        t_rev = timed(fns["reversible"], args, repeats)
        row["time_plain_s"] = t_plain
        row["time_reversible_s"] = t_rev
        row["time_ratio"] = t_rev / t_plain
        if "equinox" in fns:  # the memory-frugal alternative's price in time
            row["time_equinox_s"] = timed(fns["equinox"], args, repeats)
        if row["mem_checkpoint"] <= mem_limit_gb * 2**30:  # per-step jax.checkpoint: T copies of the state
            row["time_checkpoint_s"] = timed(fns["checkpoint"], args, repeats)
            row["time_vs_checkpoint"] = t_rev / row["time_checkpoint_s"]
        if rounds > 1:  # the same three in turn: the figures to read the targets from
            turn = {"plain": train, "reversible": fns["reversible"]}
            if "time_checkpoint_s" in row:
                turn["checkpoint"] = fns["checkpoint"]
            row.update(interleaved(turn, args, rounds, repeats))
    return row


def targets(r: dict) -> dict:
    out = {
        "memory": r["mem_stored"] / r["mem_reversible"] >= TARGET_MEMORY_RATIO,
        "buffer": r["buffer_bytes_used"] / r["buffer_info_bytes"] <= TARGET_BUFFER_RATIO,
    }
    if "time_ratio" in r:
        out["time"] = r["time_ratio"] <= TARGET_TIME_RATIO
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--long", action="store_true", help="add T = 10000")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--b1", type=float, default=0.9)
    parser.add_argument("--b2", type=float, default=0.999)
    parser.add_argument("--weight-decay", type=float, default=0.1, help="lr * wd = 1e-4 by default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-time", action="store_true", help="memory only")
    parser.add_argument(
        "--cell", choices=list(CELLS), default="paper", help="the model and batch (default paper)"
    )
    parser.add_argument(
        "--mem-limit-gb",
        type=float,
        default=4.0,
        help="time per-step jax.checkpoint only below this estimate",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="then time plain training, the reversible engine and jax.checkpoint in turn, this many"
        " rounds (each the fastest of --repeats runs), and report each round's ratios (1: none)",
    )
    parser.add_argument("--out", default="benchmarks/out/engine_adam.json")
    args = parser.parse_args()
    steps = [*args.steps, 10000] if args.long and 10000 not in args.steps else args.steps
    rows = []
    for T in steps:
        row = run(
            T,
            args.lr,
            args.b1,
            args.b2,
            args.weight_decay,
            args.repeats,
            not args.no_time,
            args.cell,
            args.mem_limit_gb,
            args.rounds,
        )
        if T == 1000:
            row["targets_met"] = targets(row)
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    print()
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}, optax {optax.__version__}"
    )
    print(
        "| T | reversible MiB | stored MiB (ratio) | checkpoint MiB (ratio) | equinox MiB (ratio) "
        "| slots used | buffer used / bound | buffer allocated / bound | plain s | reversible s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    mib = 2**20
    for r in rows:
        rev = r["mem_reversible"]
        timing = (
            f"{r['time_plain_s']:.3g} | {r['time_reversible_s']:.3g} | {r['time_ratio']:.2f}x"
            if "time_ratio" in r
            else "- | - | -"
        )
        eq = r.get("mem_equinox")
        eqx = f"{eq / mib:.1f} ({eq / rev:.1f}x)" if eq else "-"
        print(
            f"| {r['T']} | {rev / mib:.1f} | {r['mem_stored'] / mib:.0f} ({r['mem_stored'] / rev:.0f}x) | "
            f"{r['mem_checkpoint'] / mib:.1f} ({r['mem_checkpoint'] / rev:.1f}x) | {eqx} | "
            f"{r['slots_used']} | "
            f"{r['buffer_bytes_used'] / r['buffer_info_bytes']:.2f}x | "
            f"{r['buffer_bytes_allocated'] / r['buffer_info_bytes']:.2f}x | {timing} |"
        )
    for r in rows:
        if "time_checkpoint_s" in r:
            print(
                f"time at T = {r['T']}: per-step jax.checkpoint {r['time_checkpoint_s']:.3g} s; reversible "
                f"{r['time_vs_checkpoint']:.2f}x that"
            )
        if "time_equinox_s" in r:
            print(
                f"time at T = {r['T']}: equinox's checkpointed loop {r['time_equinox_s']:.3g} s "
                f"({r['time_equinox_s'] / r['time_plain_s']:.2f}x plain training)"
            )
        if "rounds_ratio_plain" in r:
            print(
                f"time at T = {r['T']}, {len(r['rounds_ratio_plain'])} rounds in turn: reversible / plain "
                f"{ratios_text(r['rounds_ratio_plain'])}, / jax.checkpoint "
                f"{ratios_text(r.get('rounds_ratio_checkpoint'))}"
            )
        print(
            f"fidelity at T = {r['T']} (float64, against optax.adamw with the raw values): relative error "
            f"{r['fidelity_rel_err']:.2e}, {r['fidelity_rel_to_motion']:.2e} of how far the weights moved"
        )
    if "equinox" in rows[0]:
        print(f"equinox: {rows[0]['equinox']}")
    for r in rows:
        if "targets_met" in r:
            print(f"targets at T = {r['T']}: {r['targets_met']}")


if __name__ == "__main__":
    main()
