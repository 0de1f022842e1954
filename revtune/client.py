"""Python client for the revtune REST API.

``Client`` speaks the REST contract of ``DESIGN.md`` over httpx and nothing else: importing it does
not import JAX or the engine, so it runs in any notebook or script that can reach a revtune server.

    >>> from revtune import Client
    >>> client = Client("http://127.0.0.1:8000", api_key=None)
    >>> job = client.submit(template="lr-schedule-digits")
    >>> job = client.wait(job)                      # progress bar on stderr
    >>> lr = client.hyperparameters(job, "learning_rate")
    >>> lr.values.shape, lr.axes                    # e.g. (100, 8), ("step", "layer")

Jobs, steps and datasets are returned as plain dicts with the contract's field names (typed as
``TypedDict`` for editors); hyperparameters come back as a numpy array with their axes and labels.
An error answer becomes an exception: :class:`NotFound` (404), :class:`Conflict` (409),
:class:`ValidationError` (422, with the offending fields), :class:`Unauthorized` (401/403),
:class:`Unavailable` (503, or the server cannot be reached), all subclasses of :class:`RevtuneError`.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, TypedDict, TypeVar

import httpx
import numpy as np
import yaml

from jobs.states import TERMINAL
from revtune.recorder import Recorder

__all__ = [
    "Client",
    "Conflict",
    "Dataset",
    "Hyperparameter",
    "Job",
    "JobPage",
    "JobWarning",
    "NotFound",
    "ProgressBar",
    "Recorder",
    "RevtuneError",
    "Step",
    "TERMINAL_STATUSES",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "load_spec",
]

_T = TypeVar("_T")

TERMINAL_STATUSES = frozenset(status.value for status in TERMINAL)
"""Job states a job never leaves (``queued -> running -> succeeded | failed | cancelled``)."""


class Best(TypedDict):
    objective: float
    meta_iter: int


class JobWarning(TypedDict):
    """What a job's run found worth telling its user: one per ``code`` (``unscaled_inputs``,
    ``hypergradient_norm``, ``diverged``, ``chaos_guard``); ``meta_iter`` is where it began (None:
    before the first meta-iteration). docs/API.md, "Warnings"."""

    code: str
    message: str
    meta_iter: int | None


class Job(TypedDict):
    id: str
    name: str
    status: str
    origin: str  # "service" (a worker runs it) or "external" (a library run recorded by `Client.record`)
    spec: dict[str, Any]
    meta_iter: int
    meta_iterations: int
    best: Best | None
    error: str | None
    warnings: list[JobWarning]
    # Cancel was requested: a job still ``running`` stops after its current meta-iteration, then
    # reads ``cancelled``.
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None


class Step(TypedDict):
    meta_iter: int
    objective: float
    train_loss: float | None
    valid_loss: float | None
    valid_error: float | None
    test_loss: float | None
    test_error: float | None
    hypergrad_norm: float | None
    elapsed_s: float
    reversal_exact: bool


class Dataset(TypedDict):
    id: str
    name: str
    n_train: int
    n_valid: int
    n_test: int
    n_features: int
    n_classes: int
    n_tasks: int
    sha256: str
    created_at: str
    layout: str
    n_rows: int
    size_bytes: int
    example_shape: list[int]  # one example's shape: [d], [H, W], [H, W, C] or [L, C]
    target: str  # "class" or "real" (regression)
    n_outputs: int  # the model's output width: n_classes, or a real target's columns


@dataclass(frozen=True)
class JobPage:
    """One page of ``GET /v1/jobs``; pass ``next_cursor`` back as ``cursor`` for the next (None: last)."""

    items: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class Hyperparameter:
    """A learned (or fixed) hyperparameter at one meta-iteration, in natural units.

    ``values`` has one dimension per entry of ``axes`` (``"step"``, ``"layer"`` or a weight's own
    dimensions such as ``"in"``/``"out"`` or ``"example"``/``"feature"``); ``labels`` maps an axis name
    to the label of each index along it (``layer`` -> parameter array names such as ``layer0.W``,
    ``step`` -> step numbers, ``example`` -> class labels), for the axes the server labels.
    """

    name: str
    meta_iter: int
    values: np.ndarray
    axes: tuple[str, ...]
    labels: dict[str, list[Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The REST JSON form: ``{"name", "meta_iter", "shape", "axes", "labels", "values"}``."""
        return {
            "name": self.name,
            "meta_iter": self.meta_iter,
            "shape": list(self.values.shape),
            "axes": list(self.axes),
            "labels": self.labels,
            "values": self.values.tolist(),
        }


class RevtuneError(Exception):
    """An error answer from the server (or no answer). ``status_code`` is None when unreachable."""

    retry_after: float | None = None  # 429 and 503: the server's Retry-After in seconds, if it sent one

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class NotFound(RevtuneError):
    """404: no such job, dataset, template or hyperparameter (or it belongs to another tenant)."""


class Conflict(RevtuneError):
    """409: the request clashes with the resource's state (e.g. deleting a running job)."""


class Unauthorized(RevtuneError):
    """401/403: a missing, wrong or revoked API key."""


class Unavailable(RevtuneError):
    """503 (the database or broker is down) or the server cannot be reached at all.

    ``retry_after`` is the server's ``Retry-After`` in seconds (None without one, or unreachable).
    """


class ValidationError(RevtuneError):
    """422: the request (usually the job spec) is invalid.

    ``errors`` is the server's list of ``{"loc", "msg"}``; ``fields`` names each offending field as a
    dotted path inside the request body, e.g. ``"training.steps"``.
    """

    def __init__(self, message: str, status_code: int | None = 422, detail: Any = None) -> None:
        super().__init__(message, status_code, detail)
        self.errors: list[dict[str, Any]] = detail if isinstance(detail, list) else []
        self.fields: list[str] = [_field_name(e.get("loc", ())) for e in self.errors]


def _field_name(loc: Any) -> str:
    parts = [str(p) for p in (loc if isinstance(loc, list | tuple) else [loc])]
    # FastAPI prefixes body errors with "body"; the user wrote the spec, not the envelope.
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "(request)"


_ERRORS: dict[int, type[RevtuneError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
    503: Unavailable,
}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text.strip() or None
    if isinstance(detail, list):
        parts = [f"{_field_name(e.get('loc', ()))}: {e.get('msg', e)}" for e in detail if isinstance(e, dict)]
        text = "; ".join(parts) or json.dumps(detail)
    else:
        text = str(detail) if detail else response.reason_phrase
    cls = _ERRORS.get(response.status_code, RevtuneError)
    method, url = response.request.method, response.request.url
    error = cls(f"{method} {url.path} -> {response.status_code}: {text}", response.status_code, detail)
    if response.status_code in (429, 503):
        error.retry_after = _retry_after(response.headers.get("Retry-After"))
    raise error


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds (what this API sends) or an HTTP date; None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def load_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a job spec from a ``.json``, ``.yaml`` or ``.yml`` file (YAML is a superset of JSON)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise FileNotFoundError(f"cannot read job spec {p}: {e.strerror}") from e
    spec = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(spec, dict):
        raise ValueError(f"job spec {p} must be a mapping of fields, got {type(spec).__name__}")
    return spec


# Methods that mean the same done twice (RFC 9110 9.2.2); a POST only with an Idempotency-Key, which
# makes the server answer a repeat with the first job.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# The connection failed before any answer: closed or reset by the server (RemoteProtocolError
# "Server disconnected without sending a response", ReadError/WriteError "Connection reset by
# peer", "Broken pipe"), or could not be opened at all.
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)


def _repeatable(method: str, headers: Mapping[str, str] | None) -> bool:
    if method.upper() in _IDEMPOTENT_METHODS:
        return True
    return any(name.lower() == "idempotency-key" and value for name, value in (headers or {}).items())


def _job_id(job: str | Mapping[str, Any]) -> str:
    return job if isinstance(job, str) else str(job["id"])


class ProgressBar:
    """A one-line progress bar: meta-iterations done of total, the current objective, the status.

    Redrawn in place with a carriage return when the stream is a terminal; otherwise one line is
    written per change, so logs stay readable.
    """

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(int(total), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""

    def render(self, done: int, objective: float | None, status: str) -> str:
        filled = min(self.width, self.width * max(done, 0) // self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        obj = "    -    " if objective is None else f"{objective:.6g}"
        return f"[{bar}] {done}/{self.total} meta-iterations  objective {obj}  {status}"

    def note(self, text: str) -> None:
        """Write ``text`` on a line of its own (a warning), above the bar when it is redrawn in place."""
        if self._tty:
            self.stream.write("\r" + text + "\x1b[K\n" + self._last)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, done: int, objective: float | None, status: str) -> None:
        line = self.render(done, objective, status)
        if line == self._last:
            return
        self._last = line
        if self._tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


class Client:
    """A revtune server at ``url`` (e.g. ``http://127.0.0.1:8000``), optionally with an API key.

    ``api_key`` defaults to the ``REVTUNE_API_KEY`` environment variable; it is sent as
    ``Authorization: Bearer <key>``. ``timeout`` bounds every HTTP request in seconds. Use as a
    context manager, or call :meth:`close`, to release the connection pool.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("REVTUNE_API_KEY") or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call. A request that may safely be repeated (`_repeatable`) is sent once more, at
        once, when the connection failed before an answer came (`_DROPPED`): typically a kept-alive
        connection the server had closed (uvicorn closes it after a 500) or reset. Timeouts are not
        retried: the server may still be working on the first request."""
        attempts = 2 if _repeatable(method, kwargs.get("headers")) else 1
        for attempt in range(attempts):
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except _DROPPED as e:
                if attempt + 1 < attempts:
                    continue
                raise Unavailable(f"cannot reach the revtune server at {self.url}: {e}") from e
            except httpx.TransportError as e:
                raise Unavailable(f"cannot reach the revtune server at {self.url}: {e}") from e
        _raise_for(response)
        return response

    def _until_available(self, call: Callable[[], _T], deadline: float | None, poll: float) -> _T:
        """``call()``, again after a 503 (which the API calls retryable) once the answer's
        ``Retry-After`` (else ``poll``) seconds have passed, until ``deadline`` (monotonic; None:
        no end); after it the last `Unavailable` is raised."""
        while True:
            try:
                return call()
            except Unavailable as e:
                if e.status_code != 503:
                    raise
                delay = max(e.retry_after if e.retry_after is not None else poll, 0.05)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise
                    delay = min(delay, left)
                time.sleep(delay)

    # jobs

    def submit(
        self,
        spec: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        template: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Create a job from a spec (a dict, or a path to a JSON/YAML file) or from a template's spec.

        With ``idempotency_key``, submitting again with the same key returns the first job instead
        of creating another. Raises :class:`ValidationError` naming each field beyond its limit.
        """
        if (spec is None) == (template is None):
            raise ValueError("submit() needs exactly one of spec or template=")
        if template is not None:
            body: dict[str, Any] = self.template(template)
        elif isinstance(spec, Mapping):
            body = dict(spec)
        else:
            body = load_spec(spec)  # type: ignore[arg-type]
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/jobs", json=body, headers=headers).json()

    def get(self, job: str | Mapping[str, Any]) -> Job:
        """The job's current state (status, ``meta_iter`` done of ``meta_iterations``, best objective)."""
        return self._request("GET", f"/v1/jobs/{_job_id(job)}").json()

    def list(self, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first, optionally only those with ``status``."""
        params = {
            k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None
        }
        page = self._request("GET", "/v1/jobs", params=params).json()
        return JobPage(items=page["items"], next_cursor=page.get("next_cursor"))

    def iter_jobs(self, status: str | None = None, page_size: int | None = None) -> Iterator[Job]:
        """Every job (with ``status``, if given), following the pagination cursor to the end."""
        cursor: str | None = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def steps(
        self, job: str | Mapping[str, Any], after: int | None = None, limit: int | None = None
    ) -> list[Step]:
        """The job's per-meta-iteration metrics with ``meta_iter > after`` (all, if None), in order.

        Follows the server's ``next_after`` cursor until there is nothing newer, so a poller can
        call ``steps(job, after=last_seen)`` repeatedly. ``limit`` is the page size per request.
        """
        out: list[Step] = []
        while True:
            params = {k: v for k, v in {"after": after, "limit": limit}.items() if v is not None}
            page = self._request("GET", f"/v1/jobs/{_job_id(job)}/steps", params=params).json()
            out.extend(page["items"])
            next_after = page.get("next_after")
            if next_after is None or not page["items"] or next_after == after:
                return out
            after = next_after

    def cancel(self, job: str | Mapping[str, Any]) -> Job:
        """Ask the worker to stop; the job becomes ``cancelled`` once it has (a queued job at once)."""
        return self._request("POST", f"/v1/jobs/{_job_id(job)}/cancel").json()

    def continue_job(self, job: str | Mapping[str, Any], iterations: int) -> Job:
        """Run a succeeded or cancelled job for ``iterations`` more meta-iterations: it is queued
        again, resumes from its checkpoint (the meta-optimiser's state included) and ends as one job
        run for the sum from the start would, bit for bit. `wait` for it as for a new job."""
        return self._request(
            "POST", f"/v1/jobs/{_job_id(job)}/continue", json={"iterations": iterations}
        ).json()

    def delete(self, job: str | Mapping[str, Any]) -> None:
        """Delete a finished job and its records. Raises :class:`Conflict` while queued or running."""
        self._request("DELETE", f"/v1/jobs/{_job_id(job)}")

    def wait(
        self,
        job: str | Mapping[str, Any],
        progress: bool = True,
        poll: float = 1.0,
        timeout: float | None = None,
        stream: TextIO | None = None,
    ) -> Job:
        """Poll until the job is ``succeeded``, ``failed`` or ``cancelled``, and return it.

        With ``progress``, draws a bar on ``stream`` (stderr by default): meta-iterations done of
        total and the latest meta-iteration's objective, and a line ``warning (code): message`` for
        each warning the job gains (``job["warnings"]``, once per code). Raises ``TimeoutError``
        after ``timeout`` seconds; it does not raise for a failed job (check ``job["status"]``,
        ``job["error"]`` and ``job["warnings"]``).
        A 503 (the database or the broker briefly down) is asked again after its ``Retry-After``
        seconds until ``timeout``; if the server still answers 503 then, that :class:`Unavailable`
        is raised.
        """
        job_id = _job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        current = self._until_available(functools.partial(self.get, job_id), deadline, poll)
        bar = ProgressBar(current["meta_iterations"], stream) if progress else None
        after: int | None = None
        objective: float | None = None
        warned: set[str] = set()
        try:
            while True:
                new = self._until_available(
                    functools.partial(self.steps, job_id, after=after), deadline, poll
                )
                if new:
                    after = new[-1]["meta_iter"]
                    objective = new[-1]["objective"]
                if bar is not None:
                    for warning in current.get("warnings") or []:
                        if warning["code"] not in warned:
                            warned.add(warning["code"])
                            bar.note(f"warning ({warning['code']}): {warning['message']}")
                    bar.update(current["meta_iter"], objective, current["status"])
                if current["status"] in TERMINAL_STATUSES:
                    return current
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {current['status']} after {timeout} s")
                time.sleep(poll)
                current = self._until_available(functools.partial(self.get, job_id), deadline, poll)
        finally:
            if bar is not None:
                bar.close()

    def record(
        self,
        name: str,
        description: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        idempotency_key: str | None = None,
        heartbeat_s: float | None = None,
    ) -> Recorder:
        """Record a library run (``hypercore.tune`` on this machine) as a job of origin ``external``:
        returns the :class:`~revtune.recorder.Recorder` to pass as ``tune``'s callback.

        ``description``: what the run is, like a job spec (``model.kind`` a built-in family or your
        model's name, ``meta.iterations``, ``dataset``, ``hyperparameters``, ...); stored as the job's
        spec, ``name`` as its name. ``job_id``: continue that job instead (a run resumed from its
        checkpoint; a failed job runs again). ``idempotency_key``: a repeat finds the first job and
        continues it. Raises :class:`ValidationError` naming a field the description gets wrong and
        :class:`Conflict` for a job that already succeeded or was cancelled. ``heartbeat_s``: how
        often the recorder tells the server it is alive (default: what the server asks for,
        ``REVTUNE_HEARTBEAT_INTERVAL_S``).
        """
        if job_id is None:
            body = {**dict(description or {}), "name": name}
            headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
            response = self._request("POST", "/v1/jobs/external", json=body, headers=headers)
            if response.status_code == 200:  # a repeat: continue the first job
                job_id = response.json()["id"]
        if job_id is not None:
            response = self._request("POST", f"/v1/jobs/{job_id}/resume")
        asked = response.headers.get("Revtune-Heartbeat-Interval")
        if heartbeat_s is None:
            heartbeat_s = float(asked) if asked else 10.0
        return Recorder(self, response.json(), heartbeat_s=heartbeat_s)

    # hyperparameters

    def hyperparameter_list(self, job: str | Mapping[str, Any]) -> list[dict[str, Any]]:
        """The job's hyperparameters at its latest meta-iteration: name, shape, axes, labels, learned."""
        return self._request("GET", f"/v1/jobs/{_job_id(job)}/hyperparameters").json()["items"]

    def hyperparameters(
        self, job: str | Mapping[str, Any], name: str, meta_iter: int | None = None
    ) -> Hyperparameter:
        """The hyperparameter ``name`` (``learning_rate``, ``momentum``, ``beta1``, ``beta2``,
        ``weight_decay``, ``init_scale``, ``l2``, ``training_data``, ``sharing.layer0``, ...) after
        meta-iteration ``meta_iter`` (the latest if None), in natural units."""
        params: dict[str, Any] = {"format": "json"}
        if meta_iter is not None:
            params["meta_iter"] = meta_iter
        body = self._request("GET", f"/v1/jobs/{_job_id(job)}/hyperparameters/{name}", params=params).json()
        values = np.asarray(body["values"], dtype=np.float64).reshape(body["shape"])
        return Hyperparameter(
            name=body["name"],
            meta_iter=body["meta_iter"],
            values=values,
            axes=tuple(body["axes"]),
            labels=dict(body.get("labels") or {}),
        )

    def download_hyperparameter(
        self,
        job: str | Mapping[str, Any],
        name: str,
        format: Literal["json", "csv", "npy"] = "npy",
        meta_iter: int | None = None,
    ) -> bytes:
        """The server's rendering of a hyperparameter as bytes: ``.npy``, CSV or JSON."""
        params: dict[str, Any] = {"format": format}
        if meta_iter is not None:
            params["meta_iter"] = meta_iter
        return self._request("GET", f"/v1/jobs/{_job_id(job)}/hyperparameters/{name}", params=params).content

    def export(
        self,
        job: str | Mapping[str, Any],
        *,
        which: str,
        to: str,
        path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Download the job's hyperparameters at snapshot ``which`` (``"best"``: the values the
        lowest-objective meta-iteration trained with; ``"last"``: the latest stored; or a snapshot
        ``meta_iter``) as ``to``: ``"npz"`` (natural units, as stored) or ``"optax"``/``"pytorch"``
        (a ``.zip`` with the schedules in that library's convention and a runnable snippet); docs/API.md,
        "Export". Written to ``path`` (a directory: the server's file name inside it; default: that
        name in the current directory); returns the file's path. The server's file name carries the
        meta-iteration ``which`` resolved to (``{job}-{which}-{meta_iter}.npz``), as does the
        ``__export__`` entry of the ``.npz``."""
        response = self._request(
            "GET", f"/v1/jobs/{_job_id(job)}/export", params={"which": str(which), "to": to}
        )
        disposition = response.headers.get("Content-Disposition", "")
        name = disposition.partition('filename="')[2].partition('"')[0]
        name = Path(name).name or f"{_job_id(job)}-{which}.{'npz' if to == 'npz' else 'zip'}"
        target = Path.cwd() / name if path is None else Path(path)
        if target.is_dir():
            target = target / name
        target.write_bytes(response.content)
        return target

    # datasets

    def upload_dataset(self, path: str | os.PathLike[str], name: str | None = None) -> Dataset:
        """Upload an ``.npz`` (``X``, ``y`` or ``X_train``, ``y_train``, ``X_valid``, ``y_valid`` [,
        ``X_test``, ``y_test``]); refer to it in a spec as ``dataset: {id: <returned id>, ...}``."""
        p = Path(path)
        data = p.read_bytes()
        files = {"file": (p.name, io.BytesIO(data), "application/octet-stream")}
        return self._request("POST", "/v1/datasets", files=files, data={"name": name or p.stem}).json()

    def datasets(self) -> list[Dataset]:
        """The datasets uploaded by this tenant."""
        body = self._request("GET", "/v1/datasets").json()
        return body["items"] if isinstance(body, dict) else body

    def dataset(self, dataset_id: str) -> Dataset:
        return self._request("GET", f"/v1/datasets/{dataset_id}").json()

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # templates

    def templates(self) -> list[str]:
        """Names of the ready-made specs (the paper's experiments)."""
        body = self._request("GET", "/v1/templates").json()
        items = body["items"] if isinstance(body, dict) else body
        return [t if isinstance(t, str) else t["name"] for t in items]

    def template(self, name: str) -> dict[str, Any]:
        """The template's JobSpec, ready to edit and submit."""
        return self._request("GET", f"/v1/templates/{name}").json()
