"""Engine grid: memory and time of exact reversal against other ways to differentiate an unroll.

The meta-gradient ``d valid(w_T) / d (alphas, gammas)`` of T steps of SGD with momentum on a tanh MLP
or a small tanh convolutional net (MNIST-shaped Gaussian-noise inputs, 1,000 examples, minibatches of
--batch drawn from ``(seed, t)``: inside the loss, or with ``--minibatches table`` from a table drawn
before training, as a tuning job does), with shared learning-rate and momentum schedules of shape (T,),
computed five ways:

* ``reversible``: `hypercore.reversible_sgd` (exact int64 fixed-point reversal; the information
  buffer is sized for the gammas used, ``_fixed.capacity_for(T, gamma)``);
* ``stored``: reverse mode through a plain ``lax.scan`` (`hypercore.unrolled_sgd`), which keeps every
  step's weights, velocities and activations;
* ``jax.checkpoint``: the same scan with each step wrapped in ``jax.checkpoint`` (stores the carry
  ``(w, v)`` of every step, recomputes the step's internals);
* ``equinox``: ``equinox.internal.while_loop(kind="checkpointed", checkpoints=ceil(log2 T))``, binomial
  (treeverse) checkpointing: O(log T) stored states, O(T log T) recomputed steps;
* ``plain``: training alone (forward, float32, no gradient), the reference for time.

Models (--models, alias --sizes; by default the three MLPs): the MLPs ``1e4`` = 784-12-10 (9,550
parameters), ``1e5`` = 784-128-10 (101,770), ``1e6`` = 784-1000-200-10 (987,210), and ``cnn``:
`hypercore.cnn.cnn` on 28x28x1 images, convolutions of 8 and 16 channels (3x3, SAME, each followed by
tanh and 2x2 average pooling), then a dense 784-10 output layer (9,098 parameters: about the 1e4 MLP's
count, with some 30 times its multiply-adds per example). Weights start at ``N(0, 1/fan_in)``, biases
at 0. Steps (--steps): 100, 1000, 10000. gamma = 0.9, alpha = 0.1.

Memory is XLA's buffer assignment of the compiled function (``compiled.memory_analysis()``: temp +
arguments + outputs, i.e. the peak of the buffers XLA allocates, a static estimate measured without
running; the closed-over data set is a constant and not counted). Every cell is compiled, so memory is
reported for all of them (unless --time-budget-s is spent: then nothing more is compiled); a cell whose
estimate exceeds --mem-limit-gb is not run. Time is the wall clock of the compiled function (compiled
ahead of time, so compilation is excluded): the median of --repeats runs when one run is estimated
under 10 s, else one run. A cell whose time, extrapolated linearly in T from the same engine and model
at a smaller T, would exceed --max-cell-s is not run. No cell is started after --time-budget-s.
The reversible engine's own report (exact reversal, buffer slots used) comes from the timed run.

Those timings run one engine after another, so a machine whose speed drifts (a neighbour's load, a
CPU's clock) moves one engine's time and not another's: between two runs of the grid the same cell's
ratio has moved by 20 %. ``--rounds R`` then times plain training, the reversible engine and
``jax.checkpoint`` (where each was timed above) in turn, R times, each the fastest of --repeats runs
(one run where the reversible engine's took 10 s or more), and reports each round's ratios,
reversible over plain training and over ``jax.checkpoint``: their median and range are the figures to
read the issue's targets from (``engine_ab.py`` compares commits the same way).

    .venv/bin/python benchmarks/engine_grid.py --max-cell-s 200 --time-budget-s 1200
    # writes docs/figures/engine_grid.json (+ .png); benchmarks/gpu_check.sh runs it on a GPU
    .venv/bin/python benchmarks/engine_grid.py --sizes 1e4 --steps 100 1000 --repeats 5
    # the targets' reading: interleaved rounds, minibatches as a job draws them
    .venv/bin/python benchmarks/engine_grid.py --sizes 1e4 1e5 1e6 --steps 100 1000 --rounds 3 \
        --minibatches table --max-cell-s 60 --out docs/figures/engine_grid_rounds.json
    # the CNN cells alone, into their own file (docs/figures/engine_grid_cnn.json + .png):
    nice -n 19 .venv/bin/python benchmarks/engine_grid.py --models cnn --steps 100 1000 \
        --out docs/figures/engine_grid_cnn.json
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

import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from engine import BATCH as N_VALID  # engine.make_problem validates on the first BATCH examples
from engine import N_EXAMPLES, interleaved, make_problem, minibatch_indices, ratios_text

import hypercore
from hypercore import _fixed
from hypercore.cnn import cnn

SIZES = {
    "1e4": [784, 12, 10],
    "1e5": [784, 128, 10],
    "1e6": [784, 1000, 200, 10],
}
CNNS = {"cnn": {"image_shape": [28, 28, 1], "n_classes": 10, "channels": [8, 16], "kernel": 3, "pool": 2}}
MODELS = (*SIZES, *CNNS)
ENGINES = ("reversible", "stored", "checkpoint", "equinox")
LABELS = {
    "reversible": "reversible",
    "stored": "stored trajectory",
    "checkpoint": "jax.checkpoint per step",
    "equinox": "equinox checkpointed",
}
ALPHA, GAMMA = 0.1, 0.9


def equinox_sgd(loss, w0, alphas, gammas, checkpoints):
    """The same update as `hypercore.unrolled_sgd`, as an equinox checkpointed while loop."""
    T = alphas.shape[0]
    grad = jax.grad(loss)

    def cond(carry):
        return carry[2] < T

    def body(carry):
        w, v, t = carry
        g = grad(w, {}, t)
        a, c = alphas[t], gammas[t]
        v = jax.tree.map(lambda vi, gi: c * vi - (1 - c) * gi, v, g)
        w = jax.tree.map(lambda wi, vi: wi + a * vi, w, v)
        return w, v, t + 1

    init = (w0, jax.tree.map(jnp.zeros_like, w0), jnp.zeros((), jnp.int32))
    w, _, _ = eqxi.while_loop(cond, body, init, max_steps=T, kind="checkpointed", checkpoints=checkpoints)
    return w


def make_cnn_problem(config: dict, batch: int, seed: int = 0, table_steps: int | None = None):
    """``(loss, valid, w0)`` for the CNN ``config`` (`CNNS`) on the data of `engine.make_problem`: the
    same Gaussian-noise inputs, labels, minibatches and validation examples."""
    model = cnn(**config)
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.normal(size=(N_EXAMPLES, model.n_features)), jnp.float32)
    y = jnp.asarray(rng.integers(0, model.n_classes, N_EXAMPLES), jnp.int32)
    fan_in = {k: math.prod(shape[:-1]) for k, shape in model.shapes.items()}
    scales = {k: 0.0 if k.endswith(".b") else 1 / math.sqrt(n) for k, n in fan_in.items()}
    w0 = model.init(jax.random.key(seed), scales)

    def nll(w, Xb, yb):
        logp = jax.nn.log_softmax(model.apply(w, Xb))
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    indices = minibatch_indices(seed, batch, table_steps)

    def loss(w, meta, t):
        idx = indices(t)
        return nll(w, X[idx], y[idx])

    def valid(w):
        return nll(w, X[:N_VALID], y[:N_VALID])

    return loss, valid, w0


def build(size: str, batch: int, table_steps: int | None = None) -> tuple[object, object, dict, dict]:
    """``(loss, valid, w0, description)`` of the model named ``size``; the description opens its row.
    ``table_steps``: minibatches from a table (`engine.minibatch_indices`)."""
    if size in CNNS:
        problem = make_cnn_problem(CNNS[size], batch, table_steps=table_steps)
        return (*problem, {"size": size, "model": "cnn", **CNNS[size]})
    description = {"size": size, "model": "mlp", "layers": SIZES[size]}
    return (*make_problem(layers=SIZES[size], batch=batch, table_steps=table_steps), description)


def model_label(r: dict) -> str:
    """``mlp 784-12-10`` or ``cnn 8-16 (3x3)``; rows written before the CNN row have no ``model``."""
    if r.get("model", "mlp") == "mlp":
        return "mlp " + "-".join(map(str, r["layers"]))
    return f"cnn {'-'.join(map(str, r['channels']))} ({r['kernel']}x{r['kernel']})"


def meta_grad_fn(engine, loss, valid, w0, T, capacity):
    """``(alphas, gammas, report) -> (grads..., report)``, jitted; float32 schedules."""

    def f(alphas, gammas, report):
        if engine == "reversible":
            w_T = hypercore.reversible_sgd(loss, w0, {}, alphas, gammas, capacity=capacity, report=report)
        elif engine == "equinox":
            w_T = equinox_sgd(loss, w0, alphas, gammas, max(2, math.ceil(math.log2(T))))
        else:
            w_T = hypercore.unrolled_sgd(loss, w0, {}, alphas, gammas, checkpoint=engine == "checkpoint")
        return valid(w_T)

    return jax.jit(jax.grad(f, argnums=(0, 1, 2)))


def plain_training(loss, w0, T):
    grad = jax.grad(loss)

    @jax.jit
    def train(alphas, gammas, report):
        def step(carry, xs):
            w, v = carry
            t, a, c = xs
            g = grad(w, {}, t)
            v = jax.tree.map(lambda vi, gi: c * vi - (1 - c) * gi, v, g)
            w = jax.tree.map(lambda wi, vi: wi + a * vi, w, v)
            return (w, v), None

        v0 = jax.tree.map(jnp.zeros_like, w0)
        (w, _), _ = jax.lax.scan(step, (w0, v0), (jnp.arange(T, dtype=jnp.int32), alphas, gammas))
        return w

    return train


def memory_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def timed(compiled, args, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_cell(size, T, args, per_step: dict, started: float) -> dict:
    """One (model size, T) cell: every engine plus plain training. ``per_step[(size, engine)]``
    holds the seconds per step measured at a smaller T, for the time estimates."""
    loss, valid, w0, description = build(size, args.batch, T if args.minibatches == "table" else None)
    n_params = sum(x.size for x in jax.tree.leaves(w0))
    alphas = jnp.full((T,), ALPHA, jnp.float32)
    gammas = jnp.full((T,), GAMMA, jnp.float32)
    report = hypercore.empty_report()
    capacity = _fixed.capacity_for(T, GAMMA, bucket=False)
    row = {**description, "n_params": int(n_params), "T": T, "capacity_slots": capacity}
    limit = args.mem_limit_gb * 2**30
    fns = {name: meta_grad_fn(name, loss, valid, w0, T, capacity) for name in ENGINES}
    fns["plain"] = plain_training(loss, w0, T)
    timed_fns = {}
    for name in ("plain", *ENGINES):
        if time.perf_counter() - started > args.time_budget_s:
            row[f"time_{name}"] = "not run: time budget spent"  # not compiled either: no memory figure
            continue
        t0 = time.perf_counter()
        compiled = fns[name].lower(alphas, gammas, report).compile()
        row[f"compile_{name}_s"] = time.perf_counter() - t0
        mem = memory_bytes(compiled)
        row[f"mem_{name}"] = mem
        if mem > limit:
            row[f"time_{name}"] = f"not run: needs {mem / 1e9:.1f} GB"
            continue
        estimate = per_step.get((size, name), 0.0) * T
        if time.perf_counter() - started > args.time_budget_s:
            row[f"time_{name}"] = "not run: time budget spent"
            continue
        if estimate > args.max_cell_s:
            row[f"time_{name}"] = f"not run: est. {estimate / 60:.0f} min"
            continue
        repeats = args.repeats if estimate < 10 else 1
        seconds, out = timed(compiled, (alphas, gammas, report), repeats)
        row[f"time_{name}"] = seconds
        row[f"repeats_{name}"] = repeats
        per_step[(size, name)] = seconds / T
        timed_fns[name] = compiled
        if name == "reversible":
            rep = hypercore.ReversalReport.from_array(out[2])
            row["reversal_exact"] = rep.exact
            row["slots_used"] = rep.slots_used
            row["grad_finite"] = bool(np.all(np.isfinite(np.asarray(out[0]))))
        print(f"  {size} T={T} {name}: {mem / 2**20:.1f} MiB, {seconds:.3f} s", flush=True)
    if args.rounds > 1 and {"plain", "reversible"} <= set(timed_fns):
        repeats = args.repeats if row["time_reversible"] < 10 else 1
        fns = {name: timed_fns[name] for name in ROUND_ENGINES if name in timed_fns}
        row.update(interleaved(fns, (alphas, gammas, report), args.rounds, repeats))
    info_bits = n_params * T * math.log2(_fixed.D / int(_fixed.gamma_numerator(GAMMA)))
    row["buffer_info_bytes"] = info_bits / 8
    row["buffer_bytes_allocated"] = int(n_params * 8 * (1 + math.ceil(capacity / 2)))
    if "slots_used" in row:
        row["buffer_bytes_used"] = int(n_params * 8 * (1 + math.ceil(row["slots_used"] / 2)))
    return row


ROUND_ENGINES = ("plain", "reversible", "checkpoint")


def fmt_ratios(r, name) -> str:
    """A cell's per-round ratios of the reversible engine's time to ``name``'s."""
    return ratios_text(r.get(f"rounds_ratio_{name}"))


def fmt_mem(r, name) -> str:
    if f"mem_{name}" not in r:
        return "-"
    mib = r[f"mem_{name}"] / 2**20
    text = f"{mib:,.1f}" if mib < 100 else f"{mib:,.0f}"
    if name != "reversible" and "mem_reversible" in r:
        text += f" ({r[f'mem_{name}'] / r['mem_reversible']:.1f}x)"
    return text


def fmt_time(r, name) -> str:
    t = r.get(f"time_{name}")
    if isinstance(t, str):
        return t
    if t is None:
        return "-"
    text = f"{t:.3g} s"
    base = r.get("time_reversible")
    if name != "reversible" and isinstance(base, float):
        text += f" ({t / base:.2f}x)"
    return text


def print_table(rows, machine) -> None:
    print()
    print(json.dumps(machine))
    print()
    print(
        "| model | params | T | memory MiB: reversible | stored | jax.checkpoint | equinox | plain training "
        "| time: reversible | stored | jax.checkpoint | equinox | plain training | reversal exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [model_label(r), f"{r['n_params']:,}", str(r["T"])]
        cells += [fmt_mem(r, n) for n in (*ENGINES, "plain")]
        cells += [fmt_time(r, n) for n in (*ENGINES, "plain")]
        cells.append(str(r.get("reversal_exact", "-")))
        print("| " + " | ".join(cells) + " |")
    print()
    if any("rounds_ratio_plain" in r for r in rows):
        print("| model | params | T | rounds | reversible / plain training | reversible / jax.checkpoint |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            if "rounds_ratio_plain" in r:
                cells = [model_label(r), f"{r['n_params']:,}", str(r["T"]), str(len(r["rounds_ratio_plain"]))]
                cells += [fmt_ratios(r, "plain"), fmt_ratios(r, "checkpoint")]
                print("| " + " | ".join(cells) + " |")
        print()
    print("| model | params | T | buffer slots used / allocated | buffer bytes used / info-theoretic |")
    print("|---|---|---|---|---|")
    for r in rows:
        used = r.get("buffer_bytes_used")
        ratio = f"{used / r['buffer_info_bytes']:.2f}x" if used else "-"
        print(
            f"| {model_label(r)} | {r['n_params']:,} | {r['T']} | {r.get('slots_used', '-')} / "
            f"{r['capacity_slots']} | {ratio} |"
        )


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({(r["n_params"], model_label(r)) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    markers = dict(zip(ENGINES, "osD^", strict=True))
    for (n, label), color in zip(models, ("C0", "C1", "C2", "C3", "C4"), strict=False):
        rs = [r for r in rows if r["n_params"] == n and model_label(r) == label]
        for name in ENGINES:
            Ts = [r["T"] for r in rs]
            axes[0].plot(
                Ts,
                [r.get(f"mem_{name}", math.nan) / 2**20 for r in rs],
                marker=markers[name],
                color=color,
                linestyle="-" if name == "reversible" else ":",
                label=f"{LABELS[name]}, {label} ({n:,})",
            )
            timed_rs = [r for r in rs if isinstance(r.get(f"time_{name}"), float)]
            axes[1].plot(
                [r["T"] for r in timed_rs],
                [r[f"time_{name}"] for r in timed_rs],
                marker=markers[name],
                color=color,
                linestyle="-" if name == "reversible" else ":",
            )
    for ax, label in zip(axes, ("memory (MiB, XLA buffer assignment)", "time (s)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training steps T")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6, ncol=2)
    axes[0].set_title("colour: model (parameters); marker: engine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        "--sizes",
        dest="sizes",
        nargs="+",
        default=list(SIZES),
        choices=list(MODELS),
        help="MLP sizes and/or cnn (default: the MLP sizes, the grid of docs/figures/engine_grid.json)",
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mem-limit-gb", type=float, default=10.0, help="do not run cells needing more")
    parser.add_argument("--max-cell-s", type=float, default=300.0, help="do not run cells estimated longer")
    parser.add_argument(
        "--time-budget-s", type=float, default=math.inf, help="run no new cell after this many seconds"
    )
    parser.add_argument(
        "--minibatches",
        choices=["loss", "table"],
        default="loss",
        help="draw each step's minibatch with jax.random inside the loss (the default, as every grid in"
        " BENCHMARKS.md before minibatch_rng.py), or read it from a table drawn before training, as a"
        " tuning job does",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="then time plain training, the reversible engine and jax.checkpoint in turn, this many"
        " rounds, and report each round's ratios (1: none)",
    )
    parser.add_argument("--out", default="docs/figures/engine_grid.json")
    args = parser.parse_args()
    started = time.perf_counter()
    rows, per_step = [], {}
    for size in args.sizes:
        for T in sorted(args.steps):
            rows.append(run_cell(size, T, args, per_step, started))
    machine = {
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "batch": args.batch,
        "gamma": GAMMA,
        "alpha": ALPHA,
        "mem_limit_gb": args.mem_limit_gb,
        "max_cell_s": args.max_cell_s,
        "minibatches": args.minibatches,
        "rounds": args.rounds,
        "total_s": time.perf_counter() - started,
    }
    print_table(rows, machine)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
