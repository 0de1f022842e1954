"""How long a job waits for its first meta-iteration: on a warm worker that has run a job of the same
shapes, and on a fresh worker with the persistent compilation cache (``REVTUNE_COMPILATION_CACHE``).

The compiled programs take the seed, the datasets and the hyperparameters' values as arguments
(`hypercore.tune._program`), so a job that differs from an earlier one only in those compiles nothing.
For each template, fresh processes, one after the other:

1. **no cache**: the template's job (compiles everything), then in the same process, as a warm worker
   would run them, the job with another seed, with other data of the same shapes (``dataset.center``
   flipped) and with other hyperparameter values (learning rate halved, momentum lowered);
2. **empty cache**: the template's job, filling the cache;
3. **filled cache**: the template's job again, as a restarted worker (or a second one on the host);
4. **filled cache, other job**: the job with another seed, as a fresh worker on a job nobody ran.

Each time is from the start of building the job's problem (the worker builds it right after its
claim) to the end of its first meta-iteration, compilation included; imports are not counted (a
worker imports once), nor is the worker's own start (`worker.runner.prepare_engine`: loading the fused
CPU kernels and their check, before it consumes a job), which is reported beside the rows. Every job
must give the same objective and hypergradient norm, to the bit, wherever it ran.

    .venv/bin/python benchmarks/compile_cache.py     # lr-schedule-digits and lr-schedule-mnist
    .venv/bin/python benchmarks/compile_cache.py --template sharing-mnist5k-tasks --out /tmp/cc.json

Prints a table and writes ``docs/figures/compile_cache.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import copy, json, sys, time
from jobs.settings import Settings
from worker.runner import configure_compilation_cache, prepare_engine
configure_compilation_cache(Settings(data_dir=sys.argv[1], compilation_cache=sys.argv[2]))
import hypercore
started = time.perf_counter()
prepare_engine()  # as `revtune worker` does before it consumes a job
prepare_s = time.perf_counter() - started
out = []
for name, spec in json.loads(sys.argv[3]):
    started = time.perf_counter()
    problem = hypercore.problem_from_spec(spec)
    built = time.perf_counter()
    first = hypercore.tune(problem, iterations=1).records[0]
    done = time.perf_counter()
    out.append({"job": name, "build_s": built - started, "first_meta_iteration_s": done - built,
                "start_s": done - started, "worker_prepare_s": prepare_s, "objective": first.objective,
                "hypergrad_norm": first.hypergrad_norm})
print(json.dumps(out))
"""

TARGET_WARM_S = 1.0
TARGET_FRESH_S = 3.0


def variants(template: str) -> dict[str, dict]:
    """The template's job and three that differ from it only in seed, data contents or values."""
    from jobs.templates import get

    base = get(template)
    seed = copy.deepcopy(base)
    seed["seed"] = base.get("seed", 0) + 1
    data = copy.deepcopy(base)
    data["dataset"]["center"] = not base["dataset"].get("center", True)
    values = copy.deepcopy(base)
    hypers = values["hyperparameters"]
    hypers["learning_rate"]["init"] = hypers["learning_rate"]["init"] / 2
    if "momentum" in hypers:
        hypers["momentum"]["init"] = round(hypers["momentum"]["init"] - 0.1, 6)
    return {"template": base, "other seed": seed, "other data": data, "other values": values}


def run(data_dir: str, cache: str, jobs: list[tuple[str, dict]]) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, data_dir, cache, json.dumps(jobs)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(template: str) -> dict:
    jobs = variants(template)
    with tempfile.TemporaryDirectory() as data_dir:
        no_cache = run(data_dir, "off", list(jobs.items()))
        rows = {
            "fresh, no cache": no_cache[0],
            **{f"warm, {r['job']}": r for r in no_cache[1:]},
            "fresh, empty cache (fills it)": run(data_dir, "", [("template", jobs["template"])])[0],
            "fresh, filled cache": run(data_dir, "", [("template", jobs["template"])])[0],
            "fresh, filled cache, other seed": run(data_dir, "", [("other seed", jobs["other seed"])])[0],
        }
        entries = sorted(p.name for p in (Path(data_dir) / "jax-cache").iterdir())
    for row in rows.values():
        same = next(r for r in no_cache if r["job"] == row["job"])
        assert (row["objective"], row["hypergrad_norm"]) == (same["objective"], same["hypergrad_norm"]), (
            f"{template}: {row['job']} gave another result on another run: {row} vs {same}"
        )
    return {"rows": rows, "cache_entries": len(entries)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--template", action="append", help="default: lr-schedule-digits, lr-schedule-mnist")
    parser.add_argument("--out", default="docs/figures/compile_cache.json")
    args = parser.parse_args()
    templates = args.template or ["lr-schedule-digits", "lr-schedule-mnist"]
    results = {}
    for template in templates:
        results[template] = measure(template)
        print(f"\n{template}: seconds from building the problem to the end of the first meta-iteration")
        print(f"{'':34} {'build':>7} {'first meta-iter':>16} {'total':>7} {'worker start':>13}")
        for name, r in results[template]["rows"].items():
            target = TARGET_WARM_S if name.startswith("warm") else None
            if name == "fresh, filled cache, other seed":
                target = TARGET_FRESH_S
            mark = ""
            if target is not None:
                mark = f" (target <= {target:.0f} s: {'met' if r['start_s'] <= target else 'MISSED'})"
            first = r["first_meta_iteration_s"]
            prepare = f"{r['worker_prepare_s']:13.2f}" if not name.startswith("warm") else f"{'':13}"
            print(f"{name:34} {r['build_s']:7.2f} {first:16.2f} {r['start_s']:7.2f} {prepare}{mark}")
        entries = results[template]["cache_entries"]
        print(f"{entries} cache entries; every job's result identical wherever it ran")
    payload = {
        "templates": results,
        "targets_s": {"warm": TARGET_WARM_S, "fresh_filled_cache": TARGET_FRESH_S},
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
