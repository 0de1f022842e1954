"""Where the reversible Adam engine's time goes: an XLA profile of one hypergradient.

The hypergradient of ``benchmarks/engine_adam.py`` (the paper's net, AdamW, four traced (T,)
schedules) is run under ``jax.profiler`` and the time of every XLA operation (CPU thunk) is summed by
kind: matrix products (``dot`` and the XNNPACK/YNNPACK ``ynn_fusion`` kernels: the gradient forward,
the gradient and its vector-Jacobian product backward) against everything else (the exact integer
arithmetic, conversions, copies). Also the same for plain ``optax.adamw`` training, for scale.

    .venv/bin/python benchmarks/profile_adam.py            # T = 100, about a minute
    .venv/bin/python benchmarks/profile_adam.py --steps 200 --top 30
    .venv/bin/python benchmarks/profile_adam.py --cell 1e5     # engine_adam.py's cells at batch 50
    .venv/bin/python benchmarks/profile_adam.py --cell 1e6 --runs 2 --out docs/figures/profile_adam_1e6.json
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
from engine import make_problem
from engine_adam import CELLS, adamw_scan
from llvmlite import binding as llvm

import hypercore

SKIP = ("ThunkExecutor", "$")  # the executor's own spans and Python frames, which contain the ops


def trace_events(fn, args, runs: int) -> list[dict]:
    """The profiler's trace events of ``runs`` calls of the compiled ``fn`` (after one warm-up call)."""
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        for _ in range(runs):
            jax.block_until_ready(fn(*args))
        jax.profiler.stop_trace()
        [path] = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)
        return json.load(gzip.open(path))["traceEvents"]


def profile(fn, args, runs: int) -> collections.Counter:
    """Microseconds per kernel name, summed over ``runs`` calls of the compiled ``fn``."""
    total: collections.Counter = collections.Counter()
    for e in trace_events(fn, args, runs):
        if e.get("ph") == "X" and not e["name"].startswith(SKIP) and e["name"] != "while":
            total[e["name"]] += e.get("dur", 0)
    return total


def split(total: collections.Counter, per: float) -> dict[str, float]:
    """ms per step: matrix products, the rest."""
    matmul = sum(v for k, v in total.items() if k.startswith(("dot", "ynn_fusion")))
    return {
        "matrix products": matmul / per / 1e3,
        "everything else": (sum(total.values()) - matmul) / per / 1e3,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--cell", choices=list(CELLS), default="paper", help="the model and batch (default paper)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="list the slowest kernels of the engine")
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    args = parser.parse_args()
    T = args.steps
    layers, batch = CELLS[args.cell]
    loss, valid, w0 = make_problem(layers=layers, batch=batch)
    schedules = tuple(jnp.full((T,), x, jnp.float64) for x in (1e-3, 0.9, 0.999, 0.1))
    capacity = hypercore.adam_capacity(T, 0.9, 0.999, 1 - 1e-4, bucket=False)

    def objective(lrs, b1s, b2s, wds):
        return valid(hypercore.reversible_adam(loss, w0, {}, lrs, b1s, b2s, wds, capacity=capacity))

    engine = profile(jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3))), schedules, args.runs)
    plain = profile(jax.jit(adamw_scan(loss, w0, T)), schedules, args.runs)
    per = args.runs * T
    print(
        f"device: {jax.devices()[0].device_kind}, cell {args.cell}, T = {T}, {args.runs} runs;"
        " ms per training step"
    )
    for name, total in (
        ("reversible AdamW, forward + backward", engine),
        ("plain optax.adamw training", plain),
    ):
        parts = split(total, per)
        print(
            f"{name}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
            + f", total {sum(parts.values()):.2f}"
        )
    print(f"the engine's {args.top} slowest kernels (ms per step):")
    for k, v in engine.most_common(args.top):
        print(f"  {v / per / 1e3:7.3f}  {k}")
    if args.out:
        out = {
            "device": jax.devices()[0].device_kind,
            "cpu": llvm.get_host_cpu_name(),
            "cell": args.cell,
            "T": T,
            "runs": args.runs,
            "ms_per_step": {"reversible": split(engine, per), "plain": split(plain, per)},
            "slowest_kernels_ms_per_step": {k: v / per / 1e3 for k, v in engine.most_common(args.top)},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
