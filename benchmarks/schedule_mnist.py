"""The paper's learning-rate schedule experiment (section 3.1 / HIPS/hypergrad
``experiments/Feb_3_training_schedules/3_adam_50``), timed on this machine.

784-50-50-50-10 tanh net on mnist5k, 100 steps of SGD with momentum, minibatches of 200 drawn with
replacement from (seed, meta_iter, t), fresh initial weights every meta-iteration. 1,608
hyperparameters: a learning rate and a momentum per step for each of the 8 parameter arrays
(2 x 100 x 8, initial alpha = e^-1, gamma = 0.5) and 8 initial scales (e^-3). Meta-objective: the
final training loss on the whole training set. Meta-optimiser: the repository's Adam, step 0.04
(``adam_paper``), 50 meta-iterations. The paper used 10,000 MNIST training images; mnist5k holds
5,000 in all, split here into train / valid / test.

Usage::

    python benchmarks/schedule_mnist.py [--iterations N] [--engine reversible|unrolled] [--out FILE]

prints one JSON line per meta-iteration and the total wall time; ``--out`` also writes the records
and the final learned hyperparameters (natural units) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

import hypercore  # noqa: F401  (turns on x64)
from hypercore.spec import problem_from_spec
from hypercore.tune import initial_hyperparameters, tune


def spec(iterations: int, train: int, valid: int, test: int, optimizer: str) -> dict:
    return {
        "name": "paper-schedules-mnist5k",
        "dataset": {"name": "mnist5k", "train": train, "valid": valid, "test": test, "batch_size": 200},
        "model": {"kind": "mlp", "hidden": [50, 50, 50], "activation": "tanh"},
        "training": {"steps": 100},
        "hyperparameters": {
            "learning_rate": {"init": math.exp(-1.0), "granularity": "layer_step", "learn": True},
            "momentum": {"init": 0.5, "granularity": "layer_step", "learn": True},
            "init_scale": {"init": math.exp(-3.0), "granularity": "layer", "learn": True},
            "l2": {"init": 0.0, "granularity": "layer", "learn": False},
        },
        "objective": "train_loss",
        "meta": {"iterations": iterations, "optimizer": optimizer, "learning_rate": 0.04},
        "seed": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--engine", choices=["reversible", "unrolled"], default="reversible")
    parser.add_argument("--optimizer", default="adam_paper")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--valid", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--out", help="write records and final hyperparameters here (JSON)")
    args = parser.parse_args()

    problem = problem_from_spec(spec(args.iterations, args.train, args.valid, args.test, args.optimizer))
    n_hyper = sum(int(np.size(v)) for v in initial_hyperparameters(problem).values())
    n_weights = sum(math.prod(s) for s in problem.model.shapes.values())
    print(f"# {n_hyper} hyperparameters, {n_weights} weights, engine {args.engine}", flush=True)

    steps = []
    started = time.perf_counter()

    def report(record):
        step = record.step()
        step["events"] = [e._asdict() for e in record.events]
        steps.append(step)
        print(json.dumps(step), flush=True)

    result = tune(problem, callback=report, engine=args.engine)
    total = time.perf_counter() - started
    after_first = sum(s["elapsed_s"] for s in steps[1:])
    print(
        f"# total {total:.1f} s for {len(steps)} meta-iterations; first (with compilation) "
        f"{steps[0]['elapsed_s']:.1f} s, then {after_first / max(len(steps) - 1, 1):.2f} s each",
        flush=True,
    )
    if args.out:
        hypers = {
            name: {"values": v.values.tolist(), "axes": v.axes, "labels": v.labels, "learned": v.learned}
            for name, v in result.hyperparameters.items()
        }
        with open(args.out, "w") as f:
            json.dump({"total_s": total, "engine": args.engine, "steps": steps, "hyperparameters": hypers}, f)


if __name__ == "__main__":
    main()
