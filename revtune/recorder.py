"""Recording a library run: `hypercore.tune` on your machine, its meta-iterations in the service.

:meth:`revtune.Client.record` returns a :class:`Recorder`. Pass it as ``tune``'s callback (or call
it with each ``Record`` of your own loop): each meta-iteration's step and hyperparameters go to the
service, which keeps them as a job of origin ``external``, shown by the API, the CLI and the dashboard
like any other. No worker runs it.

    >>> recorder = client.record("lr-schedule-laptop", spec)      # spec: what hypercore ran
    >>> with recorder:                                            # failed (with the error) if it raises
    ...     hypercore.tune(problem, callback=recorder)

- A cancel from the dashboard or ``POST /v1/jobs/{id}/cancel`` reaches the recorder with the next
  step (or heartbeat): it returns True, so ``tune`` stops, and the job ends ``cancelled``.
- After the last meta-iteration (``meta.iterations``) the job ends ``succeeded``; a ``with`` block
  that ends earlier without an error also finishes it ``succeeded``, one that raises ``failed``.
- A thread sends a heartbeat every ``heartbeat_s`` seconds; a recorder whose process dies leaves the
  job ``failed`` once the server's heartbeat timeout (60 s by default) has passed.
- The values a meta-iteration trained with (``Record.trained_with``) go along with the first one and
  with each new best objective, so that the job's export ``which="best"`` (and ``which=0``, the
  initial values) finds them, as for a worker's job.
- Resuming: ``tune(problem, checkpoint=saved, callback=client.record(name, spec, job_id=job_id))``
  continues the same job (a failed one runs again); meta-iterations it already holds are skipped, a
  gap is refused. ``idempotency_key=`` finds the job again without its id.

It speaks HTTP only (httpx, numpy for the arrays): importing it never imports JAX.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from revtune.client import Client, Job

log = logging.getLogger("revtune.recorder")

# The REST step fields (`hypercore.steps.STEP_FIELDS`; the client keeps its own copy: the import
# contract gives it httpx, not the engine's package).
_STEP_FIELDS = (
    "meta_iter",
    "objective",
    "train_loss",
    "valid_loss",
    "valid_error",
    "test_loss",
    "test_error",
    "hypergrad_norm",
    "elapsed_s",
    "reversal_exact",
)
_RETRYABLE = (None, 429, 503)  # unreachable, rate-limited, briefly unavailable


def _plain(value: Any) -> Any:
    """Labels as JSON: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _number(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    value = float(value)
    return value if np.isfinite(value) else None


def step_body(record: Any, *, fixed: bool, scored: bool = False) -> dict[str, Any]:
    """The ``POST /v1/jobs/{id}/steps`` body of one meta-iteration: a `hypercore.tune.Record` (or any
    object with its attributes). Values are float64 in natural units, exact (a JSON number is the
    float's shortest round-trip form), null where not finite; ``fixed`` hyperparameters are sent only
    when asked (the service keeps them from meta-iteration 0 only). ``scored``: also send the values
    it trained with (``record.trained_with``, where it has them) as ``scored``, which the service
    keeps at meta-iteration 0 and for a new best objective."""
    step = {field: getattr(record, field, None) for field in _STEP_FIELDS}
    body: dict[str, Any] = {k: _number(v) for k, v in step.items() if k != "meta_iter"}
    body["meta_iter"] = int(record.meta_iter)
    if body["reversal_exact"] is not None:
        body["reversal_exact"] = bool(step["reversal_exact"])
    body["hyperparameters"] = _hyperparameters(getattr(record, "hyperparameters", None), fixed=fixed)
    trained_with = getattr(record, "trained_with", None)
    if scored and trained_with:
        body["scored"] = _hyperparameters(trained_with, fixed=fixed)
    return body


def _hyperparameters(given: Mapping[str, Any] | None, *, fixed: bool) -> dict[str, Any]:
    """``{name: HyperValue}`` (or mappings with its keys) as the step body's JSON, the fixed ones
    only when asked."""
    hypers = {}
    for name, value in (given or {}).items():
        get = value.get if isinstance(value, Mapping) else lambda attr, v=value: getattr(v, attr)
        learned = bool(get("learned"))
        if not (learned or fixed):
            continue
        values = np.asarray(get("values"), dtype=np.float64)
        finite = np.isfinite(values)
        listed = values.tolist()
        if not finite.all():
            listed = np.where(finite, values, None).tolist()
        hypers[str(name)] = {
            "values": listed,
            "shape": list(values.shape),
            "axes": [str(a) for a in get("axes")],
            "labels": _plain(dict(get("labels") or {})),
            "learned": learned,
        }
    return hypers


class Recorder:
    """The callback that records a library run into the service (see the module docstring).

    ``job``: the job as last seen; ``recorded``: how many meta-iterations the service holds;
    ``cancel_requested``: the service asked the run to stop; ``finished``: the job has ended.
    ``retry_s``: how long a write is retried while the server is unreachable, rate-limits (429) or
    answers 503 (a step POST is idempotent, so a retry never duplicates it).
    """

    def __init__(self, client: Client, job: Job, *, heartbeat_s: float = 10.0, retry_s: float = 60.0) -> None:
        self.client, self.job = client, job
        self.recorded = int(job["meta_iter"])
        best = job.get("best") or {}
        self._best = best.get("objective")  # the best objective recorded: a lower one sends its values
        self.cancel_requested = False
        self.finished = False
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._beats = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name=f"revtune-recorder-{job['id']}", daemon=True
        )
        self._beats.start()

    @property
    def job_id(self) -> str:
        return str(self.job["id"])

    def __call__(self, record: Any) -> bool:
        """Record ``record`` (a `hypercore.tune.Record`); True when the run should stop (cancelled)."""
        if self.finished:
            status = self.job["status"]
            raise RuntimeError(f"job {self.job_id} is finished ({status}); nothing more is recorded")
        k = int(record.meta_iter)
        if k < self.recorded:  # resumed from an earlier checkpoint: the service has this one
            return self.cancel_requested
        objective = _number(getattr(record, "objective", None))
        best = objective is not None and (self._best is None or objective < self._best)
        body = step_body(record, fixed=k == 0, scored=k == 0 or best)
        reply = self._post(f"/v1/jobs/{self.job_id}/steps", body)
        if best:
            self._best = objective
        self.recorded = int(reply["meta_iter"])
        if reply["cancel_requested"]:
            self.cancel_requested = True
            self.finish("cancelled")
            return True
        if self.recorded >= int(self.job["meta_iterations"]):
            self.finish("succeeded")
        return False

    def finish(self, status: str = "succeeded", error: str | None = None) -> Job:
        """End the job ``succeeded``, ``failed`` (with ``error``) or ``cancelled``; stop the heartbeats."""
        self.close()
        body = {"status": status, "error": error}
        self.job = self._post(f"/v1/jobs/{self.job_id}/finish", body)
        self.finished = True
        return self.job

    def close(self) -> None:
        """Stop the heartbeats without finishing the job (the server fails it after its timeout, unless
        a new recorder resumes it)."""
        self._stop.set()
        if self._beats.is_alive() and threading.current_thread() is not self._beats:
            self._beats.join()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        if exc is None:
            self.finish("cancelled" if self.cancel_requested else "succeeded")
        else:
            self.finish("failed", error=f"the library run raised {exc_type.__name__}: {exc}"[:10_000])

    def _post(self, path: str, body: Any = None) -> Any:
        from revtune.client import RevtuneError

        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return self.client._request("POST", path, json=body).json()
            except RevtuneError as e:
                if e.status_code not in _RETRYABLE or time.monotonic() >= deadline:
                    raise
                time.sleep(min(max(e.retry_after or 1.0, 0.05), max(deadline - time.monotonic(), 0.05)))

    def _beat(self, period_s: float) -> None:
        from revtune.client import Conflict, RevtuneError

        while not self._stop.wait(period_s):
            try:
                reply = self.client._request("POST", f"/v1/jobs/{self.job_id}/heartbeat").json()
            except Conflict:
                return  # no longer running: the next step POST says why
            except RevtuneError as e:
                log.warning("heartbeat of job %s failed, will retry: %s", self.job_id, e)
                continue
            if reply["cancel_requested"]:
                self.cancel_requested = True
