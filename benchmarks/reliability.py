"""Run the fault-injection and bad-input/security suites and write docs/RELIABILITY.md from what
they observed.

Usage (from the repository root; PostgreSQL and Redis as for ``make test``)::

    .venv/bin/python benchmarks/reliability.py [--out docs/RELIABILITY.md]

It runs ``pytest tests/reliability tests/security`` with ``REVTUNE_RELIABILITY_REPORT`` pointing at
a scratch file: each fault test appends what it injected and what it saw there. The page gets
that table, then every test of both suites with its outcome and duration (from pytest's JUnit XML),
so nothing on it is typed by hand. The fragment ``docs/reliability/inputs_security.md`` (what the
bad-input and security tests try) is included as it stands.
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
