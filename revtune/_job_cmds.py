"""The job commands of the ``revtune`` CLI: talk to a server through `revtune.Client`.

``submit``, ``wait``, ``jobs``, ``show``, ``steps``, ``hyper``, ``cancel``, ``delete``, ``templates``,
``datasets`` (``datasets delete ID``) and ``upload`` reach the server at ``--url`` (default
``$REVTUNE_URL``, else http://127.0.0.1:8000) with ``--api-key`` (default ``$REVTUNE_API_KEY``). Read
commands print a table for people and, with ``--json``, the REST answer for scripts. ``run FILE``
needs no server: it runs a spec in this process with the engine and writes its metrics and
hyperparameters to a folder.

Waiting (``wait JOB``, ``submit --wait``) exits with `EXIT_SUCCEEDED` (0) when the job succeeded and
`EXIT_NOT_SUCCEEDED` (1) when it failed or was cancelled (the job printed says which, and why), so
that a script can chain on it; 2 is every command's status for an error (`revtune.cli`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hypercore.steps import STEP_FIELDS
from jobs.states import Status
from revtune._common import CommandError
from revtune.client import (
    Client,
    Conflict,
    Hyperparameter,
    NotFound,
    ProgressBar,
    RevtuneError,
    load_spec,
)

_DEFAULT_URL = "http://127.0.0.1:8000"
_STEP_COLUMNS = STEP_FIELDS

EXIT_SUCCEEDED = 0
EXIT_NOT_SUCCEEDED = 1  # the job waited for failed or was cancelled
_EXIT_CODES = (
    f"exit status {EXIT_SUCCEEDED}: the job succeeded; {EXIT_NOT_SUCCEEDED}: it failed or was cancelled"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", default=None, help=f"server URL (default $REVTUNE_URL or {_DEFAULT_URL})")
    conn.add_argument("--api-key", default=None, help="API key (default $REVTUNE_API_KEY)")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print the REST answer as JSON, for scripts")

    def add(name: str, run: Callable[[argparse.Namespace], int], help: str, parents=(conn, out)):
        p = subparsers.add_parser(name, help=help, description=help, parents=list(parents))
        p.set_defaults(run=_guarded(run))
        return p

    p = add("submit", _submit, "submit a job from a spec file (JSON/YAML) or a template")
    p.add_argument("file", nargs="?", help="job spec, .json or .yaml")
    p.add_argument("--template", metavar="NAME", help="submit this template's spec instead of a file")
    p.add_argument(
        "--idempotency-key", metavar="KEY", help="resubmitting with the same key returns the same job"
    )
    p.add_argument(
        "--wait", action="store_true", help=f"wait for the job to end, with a progress bar ({_EXIT_CODES})"
    )

    p = add("wait", _wait, f"wait for a job to end, with a progress bar and its warnings ({_EXIT_CODES})")
    p.add_argument("id")
    p.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="give up after this long (status 2)"
    )

    p = add("jobs", _jobs, "list jobs, newest first")
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0: all)")

    p = add("show", _show, "show one job")
    p.add_argument("id")

    p = add("steps", _steps, "a job's metrics per meta-iteration")
    p.add_argument("id")
    p.add_argument("--after", type=int, default=None, help="only meta-iterations after this one")

    p = add("hyper", _hyper, "a job's learned hyperparameters: list, table, or download")
    p.add_argument("id")
    p.add_argument("name", nargs="?", help="hyperparameter name; omitted: list them")
    p.add_argument("--meta-iter", type=int, default=None, help="after this meta-iteration (default latest)")
    p.add_argument("--format", choices=["json", "csv", "npy"], help="raw download in this format")
    p.add_argument("--out", metavar="PATH", help="write the download here instead of stdout")

    p = add("cancel", _cancel, "cancel a queued or running job")
    p.add_argument("id")

    p = add(
        "continue",
        _continue,
        "run a succeeded or cancelled job for more meta-iterations (it resumes where it stopped and ends "
        "as one job run for the sum would)",
    )
    p.add_argument("id")
    p.add_argument("--iterations", type=int, required=True, metavar="N", help="how many more meta-iterations")
    p.add_argument(
        "--wait", action="store_true", help=f"wait for the job to end, with a progress bar ({_EXIT_CODES})"
    )

    p = add("delete", _delete, "delete a finished job and its records", parents=(conn,))
    p.add_argument("id")

    p = add("templates", _templates, "list the ready-made specs, or print one (as YAML) to start from")
    p.add_argument("name", nargs="?")

    p = add("datasets", _datasets, "list uploaded datasets; `datasets delete ID` deletes one")
    actions = p.add_subparsers(dest="datasets_command", metavar="COMMAND")
    # Its own --url/--api-key default to "not given", so that options given before `delete` stand.
    conn_after = argparse.ArgumentParser(add_help=False)
    conn_after.add_argument("--url", default=argparse.SUPPRESS, help="server URL (as for `datasets`)")
    conn_after.add_argument("--api-key", default=argparse.SUPPRESS, help="API key (as for `datasets`)")
    what = "delete an uploaded dataset (refused while a queued or running job uses it)"
    d = actions.add_parser("delete", help=what, description=what, parents=[conn_after])
    d.add_argument("dataset_id", metavar="ID")
    d.set_defaults(run=_guarded(_datasets_delete))

    p = add("upload", _upload, "upload a dataset (.npz with X, y or X_train, y_train, X_valid, y_valid)")
    p.add_argument("file")
    p.add_argument("--name", help="dataset name (default: the file's stem)")

    p = add(
        "run", _run, "run a spec locally, without a server, and write its results to a folder", parents=()
    )
    p.add_argument("file", help="job spec, .json or .yaml")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<spec name>)")
    p.add_argument(
        "--dataset", metavar="NPZ", help="the .npz to use for a spec's uploaded `dataset: {id: ...}`"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except RevtuneError as e:
            raise CommandError(str(e)) from e
        except (FileNotFoundError, ValueError) as e:
            raise CommandError(str(e)) from e

    return guarded


def _client(args: argparse.Namespace) -> Client:
    url = args.url or os.environ.get("REVTUNE_URL") or _DEFAULT_URL
    return Client(url, api_key=args.api_key)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _when(stamp: str | None) -> str | None:
    return stamp[:19].replace("T", " ") if stamp else None


def _job_row(job: dict[str, Any]) -> list[Any]:
    best = job.get("best") or {}
    return [
        job["id"],
        job["name"],
        job["status"],
        f"{job['meta_iter']}/{job['meta_iterations']}",
        best.get("objective"),
        _when(job.get("created_at")),
        len(job.get("warnings") or []) or None,
    ]


_JOB_HEADERS = ("ID", "NAME", "STATUS", "PROGRESS", "BEST", "CREATED", "WARNINGS")


_EXTERNAL = "external (a library run its client records; no worker runs it)"


def _show_job(job: dict[str, Any]) -> None:
    best = job.get("best")
    fields = [
        ("id", job["id"]),
        ("name", job["name"]),
        ("status", job["status"]),
        ("origin", _EXTERNAL if job.get("origin") == "external" else None),
        ("progress", f"{job['meta_iter']}/{job['meta_iterations']} meta-iterations"),
        ("best", f"{best['objective']:.6g} at meta-iteration {best['meta_iter']}" if best else None),
        ("objective", job.get("spec", {}).get("objective")),
        ("created", _when(job.get("created_at"))),
        ("started", _when(job.get("started_at"))),
        ("finished", _when(job.get("finished_at"))),
        ("error", job.get("error")),
        ("cancel", _CANCEL_PENDING if _cancel_pending(job) else None),
    ]
    fields += [("warning", f"{w['code']}{_since(w)}: {w['message']}") for w in job.get("warnings") or []]
    print("\n".join(f"{k:<10} {_fmt(v)}" for k, v in fields if v is not None))


_CANCEL_PENDING = "requested; the job stops after its current meta-iteration, then reads cancelled"


def _cancel_pending(job: dict[str, Any]) -> bool:
    """Whether the job still runs though cancel was requested: its status alone reads ``running``
    until the worker has finished the meta-iteration in flight."""
    return bool(job.get("cancel_requested")) and job["status"] == Status.RUNNING


def _since(warning: dict[str, Any]) -> str:
    return "" if warning.get("meta_iter") is None else f" (from meta-iteration {warning['meta_iter']})"


def _submit(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.template is None):
        raise CommandError("submit needs a spec FILE or --template NAME (not both)")
    with _client(args) as client:
        spec = load_spec(args.file) if args.file else None
        job = client.submit(spec, template=args.template, idempotency_key=args.idempotency_key)
        if args.wait:
            return _wait_and_show(client, job, args)
    _print_job(job, args)
    return 0


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _wait_and_show(client, args.id, args, timeout=args.timeout)


def _wait_and_show(
    client: Client, job: str | dict[str, Any], args: argparse.Namespace, timeout: float | None = None
) -> int:
    """`Client.wait`'s progress bar and warnings on stderr until the job ends, then the job as ``show``
    prints it; the exit status says how it ended (`EXIT_SUCCEEDED`, `EXIT_NOT_SUCCEEDED`)."""
    job_id = job if isinstance(job, str) else job["id"]
    try:
        job = client.wait(job, progress=True, timeout=timeout)
    except TimeoutError as e:
        raise CommandError(f"{e}; `revtune wait {job_id}` waits again") from e
    except KeyboardInterrupt:
        # Only the waiting stops: the job runs on in the service.
        raise CommandError(f"stopped waiting; job {job_id} goes on (`revtune wait {job_id}`)") from None
    _print_job(job, args)
    return EXIT_SUCCEEDED if job["status"] == Status.SUCCEEDED else EXIT_NOT_SUCCEEDED


def _print_job(job: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        _print_json(job)
    else:
        _show_job(job)


def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = []
        for job in client.iter_jobs(
            status=args.status, page_size=min(args.limit, 50) if args.limit else None
        ):
            jobs.append(job)
            if args.limit and len(jobs) >= args.limit:
                break
    if args.json:
        _print_json(jobs)
    elif jobs:
        print(_table(_JOB_HEADERS, [_job_row(j) for j in jobs]))
    else:
        print("no jobs" + (f" with status {args.status}" if args.status else ""))
    return 0


def _show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get(args.id)
    _print_job(job, args)
    return 0


def _steps(args: argparse.Namespace) -> int:
    with _client(args) as client:
        steps = client.steps(args.id, after=args.after)
    if args.json:
        _print_json(steps)
    elif steps:
        print(_table(_STEP_COLUMNS, [[s.get(c) for c in _STEP_COLUMNS] for s in steps]))
    else:
        print("no meta-iterations recorded yet")
    return 0


def _hyper(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.name is None:
            items = client.hyperparameter_list(args.id)
            if args.json:
                _print_json(items)
            else:
                rows = [
                    [h["name"], "x".join(map(str, h["shape"])) or "scalar", ",".join(h["axes"]), h["learned"]]
                    for h in items
                ]
                print(_table(("NAME", "SHAPE", "AXES", "LEARNED"), rows))
            return 0
        if args.format or args.out:
            fmt = args.format or Path(args.out).suffix.lstrip(".")
            if fmt not in ("json", "csv", "npy"):
                raise CommandError(f"--format is needed: cannot tell json, csv or npy from {args.out!r}")
            data = client.download_hyperparameter(args.id, args.name, format=fmt, meta_iter=args.meta_iter)
            if args.out:
                Path(args.out).write_bytes(data)
                print(f"wrote {args.out} ({len(data)} bytes)", file=sys.stderr)
            elif fmt == "npy" and sys.stdout.isatty():
                raise CommandError("refusing to write binary .npy to a terminal: add --out PATH")
            else:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            return 0
        hp = client.hyperparameters(args.id, args.name, meta_iter=args.meta_iter)
    if args.json:
        _print_json(hp.to_json())
    else:
        print(_hyper_text(hp))
    return 0


def _hyper_text(hp: Hyperparameter) -> str:
    """A readable view: the header, then a step-by-column table for 1-D/2-D values, else statistics."""
    v = hp.values
    head = f"{hp.name} after meta-iteration {hp.meta_iter}: shape {list(v.shape)} axes {list(hp.axes)}"
    if v.ndim == 0:
        return f"{head}\n{v.item():.6g}"
    if v.ndim <= 2 and v.shape[0] <= 1000 and (v.ndim == 1 or v.shape[1] <= 16):
        first = hp.axes[0]
        rows_lbl = hp.labels.get(first) or [str(i) for i in range(v.shape[0])]
        if v.ndim == 1:
            return f"{head}\n" + _table(
                (first, hp.name), [[r, float(x)] for r, x in zip(rows_lbl, v, strict=True)]
            )
        cols = hp.labels.get(hp.axes[1]) or [str(j) for j in range(v.shape[1])]
        rows = [[r, *map(float, row)] for r, row in zip(rows_lbl, v, strict=True)]
        return f"{head}\n" + _table((first, *cols), rows)
    return (
        f"{head}\nmin {v.min():.6g}  mean {v.mean():.6g}  max {v.max():.6g}"
        "  (too large for a table: use --format csv|npy)"
    )


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.id)
    _print_job(job, args)  # a running job's says that the cancel is pending (`_show_job`)
    return 0


def _continue(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.continue_job(args.id, args.iterations)
        if args.wait:
            return _wait_and_show(client, job, args)
    _print_job(job, args)
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete(args.id)
    print(f"deleted {args.id}")
    return 0


def _templates(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.name:
            spec = client.template(args.name)
            if args.json:
                _print_json(spec)
            else:
                sys.stdout.write(yaml.safe_dump(spec, sort_keys=False))
            return 0
        names = client.templates()
    if args.json:
        _print_json(names)
    else:
        print("\n".join(names))
    return 0


def _datasets(args: argparse.Namespace) -> int:
    with _client(args) as client:
        items = client.datasets()
    if args.json:
        _print_json(items)
    elif items:
        cols = (
            "id",
            "name",
            "n_train",
            "n_valid",
            "n_test",
            "example_shape",
            "target",
            "n_outputs",
            "n_tasks",
        )
        cols += ("created_at",)
        rows = [[_shape_text(d.get(c)) if c == "example_shape" else d.get(c) for c in cols] for d in items]
        print(_table([c.upper() for c in cols], rows))
    else:
        print("no datasets")
    return 0


def _datasets_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            client.delete_dataset(args.dataset_id)
        except NotFound as e:
            raise CommandError(
                f"no dataset {args.dataset_id!r} on {client.url} (`revtune datasets` lists them)"
            ) from e
        except Conflict as e:
            # The server names the jobs: "dataset ... is used by active job(s) ...; cancel them first".
            raise CommandError(f"{e.detail} (`revtune cancel JOB`), then delete it") from e
    print(f"deleted dataset {args.dataset_id}")
    return 0


def _shape_text(shape: list[int] | None) -> str:
    """``[8, 8, 1]`` -> ``8x8x1``."""
    return "x".join(map(str, shape)) if shape else ""


def _upload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        ds = client.upload_dataset(args.file, name=args.name)
    if args.json:
        _print_json(ds)
    else:
        print(f"uploaded {ds['name']} as {ds['id']}: use dataset: {{id: {ds['id']}}} in a spec")
    return 0


def _run(args: argparse.Namespace) -> int:
    """Validate the spec, tune in this process, and write the results as they come.

    ``OUT/steps.jsonl`` gains a line per meta-iteration (so a crash keeps what was done),
    ``OUT/steps.csv`` and ``OUT/hyperparameters/<name>.npy`` + ``.json`` (axes, labels, values in
    natural units, after the last meta-iteration) are written at the end, with ``OUT/best/`` the
    same for the values the lowest-objective meta-iteration trained with (what a server job's
    ``export which=best`` gives), ``OUT/spec.json`` and ``OUT/summary.json``.
    """
    spec = load_spec(args.file)
    out = Path(args.out) if args.out else Path("runs") / _slug(str(spec.get("name") or Path(args.file).stem))
    # The engine pulls in JAX: imported here so that every other command stays light.
    from hypercore import ConfigError, MetaDivergedError, ReversalError, problem_from_spec, tune

    dataset = _local_dataset(args.dataset, spec) if args.dataset else None
    if dataset is None and (spec.get("dataset") or {}).get("id") is not None:
        raise CommandError("dataset.id: a spec on an uploaded dataset runs locally with --dataset FILE.npz")
    _validate_locally(spec, dataset)
    try:
        problem = problem_from_spec(spec, dataset=dataset, plugins=_spec_plugin(spec))
    except ConfigError as e:
        raise CommandError(f"invalid spec {args.file}: {e}") from e
    _check_built_model(spec, problem)
    (out / "hyperparameters").mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    bar = None if args.quiet else ProgressBar(problem.iterations)
    steps: list[dict[str, Any]] = []
    with (out / "steps.jsonl").open("w") as log:

        def on_record(record: Any) -> None:
            step = record.step()
            steps.append(step)
            log.write(json.dumps(step) + "\n")
            log.flush()
            if bar is not None:
                bar.update(record.meta_iter + 1, record.objective, Status.RUNNING.value)

        try:
            result = tune(problem, callback=on_record)
        except KeyboardInterrupt:
            raise CommandError(f"interrupted: {len(steps)} meta-iterations are in {log.name}") from None
        except (ReversalError, MetaDivergedError) as e:
            raise CommandError(f"{e} ({len(steps)} meta-iterations are in {log.name})") from e
        finally:
            if bar is not None:
                bar.close()
    write_steps_csv(out / "steps.csv", steps)
    meta_iter = len(steps)
    finite = [s for s in steps if s["objective"] is not None]
    best = min(finite, key=lambda s: s["objective"]) if finite else None
    best_values = result.records[best["meta_iter"]].trained_with if best else {}  # a fresh run: from 0
    for folder, values, at in (
        ("hyperparameters", result.hyperparameters, meta_iter),
        ("best", best_values, best["meta_iter"] if best else None),
    ):
        if values:
            (out / folder).mkdir(parents=True, exist_ok=True)
        for name, value in values.items():
            hp = Hyperparameter(name, at, np.asarray(value.values), tuple(value.axes), dict(value.labels))
            write_hyperparameter(out / folder, hp)
    summary = {
        "name": spec.get("name"),
        "meta_iterations": meta_iter,
        "best": {"objective": best["objective"], "meta_iter": best["meta_iter"]} if best else None,
        "last": steps[-1] if steps else None,
        "hyperparameters": sorted(result.hyperparameters),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if best:
        print(f"best objective {best['objective']:.6g} at meta-iteration {best['meta_iter']}")
    best_files = ", best/*.npy|json (the values the best meta-iteration trained with)" if best_values else ""
    print(f"wrote {out}/: steps.jsonl, steps.csv, hyperparameters/*.npy|json{best_files}, summary.json")
    return 0


def _local_dataset(path: str, spec: dict[str, Any]) -> Any:
    """The hypercore dataset in an ``.npz`` laid out as for ``POST /v1/datasets``, built exactly as a
    worker builds an upload's (`hypercore.arrays.dataset_from_npz`: the spec's counts, ``center``,
    task ids)."""
    from hypercore.arrays import DataError, LayoutError, dataset_from_npz, read_npz, upload_defaults

    try:
        section = upload_defaults(spec.get("dataset") or {})  # as the server stores it: shuffled
        return dataset_from_npz(read_npz(path), section, seed=spec.get("seed", 0))
    except LayoutError as e:  # the file itself: unreadable, or not the upload layout
        raise CommandError(f"--dataset {path}: {e.message}") from e
    except DataError as e:
        if e.field.startswith("dataset"):  # the spec's counts
            raise CommandError(str(e)) from e
        raise CommandError(f"--dataset {path}: {e}") from e


def _validate_locally(spec: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """Refuse what the server would refuse, with its words: `jobs.spec.validate_spec` under the
    server's limits (the ``REVTUNE_MAX_*`` settings), the ``--dataset`` standing for the upload."""
    from hypercore.families import DatasetShape
    from jobs.settings import Settings
    from jobs.spec import SpecError, validate_spec

    def resolve(_id: str) -> DatasetShape | None:
        if dataset is None:
            return None
        return DatasetShape.of_loaded(dataset)

    try:
        return validate_spec(spec, Settings().limits, resolve_dataset=resolve).to_dict()
    except SpecError as e:
        raise CommandError(f"invalid spec: {e}") from e


def _spec_plugin(spec: dict[str, Any]) -> dict[str, Any]:
    """The installed model plugin a ``kind: plugin`` spec names, loaded (`hypercore.plugins.load`).

    A local run needs no ``REVTUNE_MODEL_PLUGINS``: that allow-list says which installed code a
    service's workers may run for its users, and here the code and the user are the same. Installed
    is what counts, as for a worker."""
    from hypercore.families import PLUGIN_KIND
    from hypercore.plugins import installed, load

    model = spec.get("model") or {}
    if model.get("kind") != PLUGIN_KIND:
        return {}
    name = model.get("name")
    available = installed()
    if name not in available:
        known = ", ".join(sorted(available)) or "none"
        raise CommandError(
            f"invalid spec: model.name: the model plugin {name!r} is not installed in this Python "
            f"environment (installed: {known}); install its package here, as on a worker"
        )
    return load([name])


def _check_built_model(spec: dict[str, Any], problem: Any) -> None:
    """A plugin model's weights, hyperparameters and memory against the server's limits, as a worker
    counts them once the model is built (`jobs.spec.built_model_problems`); a built-in model's were checked
    with the spec."""
    from hypercore.families import PLUGIN_KIND
    from jobs.settings import Settings
    from jobs.spec import built_model_problems

    if (spec.get("model") or {}).get("kind") != PLUGIN_KIND:
        return
    found = built_model_problems(spec, Settings().limits, problem)
    if found:
        loc, message = found[0]
        raise CommandError(f"invalid spec: {'.'.join(map(str, loc))}: {message}")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "run"


def write_steps_csv(path: Path, steps: Sequence[dict[str, Any]]) -> None:
    """The REST step objects as CSV, one row per meta-iteration, empty cells for missing values."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_STEP_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(steps)


def write_hyperparameter(folder: Path, hp: Hyperparameter) -> None:
    """``<name>.npy`` (the values) and ``<name>.json`` (the REST form: axes, labels, values)."""
    np.save(folder / f"{hp.name}.npy", hp.values)
    (folder / f"{hp.name}.json").write_text(json.dumps(hp.to_json(), default=_json_scalar))


def _json_scalar(x: Any) -> Any:
    # Labels from the engine may be numpy integers (class labels of training examples).
    if isinstance(x, np.generic | np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
