"""Run the fault-injection and bad-input/security suites and write docs/RELIABILITY.md from what
they observed.

Usage (from the repository root; PostgreSQL and Redis as for ``make test``)::

    .venv/bin/python benchmarks/reliability.py [--out docs/RELIABILITY.md]

It runs ``pytest tests/reliability tests/security`` with ``REVTUNE_RELIABILITY_REPORT`` pointing at
a scratch file: each fault test appends what it injected and what it saw there. The page gets
that table, then every test of both suites with its outcome and duration (from pytest's JUnit XML),
so nothing on it is typed by hand. The "Resources" section is computed here from the server's
default settings and `hypercore.budget`, the estimate the API refuses jobs by. The fragments
``docs/reliability/deadlines.md`` (what each deadline does) and ``docs/reliability/inputs_security.md``
(what the bad-input and security tests try) are included as they stand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["tests/reliability", "tests/security"]


def run_suites(report: Path, junit: Path) -> int:
    env = dict(os.environ, REVTUNE_RELIABILITY_REPORT=str(report), CI=os.environ.get("CI", "true"))
    command = [sys.executable, "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def test_rows(junit: Path) -> list[tuple[str, str, float]]:
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "FAILED"
            elif child.tag == "skipped":
                outcome = "skipped"
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        rows.append((name, outcome, float(case.get("time", 0))))
    return rows


def _gib(n: float) -> str:
    from hypercore.budget import human_bytes

    return human_bytes(n)


def _estimate(spec: dict) -> tuple[int, str]:
    """The estimate of ``spec`` on its built-in dataset, and what a default server answers."""
    from hypercore import budget, rules
    from jobs.spec import SpecError, validate_spec

    total = budget.peak_bytes(spec, rules.dataset_shape(spec)).total
    try:
        validate_spec(spec)
        return total, "accepted"
    except SpecError as e:
        first = e.errors[0]
        return total, f"422 on `{'.'.join(map(str, first['loc']))}`"


def resources() -> list[str]:
    """What one request may cost a default server, computed from its settings and estimates."""
    import copy

    from jobs import templates
    from jobs.repository.results import VALUE_BYTES, snapshot_interval
    from jobs.settings import Settings

    settings = Settings()
    limits = settings.limits
    lines = [
        "## Resources",
        "",
        "What one valid request may cost a server on its default settings (`jobs/settings.py`; each is",
        "a `REVTUNE_*` variable). Computed by this script from `hypercore.budget.peak_bytes`, the",
        "estimate `POST /v1/jobs` refuses a job by, and the settings themselves.",
        "",
        f"A job's peak memory in a worker is estimated at submit and refused past "
        f"`REVTUNE_MAX_JOB_MEMORY_BYTES` = {_gib(limits.max_job_memory_bytes)} with a 422 naming the field "
        "that drives its largest part; a learned momentum is clamped to `hyperparameters.momentum.min` "
        "(0.1 by default) so that the information buffer the estimate counts is the one the engine "
        "allocates (`tests/jobs/test_memory_budget.py` checks both, and the estimate against XLA's "
        "allocation and a worker process's peak).",
        "",
        "| job | estimated peak in the worker | a default server |",
        "|---|---|---|",
    ]
    for name in templates.names():
        total, answer = _estimate(templates.get(name))
        lines.append(f"| template `{name}` | {_gib(total)} | {answer} |")
    wide = {
        "model": {"kind": "mlp", "hidden": [2048, 1800]},
        "dataset": {"name": "digits", "train": 1000, "valid": 400, "test": 397, "batch_size": 100},
        "training": {"steps": 1000},
        "hyperparameters": {"learning_rate": {"init": 0.1, "granularity": "layer_step", "learn": True}},
        "meta": {"iterations": 50},
    }
    for label, momentum in [
        ("the reproduced spec: mlp [2048, 1800] on digits, 1000 steps, momentum 0.01", {"init": 0.01}),
        ("the same at momentum 0.5", {"init": 0.5}),
        ("the same at momentum 0.9, learned (floor 0.1)", {"init": 0.9, "learn": True}),
        ("the same at momentum 0.9, learned, `min: 0.5`", {"init": 0.9, "learn": True, "min": 0.5}),
    ]:
        spec = copy.deepcopy(wide)
        spec["hyperparameters"]["momentum"] = momentum
        total, answer = _estimate(spec)
        lines.append(f"| {label} | {_gib(total)} | {answer} |")
    learned = limits.max_hyperparameters * VALUE_BYTES
    k = snapshot_interval(
        learned_bytes=learned,
        fixed_bytes=0,
        iterations=limits.max_meta_iterations,
        budget_bytes=settings.max_snapshot_bytes_per_job,
    )
    kept = -(-limits.max_meta_iterations // k)
    lines += [
        "",
        "| resource | bound (default) | past it |",
        "|---|---|---|",
        f"| attempts of a job whose worker died | `REVTUNE_MAX_ATTEMPTS` = {settings.max_attempts} | the job "
        'fails: "the worker died N times running this job" (a graceful hand-back does not count) |',
        f"| hyperparameter snapshots per job | `REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB` = "
        f"{_gib(settings.max_snapshot_bytes_per_job)} | fixed values stored once; learned ones every k-th "
        f"meta-iteration and the last: at the limits ({limits.max_hyperparameters:,} learned values, "
        f"{limits.max_meta_iterations} meta-iterations) k = {k}, {kept} snapshots, "
        f"{_gib(kept * learned)} instead of {_gib(limits.max_meta_iterations * learned)} |",
        f"| jobs kept per tenant | `REVTUNE_MAX_JOBS_PER_TENANT` = {settings.max_jobs_per_tenant} | "
        "409 naming the jobs to delete |",
        f"| uploaded bytes per tenant | `REVTUNE_MAX_DATASET_BYTES_PER_TENANT` = "
        f"{_gib(settings.max_dataset_bytes_per_tenant)} | 409 naming the largest datasets |",
        f"| an upload's file | `REVTUNE_MAX_UPLOAD_BYTES` = {_gib(settings.max_upload_bytes)} | 413 |",
        f"| an upload's arrays as their `.npy` headers declare them | `REVTUNE_MAX_UPLOAD_ARRAY_BYTES` = "
        f"{_gib(settings.max_upload_array_bytes)} | 422 naming the array, before any value is read; "
        "values are then checked in 1 MiB chunks, so validation's memory does not grow with the file |",
        f"| uploads validated at once per API process | `REVTUNE_UPLOAD_VALIDATIONS` = "
        f"{settings.upload_validations} | 503 with `Retry-After` after waiting "
        f"{settings.upload_validation_wait_s:g} s |",
    ]
    fragment = ROOT / "docs" / "reliability" / "deadlines.md"
    if fragment.exists():
        lines += ["", fragment.read_text().strip().replace("\n# ", "\n## ")]
    return lines


def render(faults: list[dict], tests: list[tuple[str, str, float]], seconds: float, code: int) -> str:
    lines = [
        "# Reliability",
        "",
        "What revtune was put through, and what survived. Everything on this page was produced by",
        "",
        "```sh",
        ".venv/bin/python benchmarks/reliability.py",
        "```",
        "",
        f"run on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}) on {time.strftime('%Y-%m-%d', time.gmtime())}; the suites took "
        f"{seconds / 60:.1f} minutes and pytest exited with {code}. CI runs the same tests in `make test`.",
        "",
        "## Faults injected",
        "",
        "Real processes throughout: uvicorn, `revtune worker` (Celery), redis-server and PostgreSQL, the",
        "last two private instances on free ports so that stopping them disturbs nothing else",
        "(`tests/reliability/conftest.py`). Results are compared bit for bit with uninterrupted runs.",
        "",
        "| fault | injected | outcome | measured |",
        "|---|---|---|---|",
    ]
    for row in faults:
        numbers = ", ".join(f"{k} {v}" for k, v in row["numbers"].items())
        lines.append(f"| {row['fault']} | {row['injected']} | {row['outcome']} | {numbers} |")
    if not faults:
        lines.append("| (no fault test recorded a result: see the test list below) | | | |")
    lines += ["", *resources()]
    fragment = ROOT / "docs" / "reliability" / "inputs_security.md"
    if fragment.exists():
        lines += ["", fragment.read_text().strip().replace("\n# ", "\n## ")]
    lines += ["", "## Every test run", "", "| test | outcome | seconds |", "|---|---|---|"]
    lines += [f"| `{name}` | {outcome} | {secs:.1f} |" for name, outcome, secs in tests]
    counts = {o: sum(1 for _, oc, _ in tests if oc == o) for o in ("passed", "FAILED", "skipped")}
    lines += ["", ", ".join(f"{n} {o.lower()}" for o, n in counts.items()) + ".", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "RELIABILITY.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        report, junit = Path(scratch) / "faults.jsonl", Path(scratch) / "junit.xml"
        report.touch()
        started = time.monotonic()
        code = run_suites(report, junit)
        seconds = time.monotonic() - started
        faults = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
        page = render(faults, test_rows(junit), seconds, code)
    Path(args.out).write_text(page)
    print(f"wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
