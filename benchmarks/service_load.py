"""The revtune service under load: the production stack (uvicorn + ``revtune worker`` processes on
PostgreSQL and Redis), measured over HTTP from this process.

What it does, in order (every number comes from this run):

1. creates a database ``revtune_bench_<pid>`` on the PostgreSQL server (127.0.0.1:5432, user
   postgres, trust auth), applies the migrations with ``revtune db upgrade``, empties Redis
   database 15 (the broker; only db 15 is ever flushed) and creates one API key (auth on, as in
   docker-compose.yml);
2. bulk-inserts ``--jobs`` finished jobs (default 10,000: 80 % succeeded, 15 % failed, 5 %
   cancelled) with ``--steps-per-job`` steps each (default 10: 100,000 steps) straight into the
   database through the `jobs.models` SQLAlchemy models (multi-row INSERTs, not the API): they are
   terminal, so the workers' reaper never picks them up; prints ``EXPLAIN ANALYZE`` of the
   first-page listing query;
3. starts the API (``uvicorn api:create_app --factory``, one process, as the Dockerfile does) with
   ``REVTUNE_POST_RATE_LIMIT`` raised to 1,000,000 per minute (the default, 120 per tenant per
   minute, would cap the POST benchmark at 2 jobs/s) and ``REVTUNE_MAX_JOBS_PER_TENANT`` to
   1,000,000 (the default quota, 500, is below the bulk-inserted jobs), then measures with threads
   of httpx clients:
   - ``GET /v1/jobs/{id}`` latency (``--get-requests``, ``--clients`` concurrent);
   - ``GET /v1/jobs/{id}/steps`` latency (10 steps per page);
   - ``GET /v1/jobs`` listing: the first page (limit 50 and 200) repeated, with and without a status
     filter, and a full walk through every page with the cursor (limit 50 and 200);
   - ``POST /v1/jobs`` rate (``--posts`` submissions, ``--clients`` concurrent) with no worker
     running; the submitted jobs are then cancelled in the database and their broker messages
     dropped (flush of Redis db 15), so that no worker runs them later;
4. starts one worker (``revtune worker``, Celery solo pool), runs one warm-up job (the worker
   builds and JIT-compiles the job's problem once, then keeps it cached for identical specs), then
   measures the queue latency (``started_at - created_at``, both stamped by the service) of
   ``--latency-jobs`` tiny jobs submitted one at a time to the idle worker, and the throughput
   (jobs per hour) of ``--throughput-jobs`` tiny jobs submitted at once; then, for
   ``lr-schedule-digits`` and ``lr-schedule-mnist`` (one meta-iteration each), one job to warm the
   worker and ``--latency-jobs`` that differ from it only in their seed, one at a time: claim
   (``started_at``) to first step recorded, which must not compile anything;
5. starts a second worker, warms it up the same way (the API's GET latency is measured again
   while it compiles, i.e. with one CPU core busy), and measures the throughput with 2 workers.

Each HTTP measurement also reports the API process's CPU time per request (user + system, from
``/proc/<pid>/stat``), which depends less than the latencies on other load sharing the machine.
The tiny job is the ``lr-schedule-digits`` template with 10 training steps and 3 meta-iterations.
Every child process runs in its own process group and is stopped (SIGTERM, then SIGKILL) at the
end, also on error; the database is dropped and Redis db 15 flushed.

Run (about 4 minutes on 2 shared cores)::

    nice -n 19 .venv/bin/python benchmarks/service_load.py [--json results.json] [--log-dir DIR]

``--quick`` runs tiny sizes (200 jobs, 200 requests) to check the script in a minute or two.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import redis
from sqlalchemy import insert, select, update

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
REDIS_URL = "redis://127.0.0.1:6379/15"
REVTUNE_COMMAND = [sys.executable, "-c", "import sys; from revtune.cli import main; sys.exit(main())"]
TERMINAL = ("succeeded", "failed", "cancelled")
BULK_STATUS_WEIGHTS = {"succeeded": 0.80, "failed": 0.15, "cancelled": 0.05}


def tiny_spec(name: str = "bench-tiny") -> dict[str, Any]:
    """``lr-schedule-digits`` cut to 10 training steps and 3 meta-iterations."""
    from jobs import templates

    spec = templates.get("lr-schedule-digits")
    assert spec is not None
    spec["name"] = name
    spec["training"]["steps"] = 10
    spec["meta"]["iterations"] = 3
    return spec


# ---- statistics and printing ------------------------------------------------------------------


@dataclass
class Timing:
    """Latencies (seconds) of one measured operation, plus the wall time of the whole batch."""

    name: str
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    clients: int = 1
    note: str = ""
    api_cpu_s: float | None = None

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s) * 1000.0
        ok = len(lat)
        return {
            "name": self.name,
            "requests": ok + self.errors,
            "errors": self.errors,
            "clients": self.clients,
            "p50_ms": float(np.percentile(lat, 50)) if ok else None,
            "p99_ms": float(np.percentile(lat, 99)) if ok else None,
            "max_ms": float(lat.max()) if ok else None,
            "wall_s": self.wall_s,
            "per_s": ok / self.wall_s if self.wall_s > 0 else None,
            "api_cpu_ms": None if self.api_cpu_s is None or not ok else self.api_cpu_s / ok * 1000,
            "note": self.note,
        }


def print_table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (key, header, format); the first column is left-aligned, the others right."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(k) is None else format(row[k], fmt) for k, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for r in cells:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    sys.stdout.flush()


# ---- child processes --------------------------------------------------------------------------


class Children:
    """Child processes, each in its own session (process group); `close` stops them all."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append((name, proc, log_path))
        return proc, log_path

    def close(self, grace_s: float = 15.0) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # SIGKILL the whole group: also anything a child started and left behind.
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"warning: process {proc.pid} did not exit after SIGKILL", file=sys.stderr)

    def tail(self, lines: int = 30) -> str:
        out = []
        for name, _, path in self.procs:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name} ({path}):\n" + "\n".join(text))
        return "\n".join(out)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass


API_PID: int | None = None  # the uvicorn process, whose CPU time each measurement reads


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- database set-up --------------------------------------------------------------------------


def create_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return PG_DB_URL.format(name=name)


def drop_database(name: str, url: str) -> None:
    from jobs import db

    db.dispose(url)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bulk_insert(
    url: str, tenant_id: str, n_jobs: int, steps_per_job: int, seed: int = 0
) -> tuple[list[str], float]:
    """Insert ``n_jobs`` finished jobs with ``steps_per_job`` steps each; return (job ids, seconds)."""
    from jobs.db import session_factory
    from jobs.models import Job, Step, new_id

    rng = random.Random(seed)
    spec = tiny_spec("bulk")
    statuses = list(BULK_STATUS_WEIGHTS)
    weights = list(BULK_STATUS_WEIGHTS.values())
    start = datetime.now(UTC) - timedelta(days=30)
    t0 = time.perf_counter()
    ids: list[str] = []
    sessions = session_factory(url)
    batch = 1000
    for first in range(0, n_jobs, batch):
        jobs, steps = [], []
        for i in range(first, min(n_jobs, first + batch)):
            job_id = new_id()
            ids.append(job_id)
            created = start + timedelta(seconds=200 * i + rng.random())
            status = rng.choices(statuses, weights)[0]
            started = created + timedelta(seconds=1)
            finished = started + timedelta(seconds=30)
            jobs.append(
                {
                    "id": job_id,
                    "tenant_id": tenant_id,
                    "name": f"bulk-{i}",
                    "status": status,
                    "spec": {**spec, "name": f"bulk-{i}"},
                    "meta_iter": steps_per_job,
                    "meta_iterations": steps_per_job,
                    "best_objective": 0.5 + rng.random(),
                    "best_meta_iter": steps_per_job - 1,
                    "error": "the meta-optimisation diverged (bulk row)" if status == "failed" else None,
                    "cancel_requested": status == "cancelled",
                    "worker_id": "bulk:0",
                    "attempts": 1,
                    "heartbeat_at": finished,
                    "idempotency_key": None,
                    "created_at": created,
                    "enqueued_at": created,
                    "started_at": started,
                    "finished_at": finished,
                }
            )
            for k in range(steps_per_job):
                steps.append(
                    {
                        "job_id": job_id,
                        "meta_iter": k,
                        "objective": rng.random(),
                        "train_loss": rng.random(),
                        "valid_loss": rng.random(),
                        "valid_error": rng.random(),
                        "test_loss": rng.random(),
                        "test_error": rng.random(),
                        "hypergrad_norm": rng.random(),
                        "elapsed_s": 0.05,
                        "reversal_exact": True,
                        "created_at": started + timedelta(seconds=k),
                    }
                )
        with sessions() as session:
            session.execute(insert(Job), jobs)
            session.execute(insert(Step), steps)
            session.commit()
    with sessions() as session:
        session.connection().exec_driver_sql("ANALYZE")
        session.commit()
    return ids, time.perf_counter() - t0


def explain_listing(url: str, tenant_id: str, status: str | None, limit: int = 50) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the first-page query `jobs.repository.list_jobs` sends (same shape)."""
    from sqlalchemy.dialects import postgresql

    from jobs.db import session_factory
    from jobs.models import Job

    query = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Job.status == status)
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with session_factory(url)() as session:
        lines = [r[0] for r in session.connection().exec_driver_sql(f"EXPLAIN ANALYZE {sql}")]
    return {"status": status, "plan": lines}


# ---- load generation --------------------------------------------------------------------------


def concurrent_requests(
    name: str,
    base_url: str,
    headers: dict[str, str],
    n_requests: int,
    clients: int,
    request: Callable[[httpx.Client, int], httpx.Response],
    expect: tuple[int, ...] = (200,),
    stop: threading.Event | None = None,
) -> Timing:
    """``n_requests`` calls of ``request(client, i)`` spread over ``clients`` threads, each with its own
    keep-alive connection; latency per call, wall time of the whole batch."""
    timing = Timing(name, clients=clients)
    counter = itertools.count()
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    failures: list[str] = []

    def client_loop() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
            client.get("/healthz")  # open the connection before the clock starts
            barrier.wait()
            while (i := next(counter)) < n_requests and not (stop is not None and stop.is_set()):
                t0 = time.perf_counter()
                try:
                    response = request(client, i)
                    ok = response.status_code in expect
                    detail = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as e:
                    ok, detail = False, repr(e)
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        timing.latencies_s.append(dt)
                    else:
                        timing.errors += 1
                        failures.append(detail)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0, cpu0 = time.perf_counter(), process_cpu_s(API_PID)
    for t in threads:
        t.join()
    timing.wall_s = time.perf_counter() - t0
    cpu1 = process_cpu_s(API_PID)
    timing.api_cpu_s = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    if failures:
        print(f"  {name}: {len(failures)} failed requests, first: {failures[0]}", file=sys.stderr)
    return timing


def walk_pages(name: str, client: httpx.Client, params: dict[str, Any]) -> tuple[Timing, int, int]:
    """Follow ``next_cursor`` through every page; return (timing per page, pages, jobs seen)."""
    timing = Timing(name)
    cursor, pages, seen = None, 0, 0
    t_start, cpu0 = time.perf_counter(), process_cpu_s(API_PID)
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        t0 = time.perf_counter()
        response = client.get("/v1/jobs", params=query)
        timing.latencies_s.append(time.perf_counter() - t0)
        response.raise_for_status()
        body = response.json()
        pages += 1
        seen += len(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    timing.wall_s = time.perf_counter() - t_start
    cpu1 = process_cpu_s(API_PID)
    timing.api_cpu_s = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return timing, pages, seen


# ---- the benchmark ----------------------------------------------------------------------------


@dataclass
class Service:
    base_url: str
    headers: dict[str, str]
    db_url: str
    env: dict[str, str]
    children: Children

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60)

    def rows(self, job_ids: list[str]) -> list[Any]:
        from jobs.db import session_factory
        from jobs.models import Job

        with session_factory(self.db_url)() as session:
            return list(session.scalars(select(Job).where(Job.id.in_(job_ids))))

    def wait_terminal(self, job_ids: list[str], timeout_s: float) -> list[Any]:
        def done():
            rows = self.rows(job_ids)
            return rows if all(r.status in TERMINAL for r in rows) and len(rows) == len(job_ids) else None

        rows = wait_for(done, timeout_s, f"{len(job_ids)} job(s) to finish", interval_s=0.05)
        failed = [r for r in rows if r.status != "succeeded"]
        if failed:
            raise RuntimeError(
                f"{len(failed)} job(s) did not succeed, e.g. {failed[0].status}: {failed[0].error}"
            )
        return rows

    def submit(self, client: httpx.Client, spec: dict[str, Any]) -> str:
        response = client.post("/v1/jobs", json=spec)
        if response.status_code != 201:
            raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text[:300]}")
        return response.json()["id"]

    def start_worker(self, name: str) -> float:
        """Start ``revtune worker``; return the seconds until Celery logged ``ready``."""
        t0 = time.perf_counter()
        proc, log = self.children.start(name, [*REVTUNE_COMMAND, "worker"], self.env)
        wait_for(
            lambda: proc.poll() is not None or " ready." in log.read_text(errors="replace"),
            300,
            f"{name} to be ready",
            interval_s=0.2,
        )
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.children.tail()}")
        return time.perf_counter() - t0


def run_api_phase(svc: Service, ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rng = random.Random(1)
    sample = [rng.choice(ids) for _ in range(args.get_requests)]

    get = concurrent_requests(
        "GET /v1/jobs/{id}",
        svc.base_url,
        svc.headers,
        args.get_requests,
        args.clients,
        lambda c, i: c.get(f"/v1/jobs/{sample[i]}"),
    )
    get1 = concurrent_requests(
        "GET /v1/jobs/{id} (1 client)",
        svc.base_url,
        svc.headers,
        args.get_requests // 4,
        1,
        lambda c, i: c.get(f"/v1/jobs/{sample[i]}"),
    )
    steps = concurrent_requests(
        "GET /v1/jobs/{id}/steps",
        svc.base_url,
        svc.headers,
        args.get_requests // 4,
        args.clients,
        lambda c, i: c.get(f"/v1/jobs/{sample[i]}/steps"),
    )
    results["get"] = [t.summary() for t in (get, get1, steps)]

    listing: list[dict[str, Any]] = []
    n_first = args.get_requests // 10
    for label, params in (
        ("first page, limit 50", {"limit": 50}),
        ("first page, limit 200", {"limit": 200}),
        ("first page, status=failed (15 %)", {"limit": 50, "status": "failed"}),
        ("first page, status=cancelled (5 %)", {"limit": 50, "status": "cancelled"}),
        ("first page, status=running (none)", {"limit": 50, "status": "running"}),
    ):
        t = concurrent_requests(
            f"GET /v1/jobs {label}",
            svc.base_url,
            svc.headers,
            n_first,
            args.clients,
            lambda c, i, p=params: c.get("/v1/jobs", params=p),
        )
        listing.append(t.summary())
    walks: list[dict[str, Any]] = []
    with svc.client() as client:
        for label, params in (
            ("all pages, limit 50", {"limit": 50}),
            ("all pages, limit 200", {"limit": 200}),
            ("all pages, status=failed, limit 50", {"limit": 50, "status": "failed"}),
        ):
            t, pages, seen = walk_pages(f"GET /v1/jobs {label}", client, params)
            row = t.summary()
            row.update(pages=pages, jobs=seen, jobs_per_s=seen / t.wall_s)
            walks.append(row)
    results["listing"] = listing
    results["walks"] = walks

    spec = tiny_spec("bench-post")
    post = concurrent_requests(
        "POST /v1/jobs",
        svc.base_url,
        svc.headers,
        args.posts,
        args.clients,
        lambda c, i: c.post("/v1/jobs", json=spec),
        expect=(201,),
    )
    post1 = concurrent_requests(
        "POST /v1/jobs (1 client)",
        svc.base_url,
        svc.headers,
        args.posts // 4,
        1,
        lambda c, i: c.post("/v1/jobs", json=spec),
        expect=(201,),
    )
    results["post"] = [t.summary() for t in (post, post1)]
    return results


def cancel_posted(svc: Service, broker: redis.Redis) -> int:
    """Drop the POST phase's broker messages and cancel its jobs, so no worker runs them."""
    from jobs.db import session_factory
    from jobs.models import Job, utcnow

    broker.flushdb()
    with session_factory(svc.db_url)() as session:
        result = session.execute(
            update(Job)
            .where(Job.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=utcnow())
        )
        session.commit()
        return result.rowcount


def warm_up(svc: Service, client: httpx.Client, known_workers: set[str]) -> tuple[str, float, float]:
    """Submit tiny jobs until one is run by a worker not in ``known_workers`` (so that it has built and
    compiled the tiny problem); return (its worker id, started - created, finished - started)."""
    for attempt in range(20):
        job_ids = [svc.submit(client, tiny_spec(f"warm-up-{attempt}-{k}")) for k in range(2)]
        rows = svc.wait_terminal(job_ids, 900)
        new = [r for r in rows if r.worker_id not in known_workers]
        if new:
            # The new worker's first job built and compiled the problem: the slowest of its jobs.
            row = max(new, key=lambda r: r.finished_at - r.started_at)
            return (
                row.worker_id,
                (row.started_at - row.created_at).total_seconds(),
                (row.finished_at - row.started_at).total_seconds(),
            )
    raise RuntimeError("no new worker took a warm-up job")


def queue_latency(svc: Service, client: httpx.Client, n: int) -> dict[str, Any]:
    """Submit ``n`` tiny jobs one at a time to an idle worker: started_at - created_at (service
    clocks) and the client-side time from the POST's reply until a GET shows it is no longer queued."""
    server, client_seen, runs = [], [], []
    for k in range(n):
        job_id = svc.submit(client, tiny_spec(f"latency-{k}"))
        t_posted = time.perf_counter()

        def left_queue(job_id: str = job_id) -> bool:
            return client.get(f"/v1/jobs/{job_id}").json()["status"] != "queued"

        wait_for(left_queue, 60, "the job to leave the queue", interval_s=0.005)
        client_seen.append(time.perf_counter() - t_posted)
        (row,) = svc.wait_terminal([job_id], 300)
        server.append((row.started_at - row.created_at).total_seconds())
        runs.append((row.finished_at - row.started_at).total_seconds())
        time.sleep(0.2)  # the worker is idle again (blocked on the broker) before the next one

    def pct(xs: list[float]) -> dict[str, float]:
        a = np.asarray(xs) * 1000
        return {
            "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()),
        }

    return {
        "jobs": n,
        "created_to_started": pct(server),
        "post_reply_to_get_not_queued": pct(client_seen),
        "started_to_finished": pct(runs),
    }


START_TEMPLATES = ("lr-schedule-digits", "lr-schedule-mnist")


def template_start(svc: Service, client: httpx.Client, template: str, n: int) -> dict[str, Any]:
    """A template's job (one meta-iteration) warms the idle worker; then ``n`` jobs that differ from
    it only in their seed, one at a time: ``started_at`` (the claim) to the ``created_at`` of the
    job's first step (its first meta-iteration recorded), both stamped by the worker. The compiled
    programs take the seed as an argument, so these jobs compile nothing."""
    from jobs import templates
    from jobs.db import session_factory
    from jobs.models import Step

    def spec(seed: int) -> dict[str, Any]:
        s = templates.get(template)
        assert s is not None
        s["name"], s["seed"] = f"start-{template}-{seed}", seed
        s["meta"]["iterations"] = 1
        return s

    svc.wait_terminal([svc.submit(client, spec(0))], 900)
    starts = []
    for seed in range(1, n + 1):
        job_id = svc.submit(client, spec(seed))
        (row,) = svc.wait_terminal([job_id], 300)
        with session_factory(svc.db_url)() as session:
            first = session.scalars(select(Step.created_at).where(Step.job_id == job_id, Step.meta_iter == 0))
            starts.append((first.one() - row.started_at).total_seconds())
        time.sleep(0.2)
    a = np.asarray(starts) * 1000
    return {
        "template": template,
        "jobs": n,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def throughput(svc: Service, client: httpx.Client, n: int, workers: int) -> dict[str, Any]:
    """Submit ``n`` tiny jobs back to back; jobs per hour = n / (last finished_at - first created_at)."""
    t0 = time.perf_counter()
    job_ids = [svc.submit(client, tiny_spec(f"throughput-{workers}w-{k}")) for k in range(n)]
    submit_s = time.perf_counter() - t0
    rows = svc.wait_terminal(job_ids, 1800)
    first = min(r.created_at for r in rows)
    last = max(r.finished_at for r in rows)
    makespan = (last - first).total_seconds()
    runs = np.asarray([(r.finished_at - r.started_at).total_seconds() for r in rows]) * 1000
    return {
        "workers": workers,
        "jobs": n,
        "submit_s": submit_s,
        "makespan_s": makespan,
        "jobs_per_hour": n / makespan * 3600,
        "run_p50_ms": float(np.percentile(runs, 50)),
        "run_p99_ms": float(np.percentile(runs, 99)),
        "distinct_workers": len({r.worker_id for r in rows}),
    }


def get_during(svc: Service, ids: list[str], n: int, clients: int, stop: threading.Event) -> Timing:
    """GET /v1/jobs/{id} latency while something else runs; stops early when ``stop`` is set."""
    rng = random.Random(2)
    sample = [rng.choice(ids) for _ in range(n)]

    def request(c: httpx.Client, i: int) -> httpx.Response:
        time.sleep(0.01)  # a polling client, not a flood: leave the compiling worker its core
        return c.get(f"/v1/jobs/{sample[i]}")

    return concurrent_requests(
        "GET /v1/jobs/{id} while a worker compiles", svc.base_url, svc.headers, n, clients, request, stop=stop
    )


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    rv = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_gib, 1),
        "load_avg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "postgresql": pg,
        "redis": rv,
    }


def main() -> int:
    global API_PID
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="bulk-inserted finished jobs")
    parser.add_argument("--steps-per-job", type=int, default=10)
    parser.add_argument("--get-requests", type=int, default=2000)
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (threads)")
    parser.add_argument("--latency-jobs", type=int, default=10)
    parser.add_argument("--throughput-jobs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--json", help="also write every result here")
    parser.add_argument(
        "--log-dir", help="keep the API and worker logs here (default: a temporary folder, removed)"
    )
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.get_requests, args.posts = 200, 200, 40
        args.latency_jobs, args.throughput_jobs = 3, 4

    # Import the service packages with the benchmark's URLs in place (jobs.settings reads them once).
    name = f"revtune_bench_{os.getpid()}"
    broker = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    if broker.dbsize():
        print(f"note: Redis db 15 held {broker.dbsize()} keys; flushing it (db 15 only)", file=sys.stderr)
    info = machine()
    print(f"machine: {info}")
    t_total = time.perf_counter()
    data_dir = Path(tempfile.mkdtemp(prefix="revtune-bench-"))
    log_dir = Path(args.log_dir) if args.log_dir else data_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    children = Children(log_dir)
    db_url = None
    results: dict[str, Any] = {"machine": info, "args": vars(args)}
    try:
        db_url = create_database(name)
        broker.flushdb()
        env = dict(os.environ)
        env.update(
            REVTUNE_DATABASE_URL=db_url,
            REVTUNE_BROKER_URL=REDIS_URL,
            REVTUNE_DATA_DIR=str(data_dir),
            REVTUNE_AUTH="on",
            REVTUNE_POST_RATE_LIMIT="1000000",
            # The bulk-inserted jobs and the POSTs are one tenant's: past the default quota of 500.
            REVTUNE_MAX_JOBS_PER_TENANT="1000000",
            JAX_PLATFORMS="cpu",
        )
        os.environ.update(
            {k: env[k] for k in ("REVTUNE_DATABASE_URL", "REVTUNE_BROKER_URL", "REVTUNE_DATA_DIR")}
        )
        upgrade = subprocess.run([*REVTUNE_COMMAND, "db", "upgrade"], env=env, capture_output=True, text=True)
        if upgrade.returncode != 0:
            raise RuntimeError(f"revtune db upgrade failed:\n{upgrade.stderr}")

        from jobs import repository
        from jobs.db import session_factory

        with session_factory(db_url)() as session:
            _, api_key = repository.create_api_key(session, "bench")
            tenant_id = repository.get_or_create_tenant(session, "bench").id
            session.commit()
        ids, insert_s = bulk_insert(db_url, tenant_id, args.jobs, args.steps_per_job)
        results["bulk_insert"] = {
            "jobs": args.jobs,
            "steps": args.jobs * args.steps_per_job,
            "seconds": insert_s,
        }
        results["plans"] = [explain_listing(db_url, tenant_id, st) for st in (None, "failed", "running")]
        for plan in results["plans"]:
            print(f"EXPLAIN ANALYZE first page, status={plan['status']}:")
            print("\n".join(f"    {line}" for line in plan["plan"]))
        print(f"bulk insert: {args.jobs} jobs + {args.jobs * args.steps_per_job} steps in {insert_s:.1f} s")

        port = free_port()
        api_cmd = [sys.executable, "-m", "uvicorn", "api:create_app", "--factory", "--port", str(port)]
        api_proc, _ = children.start("api", [*api_cmd, "--log-level", "warning"], env)
        base_url = f"http://127.0.0.1:{port}"
        API_PID = api_proc.pid

        def healthy() -> bool:
            if api_proc.poll() is not None:
                raise RuntimeError(f"the API exited:\n{children.tail()}")
            try:
                return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 120, "the API to answer /readyz", interval_s=0.2)
        svc = Service(base_url, {"Authorization": f"Bearer {api_key}"}, db_url, env, children)

        # ---- API only (no worker) ----
        results["load_avg"] = {"api_phase": os.getloadavg()}
        results.update(run_api_phase(svc, ids, args))
        results["post_cleanup_cancelled"] = cancel_posted(svc, broker)
        cols = [
            ("name", "request", ""),
            ("clients", "clients", "d"),
            ("requests", "n", "d"),
            ("errors", "errors", "d"),
            ("p50_ms", "p50 ms", ".1f"),
            ("p99_ms", "p99 ms", ".1f"),
            ("per_s", "req/s", ".0f"),
            ("api_cpu_ms", "API CPU ms/req", ".1f"),
        ]
        print_table("API, no worker running", results["get"] + results["listing"] + results["post"], cols)
        walk_cols = [
            ("name", "walk", ""),
            ("pages", "pages", "d"),
            ("jobs", "jobs", "d"),
            ("p50_ms", "p50 ms/page", ".1f"),
            ("p99_ms", "p99 ms/page", ".1f"),
            ("wall_s", "total s", ".2f"),
            ("api_cpu_ms", "API CPU ms/page", ".1f"),
        ]
        print_table("Listing every page with the cursor (1 client)", results["walks"], walk_cols)

        # ---- one worker ----
        results["load_avg"]["worker_phase"] = os.getloadavg()
        with svc.client() as client:
            ready_s = svc.start_worker("worker-1")
            t0 = time.perf_counter()
            worker_1, wait_1, run_1 = warm_up(svc, client, set())
            results["worker_1"] = {
                "ready_s": ready_s,
                "warm_up_wall_s": time.perf_counter() - t0,
                "cold_created_to_started_s": wait_1,
                "cold_job_run_s": run_1,
            }
            print(
                f"\nworker 1 ready in {ready_s:.1f} s; cold tiny job ran {run_1:.1f} s (build + JIT compile)"
            )
            results["queue_latency"] = queue_latency(svc, client, args.latency_jobs)
            results["template_start"] = [
                template_start(svc, client, template, args.latency_jobs) for template in START_TEMPLATES
            ]
            results["throughput"] = [throughput(svc, client, args.throughput_jobs, 1)]

            # ---- two workers (the second compiles while the API is polled) ----
            ready_s = svc.start_worker("worker-2")
            stop = threading.Event()
            during: list[Timing] = []
            poller = threading.Thread(
                target=lambda: during.append(get_during(svc, ids, args.get_requests, 2, stop)), daemon=True
            )
            poller.start()
            t0 = time.perf_counter()
            try:
                _, _, run_2 = warm_up(svc, client, {worker_1})
            finally:
                stop.set()
                poller.join()
            results["worker_2"] = {
                "ready_s": ready_s,
                "warm_up_wall_s": time.perf_counter() - t0,
                "cold_job_run_s": run_2,
            }
            results["get_while_compiling"] = during[0].summary()
            print(f"worker 2 ready in {ready_s:.1f} s; cold tiny job ran {run_2:.1f} s (build + JIT compile)")
            results["throughput"].append(throughput(svc, client, args.throughput_jobs, 2))

        ql = results["queue_latency"]
        print_table(
            f"Queue latency, idle warm worker ({ql['jobs']} jobs, one at a time)",
            [
                {"what": "created_at -> started_at (service clocks)", **ql["created_to_started"]},
                {"what": "POST reply -> GET not queued (client)", **ql["post_reply_to_get_not_queued"]},
                {"what": "started_at -> finished_at (tiny job, warm)", **ql["started_to_finished"]},
                *(
                    {"what": f"started_at -> first step, {t['template']} with another seed", **t}
                    for t in results["template_start"]
                ),
            ],
            [
                ("what", "measure", ""),
                ("p50_ms", "p50 ms", ".1f"),
                ("p99_ms", "p99 ms", ".1f"),
                ("max_ms", "max ms", ".1f"),
            ],
        )
        print_table(
            "Throughput of tiny jobs (warm workers)",
            results["throughput"],
            [
                ("workers", "workers", "d"),
                ("jobs", "jobs", "d"),
                ("makespan_s", "makespan s", ".2f"),
                ("jobs_per_hour", "jobs/hour", ".0f"),
                ("run_p50_ms", "run p50 ms", ".0f"),
                ("run_p99_ms", "run p99 ms", ".0f"),
                ("distinct_workers", "workers used", "d"),
            ],
        )
        print_table(
            "API while worker 2 builds and compiles its first job", [results["get_while_compiling"]], cols
        )
    except BaseException:
        print(children.tail(), file=sys.stderr)
        raise
    finally:
        children.close()
        if db_url is not None:
            drop_database(name, db_url)
        broker.flushdb()
        broker.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        total = time.perf_counter() - t_total
        results["total_s"] = total
        results.setdefault("load_avg", {})["end"] = os.getloadavg()
        print(f"load average (1, 5, 15 min) by phase: {results['load_avg']}")
        print(f"\ntotal {total:.0f} s; processes stopped, database {name} dropped, Redis db 15 flushed")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
