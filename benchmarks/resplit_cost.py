"""What ``dataset.resplit`` costs per meta-iteration: the same problem tuned with and without a new
train/valid split every meta-iteration, side by side in one process, after both have compiled.

The re-split gathers each step's rows from the pooled training and validation examples by index
(`hypercore.data.resplit_indices`), so it adds a gather per loss evaluation and one sort per
meta-iteration. Blocks of ``--iterations`` meta-iterations alternate between the two ``--repeats``
times; the ratio of the median seconds per meta-iteration is printed (noise on a busy machine is
a few per cent either way).

    .venv/bin/python benchmarks/resplit_cost.py     # the two vs_blackbox problems with minibatches

Writes ``docs/figures/resplit_cost.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import jax
from vs_blackbox import spec_for

import hypercore

PROBLEMS = ("digits-schedules", "mnist5k-l2-schedules")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="docs/figures/resplit_cost.json")
    args = parser.parse_args()
    rows = []
    for name in args.problems:
        fixed = hypercore.problem_from_spec(spec_for(name, 0))
        problems = {"fixed split": fixed, "resplit": dataclasses.replace(fixed, resplit=True)}
        for problem in problems.values():
            hypercore.tune(problem, iterations=2)  # compile
        seconds: dict[str, list[float]] = {k: [] for k in problems}
        for _ in range(args.repeats):
            for key, problem in problems.items():
                started = time.perf_counter()
                hypercore.tune(problem, iterations=args.iterations)
                seconds[key].append((time.perf_counter() - started) / args.iterations)
        median = {k: statistics.median(v) for k, v in seconds.items()}
        row = {"problem": name, "seconds": seconds, "ratio": median["resplit"] / median["fixed split"]}
        rows.append(row)
        print(
            f"{name}: s per meta-iteration, fixed split {median['fixed split']:.4f}, "
            f"resplit {median['resplit']:.4f}, ratio {row['ratio']:.2f}",
            flush=True,
        )
    machine = {"device": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "load": list(os.getloadavg())}
    Path(args.out).write_text(
        json.dumps({"machine": machine, "settings": vars(args), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
