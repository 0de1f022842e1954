"""What the workers' persistent compilation cache (``REVTUNE_COMPILATION_CACHE``) saves: a template's
first meta-iteration (compilation included) in a fresh process, three times side by side: without
the cache, with an empty cache (the run that fills it), and with the filled cache, as a worker
restarted on the same host, or a second worker there, would run it. The three runs must give
bit-identical records (a cached executable is the one that would be compiled).

    .venv/bin/python benchmarks/compile_cache.py                          # lr-schedule-mnist
    .venv/bin/python benchmarks/compile_cache.py --template sharing-mnist5k-tasks

Prints a table and writes ``docs/figures/compile_cache.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, sys, time
started = time.perf_counter()
from jobs.settings import Settings
from worker.runner import configure_compilation_cache
configure_compilation_cache(Settings(data_dir=sys.argv[2], compilation_cache=sys.argv[3]))
import hypercore
from jobs.templates import get
imported = time.perf_counter()
problem = hypercore.problem_from_spec(get(sys.argv[1]))
built = time.perf_counter()
first = hypercore.tune(problem, iterations=1).records[0]
done = time.perf_counter()
print(json.dumps({"import_s": imported - started, "build_s": built - imported,
                  "first_meta_iteration_s": done - built, "objective": first.objective,
                  "hypergrad_norm": first.hypergrad_norm}))
"""


def run(template: str, data_dir: str, cache: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, template, data_dir, cache],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--template", default="lr-schedule-mnist")
    parser.add_argument("--out", default="docs/figures/compile_cache.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        rows = {
            "no cache": run(args.template, data_dir, "off"),
            "empty cache (fills it)": run(args.template, data_dir, ""),
            "filled cache": run(args.template, data_dir, ""),
        }
        entries = sorted(p.name for p in (Path(data_dir) / "jax-cache").iterdir())
    results = {(r["objective"], r["hypergrad_norm"]) for r in rows.values()}
    assert len(results) == 1, f"the cache changed the result: {rows}"
    print(f"{args.template}: first meta-iteration in a fresh process (compilation included)")
    print(f"{'':24} {'first meta-iteration s':>22} {'problem build s':>16}")
    for name, r in rows.items():
        print(f"{name:24} {r['first_meta_iteration_s']:22.2f} {r['build_s']:16.2f}")
    ratio = rows["no cache"]["first_meta_iteration_s"] / rows["filled cache"]["first_meta_iteration_s"]
    print(f"filled cache vs none: {ratio:.1f}x faster; {len(entries)} cache entries; results identical")
    payload = {
        "template": args.template,
        "runs": rows,
        "speedup": ratio,
        "cache_entries": entries,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
