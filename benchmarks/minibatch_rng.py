"""Do the engine benchmarks' minibatches, drawn by ``jax.random`` inside the loss, bias their ratios?

`benchmarks/engine.py`'s problem (which `engine_ab.py`, `engine_grid.py` and `profile_sgd.py` use)
draws step ``t``'s minibatch inside the training loss, from ``fold_in(key(seed), t)``: plain training
draws it once a step, the reversible engine twice (forward, and again where it recomputes the gradient
in reverse), and the profile shows the random generator's many small XLA kernels in every step. A tuning
job does not: `hypercore.tune` draws every step's indices into a table before training, and the loss
reads its row. This script times both losses on the same cells, side by side in one process (the
fastest of --repeats runs of each, taken in turn --rounds times): plain float32 training and the
reversible hypergradient ``d valid(w_T) / d (alphas, gammas)`` (shared schedules of shape (T,), alpha
0.1, gamma 0.9), and checks that the two losses give bit-identical hypergradients (the same indices).

    .venv/bin/python benchmarks/minibatch_rng.py --out docs/figures/minibatch_rng.json      # ~2 min
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np
from engine import make_problem, plain_training
from engine_ab import CELLS, fastest

import hypercore
from hypercore import _fixed

ALPHA, GAMMA = 0.1, 0.9


def functions(layers: list[int], batch: int, T: int) -> dict[tuple[str, str], object]:
    """The four jitted functions of one cell: (reversible | plain) x (in-loss draws | table)."""
    out = {}
    capacity = _fixed.capacity_for(T, GAMMA, bucket=False)
    for draws, table_steps in (("in the loss", None), ("table", T)):
        loss, valid, w0 = make_problem(layers=layers, batch=batch, table_steps=table_steps)

        def meta_objective(alphas, gammas, loss=loss, valid=valid, w0=w0):
            return valid(hypercore.reversible_sgd(loss, w0, {}, alphas, gammas, capacity=capacity))

        out[("reversible", draws)] = jax.jit(jax.grad(meta_objective, argnums=(0, 1)))
        out[("plain", draws)] = plain_training(loss, w0, T)
    return out


def run_cell(cell: str, T: int, repeats: int, rounds: int) -> dict:
    layers, batch = CELLS[cell]
    fns = functions(layers, batch, T)
    args = (jnp.full((T,), ALPHA), jnp.full((T,), GAMMA))
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for key, fn in fns.items():
            best[key] = min(best[key], fastest(fn, args, repeats))
    ms = {key: s / T * 1e3 for key, s in best.items()}
    grads = {d: fns[("reversible", d)](*args) for d in ("in the loss", "table")}
    same = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(grads["in the loss"], grads["table"], strict=True)
    )
    row = {"cell": cell, "layers": layers, "batch": batch, "T": T, "bit_identical": bool(same)}
    for d in ("in the loss", "table"):
        key = d.replace(" ", "_")
        row[f"reversible_ms_{key}"] = ms[("reversible", d)]
        row[f"plain_ms_{key}"] = ms[("plain", d)]
        row[f"ratio_{key}"] = ms[("reversible", d)] / ms[("plain", d)]
    return row


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=["paper", "1e4", "1e5", "1e6"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the fastest is kept")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each function, in turn")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for cell in args.cells:
        row = run_cell(cell, args.steps, args.repeats, args.rounds)
        rows.append(row)
        print(
            f"{cell} T={row['T']}: draws in the loss: reversible"
            f" {row['reversible_ms_in_the_loss']:.3f} ms/step, plain {row['plain_ms_in_the_loss']:.3f}"
            f" ({row['ratio_in_the_loss']:.2f}x); from a table:"
            f" reversible {row['reversible_ms_table']:.3f}, plain {row['plain_ms_table']:.3f}"
            f" ({row['ratio_table']:.2f}x); hypergradients bit-identical {row['bit_identical']}",
            flush=True,
        )
    if args.out:
        meta = {"device": f"{jax.default_backend()}, {platform.machine()}", "jax": jax.__version__}
        with open(args.out, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
