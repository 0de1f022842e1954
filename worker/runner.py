"""Run one job: claim it, build its hypercore problem, tune, persist every meta-iteration.

This is the only worker module that imports hypercore (and so JAX). `run_job` is four named steps of
a `JobRun`, each database write one `transaction` (commit, roll back on error, retried while the
database is unreachable):

- `JobRun.claim` claims the job (``queued -> running``); a job that is not claimable (finished,
  cancelled, or running with a live heartbeat elsewhere) is left alone, so a redelivered or
  duplicated message is harmless.
- `JobRun.build` builds its `Problem` (and the checkpoint it resumes from); `JobRun.check_inputs`
  warns the user of training inputs whose scale makes the hypergradients explode
  (`worker.health`).
- `JobRun.record`, the tuning callback: after meta-iteration ``k`` the step row ``k``, the
  hyperparameter snapshots after it, the checkpoint to resume at ``k + 1`` and the heartbeat are
  committed in ONE transaction (`jobs.repository.record_meta_iteration`, which stores the snapshots
  it is given: the fixed hyperparameters only after meta-iteration 0, the learned ones by
  `jobs.repository.results.snapshot_interval`'s rule, docs/API.md); a worker that dies loses
  at most the meta-iteration in flight, and its successor resumes from the last checkpoint with the
  same result (`hypercore.tune` is deterministic given the checkpoint). The same transaction updates
  the job's warnings (`worker.health`: diverged meta-iterations, hypergradient norms beyond a
  bound, the chaos guard's back-offs). It returns ``True`` (stop)
  when cancel was requested (the job ends ``cancelled``) or when the worker is shutting down (the
  job goes back to ``queued`` and is enqueued again, `JobRun.hand_back`).
- `JobRun.finish` writes the final status.

A heartbeat thread also beats between meta-iterations, so a long one is not mistaken for a dead
worker; the reaper (`worker.reaper`) re-queues jobs whose heartbeat went stale. A failure becomes
``failed`` with a message a user can act on (`_failure`); the traceback of an unexpected error goes
to the log only. Database outages (``OperationalError``) are retried with backoff instead of failing
the job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import tenacity
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from hypercore import plugins
from hypercore.arrays import DataError, dataset_from_npz, read_npz
from hypercore.families import PLUGIN_KIND
from hypercore.hyper import ConfigError, HyperValue
from hypercore.meta import MetaDivergedError
from hypercore.spec import problem_from_spec
from hypercore.tune import (
    Checkpoint,
    CheckpointError,
    Problem,
    Record,
    ReversalError,
    initial_hyperparameters,
    tune,
)
from jobs import repository
from jobs.db import session_factory
from jobs.models import Job
from jobs.repository.results import VALUE_BYTES, scored_rule, snapshot_interval, stores_learned
from jobs.settings import Settings, get_settings
from jobs.spec import built_model_problems
from jobs.states import Status
from worker import health
from worker.enqueue import EnqueueError, enqueue_job

log = logging.getLogger(__name__)


def configure_compilation_cache(settings: Settings) -> Path | None:
    """Point JAX's persistent compilation cache at ``settings.compilation_cache_dir`` (before the
    first job compiles): a job whose programs this host compiled before, in this worker or another
    one, a restart ago or not, loads them from disk instead of compiling again. A cached executable
    is the one that would be compiled, so results stay bit-identical. Returns the directory, or None
    when the cache is off."""
    import jax

    folder = settings.compilation_cache_dir
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_compilation_cache_max_size", settings.compilation_cache_max_bytes)
    # Every job's programs, however quick to compile: a worker compiles per job shape, and the
    # small ones add up on a busy queue.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    log.info("compiled programs are cached in %s", folder)
    return folder


def prepare_engine() -> None:
    """Load the engine's CPU kernels and run their check (`hypercore.prepare_kernels`) at the worker's
    start, after `configure_compilation_cache` (the check's program is cached too), so a fresh
    worker's first job does not wait for them."""
    import hypercore

    started = time.perf_counter()
    used = hypercore.prepare_kernels()
    log.info(
        "engine ready in %.1f s (fused CPU kernels: %s)",
        time.perf_counter() - started,
        "on" if used else "off",
    )


T = TypeVar("T")
Sessions = Callable[[], Session]

# Set when the worker process starts a warm shutdown (SIGTERM, Ctrl-C): the running job stops after
# its current meta-iteration and is handed back instead of holding up the shutdown until it ends.
shutting_down = threading.Event()

_RETRY_DELAYS_S = (0.5, 1, 2, 4, 8, 15, 30, 30, 30, 30)


class JobInputError(Exception):
    """The job cannot run as specified; the message (leading with the spec field) is shown to the user."""


# ---- the unit of work ----------------------------------------------------------------------------


def retryable(e: BaseException) -> bool:
    """Whether ``e`` is the database being unreachable (``OperationalError``, or any DBAPI error
    whose connection was invalidated), which waiting may cure; anything else is a bug or a conflict."""
    return isinstance(e, OperationalError) or (isinstance(e, DBAPIError) and e.connection_invalidated)


def with_db_retry(attempt: Callable[[], T], what: str, delays_s=_RETRY_DELAYS_S) -> T:
    """Run ``attempt`` (one transaction), retrying with backoff while the database is unreachable.

    Only `retryable` errors are retried, after each delay of ``delays_s`` in turn; anything else
    propagates at once. After the last delay the error propagates: the job stays ``running`` without
    heartbeat, and the reaper hands it to another worker once the database is back.
    """

    def warn(state: tenacity.RetryCallState) -> None:
        e = state.outcome.exception()
        log.warning(
            "database unavailable while %s (%s); retrying in %s s", what, e.orig, state.upcoming_sleep
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retryable),
        stop=tenacity.stop_after_attempt(len(delays_s) + 1),
        # (tenacity asks for the wait before it checks the stop: none after the last attempt)
        wait=lambda state: delays_s[state.attempt_number - 1] if state.attempt_number <= len(delays_s) else 0,
        before_sleep=warn,
        sleep=time.sleep,
        reraise=True,
    )
    return retrying(attempt)


@contextmanager
def unit_of_work(sessions: Sessions) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back (and the error re-raised) when
    it raises."""
    with sessions() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()


def transaction(sessions: Sessions, work: Callable[[Session], T], what: str, delays_s=_RETRY_DELAYS_S) -> T:
    """``work(session)`` in a `unit_of_work`, run again in a fresh one (`with_db_retry`) while the
    database is unreachable; ``what`` says in the log what was being done."""

    def once() -> T:
        with unit_of_work(sessions) as session:
            return work(session)

    return with_db_retry(once, what, delays_s)


# ---- building the problem ------------------------------------------------------------------------


def load_dataset(spec_dataset: dict, settings: Settings, seed: int = 0):
    """The hypercore `Dataset` of an uploaded ``.npz`` (DESIGN.md: ``X``/``y`` split by the spec's
    counts, or ``X_train``/``y_train``/``X_valid``/``y_valid`` and optional ``X_test``/``y_test``;
    with task ids, ``task`` or ``task_<split>``, a multi-task one); an X/y upload's rows shuffled by
    the spec's ``seed`` first when the stored spec says ``shuffle: true``. The section's
    ``label_noise`` is applied here, by the same reader (`dataset_from_npz` passes it to
    ``from_arrays``/``from_splits``), and an upload's ``noisy`` mask carried to ``Dataset.noisy``: the
    engine takes the loaded dataset as given."""
    dataset_id = spec_dataset["id"]
    path = settings.dataset_path(dataset_id)
    if not path.is_file():
        raise JobInputError(f"dataset.id: dataset {dataset_id!r} is no longer on the server (deleted?)")
    try:
        return dataset_from_npz(read_npz(path), spec_dataset, seed=seed)
    except DataError as e:
        if e.field.startswith("dataset"):  # the spec's counts
            raise JobInputError(str(e)) from e
        # The arrays come from the upload, not the spec: say which upload.
        raise JobInputError(f"dataset.id: the uploaded dataset {dataset_id!r} is unusable: {e}") from e


# The model plugins this worker process loaded at start-up (`load_plugins`), by name.
loaded_plugins: dict[str, plugins.ModelPlugin] = {}


def load_plugins(settings: Settings) -> dict[str, plugins.ModelPlugin]:
    """Load the installed plugins ``REVTUNE_MODEL_PLUGINS`` enables (`hypercore.plugins.load`) as this
    process's `loaded_plugins`; `hypercore.plugins.PluginError` names one that is missing or malformed."""
    loaded_plugins.clear()
    loaded_plugins.update(plugins.load(plugins.enabled_names(settings.model_plugins)))
    return loaded_plugins


def _plugin_gone(name: str) -> JobInputError:
    return JobInputError(
        f"model.name: no worker offers the model plugin {name!r} any more (the workers' "
        "REVTUNE_MODEL_PLUGINS, GET /v1/models); resubmit the job once one does"
    )


def _check_plugin_sizes(spec: dict, problem: Problem, settings: Settings) -> None:
    """A plugin model's weights, hyperparameters and memory against the server's limits, which the
    API could not count without the model (`jobs.spec.model_size_problems`)."""
    found = built_model_problems(spec, settings.limits, problem)
    if found:
        loc, message = found[0]
        raise JobInputError(f"{'.'.join(map(str, loc))}: {message}")


# The last few problems built, by spec: a resumed or resubmitted job reuses its problem (its dataset
# and device inputs) as it is. A job that differs only in seed, data or hyperparameter values builds
# a new problem but compiles nothing: `hypercore.tune` shares compiled programs by structure.
_PROBLEMS: OrderedDict[str, Problem] = OrderedDict()
_PROBLEM_CACHE_SIZE = 2


def build_problem(spec: dict, settings: Settings) -> Problem:
    """The job's `Problem`; a spec hypercore refuses raises `JobInputError` naming the field."""
    ds_spec = spec.get("dataset") or {}
    uploaded = ds_spec.get("id") is not None
    model = spec.get("model") or {}
    if model.get("kind") == PLUGIN_KIND and model.get("name") not in loaded_plugins:
        raise _plugin_gone(model.get("name"))
    # Neither the name nor meta.iterations changes the compiled programs (`tune` takes the
    # iterations as an argument): a continued job (more meta-iterations) reuses its problem.
    meta = {k: v for k, v in (spec.get("meta") or {}).items() if k != "iterations"}
    key = json.dumps({**{k: v for k, v in spec.items() if k != "name"}, "meta": meta}, sort_keys=True)
    problem = _PROBLEMS.get(key)
    if problem is None or (uploaded and not settings.dataset_path(ds_spec["id"]).is_file()):
        try:
            dataset = load_dataset(ds_spec, settings, spec.get("seed", 0)) if uploaded else None
            problem = problem_from_spec(spec, dataset=dataset, plugins=loaded_plugins)
        except ConfigError as e:
            raise JobInputError(str(e)) from e
    if model.get("kind") == PLUGIN_KIND:  # every job, a reused problem's too: its meta.iterations
        _check_plugin_sizes(spec, problem, settings)  # count, and so may this worker's limits
    _PROBLEMS[key] = problem
    _PROBLEMS.move_to_end(key)
    while len(_PROBLEMS) > _PROBLEM_CACHE_SIZE:
        _PROBLEMS.popitem(last=False)
    return problem


def resumable(checkpoint: Checkpoint, problem: Problem) -> Checkpoint:
    """The checkpoint with its learned hyperparameters in the problem's order.

    `hypercore.tune` writes them in JAX's pytree order (sorted keys) once the meta-optimiser has
    updated them, but checks a resumed checkpoint against the problem's own order; the values are
    keyed by name, so putting them in that order changes nothing else. Key sets that differ are
    left for `tune` to refuse.
    """
    order = list(initial_hyperparameters(problem))
    if sorted(order) != sorted(checkpoint.learned) or order == list(checkpoint.learned):
        return checkpoint
    return dataclasses.replace(
        checkpoint,
        learned={k: checkpoint.learned[k] for k in order},
        prev_learned={k: checkpoint.prev_learned[k] for k in order},
    )


# ---- running a job -------------------------------------------------------------------------------


class _Heartbeat(threading.Thread):
    """Beats every ``interval_s`` while the job runs (``with`` block); stops when the block ends. A
    failed beat is only logged: the next one, or the next meta-iteration's commit, tries again."""

    def __init__(self, sessions: Sessions, job_id: str, claim: repository.Claim, interval_s: float):
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.sessions, self.job_id, self.claim, self.interval_s = sessions, job_id, claim, interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                with unit_of_work(self.sessions) as session:
                    held = repository.heartbeat(session, self.job_id, self.claim)
                if not held:
                    return  # the next record_meta_iteration raises ClaimLost and ends the run
            except DBAPIError as e:
                log.warning("heartbeat of job %s failed: %s", self.job_id, e.orig)

    def __enter__(self) -> _Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop_event.set()
        self.join()


def _snapshots(
    hyperparameters: Mapping[str, HyperValue], *, fixed: bool = True, learned: bool = True
) -> dict[str, dict]:
    """``hyperparameters`` (a `Record`'s, after its meta-iteration) as
    `repository.record_meta_iteration` takes them (and stores: all it is given): the ``fixed`` ones,
    the ``learned`` ones, or both."""
    return {
        name: {"values": value.values, "axes": value.axes, "labels": value.labels, "learned": value.learned}
        for name, value in hyperparameters.items()
        if (learned if value.learned else fixed)
    }


def _snapshot_interval(record: Record, iterations: int, budget_bytes: int | None) -> int:
    """`jobs.repository.results.snapshot_interval` for this job's hyperparameters (their sizes
    never change from one meta-iteration to the next). Besides the grid, a job keeps the initial
    values (at meta_iter 0) and, off the grid, the best-scoring ones: two more learned snapshots,
    counted with the fixed ones."""
    sizes = {True: 0, False: 0}
    for value in record.hyperparameters.values():
        sizes[bool(value.learned)] += int(np.size(value.values)) * VALUE_BYTES
    return snapshot_interval(
        learned_bytes=sizes[True],
        fixed_bytes=sizes[False] + 2 * sizes[True],
        iterations=iterations,
        budget_bytes=budget_bytes,
    )


# What a job whose training diverged should change first when its inputs are not scaled.
_SCALE_FIRST = "standardise X per feature first (see the job's unscaled_inputs warning)"


def _failure(job_id: str, e: Exception, checkpoint_trouble: str, *, unscaled: bool = False) -> str:
    """The error a job that failed on ``e`` shows its user (``unscaled``: its inputs drew the
    ``unscaled_inputs`` warning). Call it in the ``except`` arm: a checkpoint error
    (``checkpoint_trouble`` says which) and an unexpected error go to the log with their traceback."""
    if isinstance(e, MetaDivergedError):
        fields = "hyperparameters.learning_rate.init, meta.learning_rate"
        return f"the meta-optimisation diverged: {e} ({fields}){'; ' + _SCALE_FIRST if unscaled else ''}"
    if isinstance(e, ReversalError):
        return f"exact reversal failed: {e}"
    if isinstance(e, CheckpointError):
        log.exception("job %s: %s", job_id, checkpoint_trouble)
        return f"the job's checkpoint cannot be resumed ({e}); resubmit the spec"
    if isinstance(e, (ConfigError, JobInputError)):
        return str(e)
    log.exception("job %s failed unexpectedly", job_id)
    return f"internal error ({type(e).__name__}: {e}); the worker log has the details"


@dataclasses.dataclass
class JobRun:
    """This worker's run of one job, from its claim to its final status, and what its
    meta-iterations told so far."""

    job_id: str
    claim: repository.Claim
    sessions: Sessions
    # Why the run stopped early: the status it goes to, CANCELLED (cancel requested) or QUEUED (the
    # worker is shutting down); None while it runs, and when it ran to its end.
    stop: Status | None = None
    nonfinite: int = 0  # meta-iterations whose objective was not finite
    backoffs: int = 0  # times the chaos guard backed off
    finite: bool = False  # whether a meta-iteration of this run had a finite objective
    unscaled: bool = False  # whether the training inputs drew the unscaled_inputs warning
    guard_backoff: float = 0.5  # the factor a chaos-guard back-off multiplies the meta step size by
    # The snapshot rule (docs/API.md, "Hyperparameters"): the job's meta.iterations, the
    # REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB budget (None: every meta-iteration) and, once the first
    # record shows the sizes, the interval k of the learned snapshots.
    iterations: int = 0
    snapshot_budget_bytes: int | None = None
    snapshot_every: int | None = None

    @classmethod
    def claim_job(cls, job_id: str, settings: Settings, sessions: Sessions) -> JobRun | None:
        """Step 1, claim: take the job (``queued -> running``); None if it is not claimable."""
        worker_name = f"{socket.gethostname()}:{threading.get_native_id()}"
        claim = transaction(
            sessions,
            lambda session: repository.claim_job(
                session,
                job_id,
                worker_name,
                heartbeat_timeout_s=settings.heartbeat_timeout_s,
                max_deaths=settings.max_attempts,
            ),
            f"claiming job {job_id}",
        )
        if claim is None:
            return None
        iterations = int((claim.spec.get("meta") or {}).get("iterations") or 0)
        return cls(
            job_id,
            claim,
            sessions,
            iterations=iterations,
            snapshot_budget_bytes=settings.max_snapshot_bytes_per_job,
        )

    def build(self, settings: Settings) -> tuple[Problem, Checkpoint | None]:
        """Step 2, build: the job's `Problem` and the checkpoint to resume from (None: start fresh).
        Raises `JobInputError` or `CheckpointError`."""
        problem = build_problem(self.claim.spec, settings)
        self.guard_backoff = problem.meta.guard.backoff
        stored = self.claim.checkpoint
        checkpoint = None if stored is None else resumable(Checkpoint.from_bytes(stored), problem)
        return problem, checkpoint

    def check_inputs(self, problem: Problem) -> None:
        """Step 2b: warn the user when the training inputs' scale makes the first hypergradients
        explode (`worker.health.unscaled_inputs`); the job runs anyway."""
        warning = health.unscaled_inputs(problem.dataset.X_train)
        if warning is None:
            return
        self.unscaled = True
        transaction(
            self.sessions,
            lambda session: self._warn(session, [warning]),
            f"warning job {self.job_id} of its inputs",
        )

    def _warn(self, session: Session, warnings: list[health.JobWarning]) -> None:
        for warning in warnings:
            repository.add_warning(session, self.job_id, self.claim, **warning._asdict())

    def record(self, record: Record) -> bool:
        """Step 3, record (the tuning callback): commit the meta-iteration; True to stop the run."""
        self.backoffs += len(record.events)
        if math.isfinite(record.objective):
            self.finite = True
        else:
            self.nonfinite += 1
        if self.snapshot_every is None:
            self.snapshot_every = _snapshot_interval(record, self.iterations, self.snapshot_budget_bytes)
        k = record.meta_iter
        on_grid = stores_learned(k + 1, self.snapshot_every, self.iterations)
        # The values this meta-iteration trained with (and its step scores): stored at its own
        # meta_iter when it is the first (the initial values) or the best so far off the snapshot
        # grid, so that `which=best` always has its values (docs/API.md, "Export").
        scored = record.trained_with

        def write(session: Session) -> bool:
            # Off the grid, the learned ones are still stored when this is the job's last recorded
            # meta-iteration because it is being cancelled (record_meta_iteration answers with the
            # same cancel flag: `_cancel_requested` holds the job's row until the commit).
            learned = on_grid or self._cancel_requested(session)
            # The values it trained with: meta-iteration 0's, and a new best's off the grid.
            before, best_at = session.execute(
                select(Job.best_objective, Job.best_meta_iter).where(Job.id == self.job_id)
            ).one()
            which, drop = scored_rule(
                k, record.objective, before, best_at, self.snapshot_every, self.iterations
            )
            keep = None if which is None else _snapshots(scored, fixed=which == "all")
            cancel = repository.record_meta_iteration(
                session,
                self.job_id,
                self.claim,
                step=record.step(),
                hyperparameters=_snapshots(record.hyperparameters, fixed=False, learned=learned),
                checkpoint=record.checkpoint.to_bytes(),
                scored=keep,
                drop=drop,
            )
            tally = repository.tally_steps(session, self.job_id, hypergrad_bound=health.MAX_HYPERGRAD_NORM)
            self._warn(session, health.meta_iteration_warnings(record, tally, self.guard_backoff))
            return cancel

        cancel_requested = transaction(
            self.sessions, write, f"recording meta-iteration {record.meta_iter} of job {self.job_id}"
        )
        if cancel_requested:
            self.stop = Status.CANCELLED
        elif shutting_down.is_set():
            self.stop = Status.QUEUED
        return self.stop is not None

    def _cancel_requested(self, session: Session) -> bool:
        """Whether cancel was requested, read after a heartbeat in the caller's transaction: its
        UPDATE takes the job's row (PostgreSQL) or the database's write lock (SQLite) until the
        commit, so a cancel lands before this read or after the commit, never in between."""
        repository.heartbeat(session, self.job_id, self.claim)  # a lost claim: record raises ClaimLost
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))

    def finish(self, status: Status, error: str | None = None) -> str | None:
        """Step 4, finish: end the job ``status`` (with ``error`` for the user); returns the status,
        or None when the job is no longer this worker's."""
        held = transaction(
            self.sessions,
            lambda session: repository.finish_job(
                session, self.job_id, self.claim, status.value, error=error
            ),
            f"finishing job {self.job_id}",
        )
        if not held:
            log.warning(
                "job %s was re-queued while this worker ran it; its result is not recorded", self.job_id
            )
            return None
        return status.value

    def plugin_elsewhere(self, settings: Settings) -> bool:
        """Whether the job's model is a plugin this worker lacks that a live worker offers (a message
        sent to `worker.app.QUEUE` while the database could not say the queue): hand it back, to be
        enqueued on that plugin's queue. Without such a worker the job runs here and fails, saying so."""
        model = self.claim.spec.get("model") or {}
        if model.get("kind") != PLUGIN_KIND or model.get("name") in loaded_plugins:
            return False
        return transaction(
            self.sessions,
            lambda session: (
                repository.offered_plugin(session, model.get("name"), live_within_s=settings.plugin_live_s)
                is not None
            ),
            f"looking for model plugin {model.get('name')!r}",
        )

    def hand_back(
        self, enqueue: Callable[[str], None], why: str = "the worker is shutting down"
    ) -> str | None:
        """Instead of finishing: put the job back in the queue (``why``: the worker is shutting down)
        and enqueue it; returns ``queued``, or None when the job was no longer this worker's to hand
        back."""
        if not transaction(
            self.sessions,
            lambda session: repository.requeue(session, self.job_id),
            f"handing back job {self.job_id}",
        ):
            return None
        try:
            enqueue(self.job_id)
        except EnqueueError as e:
            log.warning("%s; the reaper will enqueue it", e)
        log.info("job %s handed back to the queue: %s", self.job_id, why)
        return Status.QUEUED.value

    def ended(self) -> tuple[Status, str | None]:
        """The status (and error) of a run that `tune` ended without an error."""
        if self.stop is None and not self.finite and not self._had_finite_objective():
            # Every meta-iteration's training blew up (and the guard, if on, could not bring it back
            # before the run ended): a result with nothing in it is a failure the user must hear about.
            return Status.FAILED, (
                f"training diverged in all {self.nonfinite} meta-iterations run (the objective was never "
                f"finite; the chaos guard backed off {self.backoffs} times): "
                + (f"{_SCALE_FIRST}, then " if self.unscaled else "")
                + "lower hyperparameters.learning_rate.init, or raise meta.iterations to let the guard "
                "recover"
            )
        return self.stop or Status.SUCCEEDED, None

    def _had_finite_objective(self) -> bool:
        """Whether an earlier run of this job (before a resume) recorded a finite objective."""

        def read(session: Session) -> bool:
            job = session.get(Job, self.job_id)
            return job is not None and job.best_objective is not None

        return transaction(self.sessions, read, f"reading job {self.job_id}")


def _pass_on(job_id: str, enqueue: Callable[[str], None]) -> None:
    """A worker that is shutting down starts no job: the job stays ``queued`` and its message is
    sent again, for another worker (or this one's successor), and this one is acknowledged.

    Celery's consumer receives once more after a warm shutdown began (its loop drains the broker in
    a ``finally`` around the check that stops it), and what comes then is typically the job this
    worker has just handed back (`JobRun.hand_back`): claiming it would compile the job and run a
    meta-iteration before the process could exit."""
    try:
        enqueue(job_id)
    except EnqueueError as e:
        log.warning("%s; the reaper will enqueue it", e)
    log.info("job %s not started and sent back to the queue: the worker is shutting down", job_id)
    return None


def run_job(
    job_id: str,
    *,
    settings: Settings | None = None,
    sessions: Sessions | None = None,
    enqueue: Callable[[str], None] | None = None,
) -> str | None:
    """Run the job to its end (or until cancel or shutdown); returns the status it was left in, or
    ``None`` when this worker did not (or no longer) hold the job. ``enqueue`` sends a handed-back
    job to the broker (default `worker.enqueue.enqueue_job`). A worker shutting down (`shutting_down`)
    claims nothing (`_pass_on`), and hands back a job it claimed before the tuning starts."""
    settings = settings or get_settings()
    sessions = sessions or session_factory(settings)
    enqueue = enqueue or (lambda job_id: enqueue_job(job_id, settings))

    if shutting_down.is_set():
        return _pass_on(job_id, enqueue)
    run = JobRun.claim_job(job_id, settings, sessions)
    if run is None:
        log.info("job %s is not claimable (finished, cancelled or running elsewhere); skipping", job_id)
        return None
    if run.plugin_elsewhere(settings):
        return run.hand_back(enqueue, "its model plugin is not loaded here, but another worker offers it")
    try:
        problem, checkpoint = run.build(settings)
    except (JobInputError, CheckpointError) as e:
        return run.finish(Status.FAILED, _failure(job_id, e, "unreadable checkpoint"))
    run.check_inputs(problem)
    if shutting_down.is_set():  # the shutdown began while the job was being claimed or built
        return run.hand_back(enqueue)

    with _Heartbeat(sessions, job_id, run.claim, settings.heartbeat_interval_s):
        try:
            tune(problem, callback=run.record, checkpoint=checkpoint, iterations=run.iterations)
        except repository.ClaimLost:
            log.warning("job %s was re-queued and claimed by another worker; abandoning this run", job_id)
            return None
        except DBAPIError:
            # Retries exhausted: leave the job `running`; its heartbeat goes stale and the reaper
            # re-queues it, to resume from the last committed checkpoint.
            raise
        except Exception as e:
            failure = _failure(job_id, e, "checkpoint does not fit its problem", unscaled=run.unscaled)
            return run.finish(Status.FAILED, failure)

    if run.stop == Status.QUEUED:
        return run.hand_back(enqueue)
    return run.finish(*run.ended())
