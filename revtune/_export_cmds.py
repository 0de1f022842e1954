"""The ``revtune export`` command: a job's hyperparameters as a file to take home.

``revtune export JOB --to npz|optax|pytorch [--which best|last|N] [-o PATH]`` downloads
``GET /v1/jobs/{id}/export`` (docs/API.md, "Export") through `revtune.Client.export` and says what it
wrote and which snapshot ``--which`` resolved to: ``best`` (the default) is the values the
lowest-objective meta-iteration trained with, ``last`` the latest stored, ``N`` snapshot ``meta_iter``
N. The resolved snapshot is read back from the file's own ``__export__`` entry, so what is printed is
what the file holds.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from revtune._common import CommandError
from revtune._job_cmds import _client, _guarded

TARGETS = ("npz", "optax", "pytorch")


def register(subparsers: argparse._SubParsersAction) -> None:
    help = "download a job's hyperparameters: natural units (npz), or converted for optax or PyTorch"
    p = subparsers.add_parser("export", help=help, description=help)
    p.add_argument("id", help="the job")
    p.add_argument(
        "--which",
        default="best",
        help="best (default: the values the lowest-objective meta-iteration trained with), last (the "
        "latest stored, after the final update) or a snapshot meta_iter N (0: the initial values)",
    )
    p.add_argument(
        "--to",
        required=True,
        choices=TARGETS,
        help="npz: every value as stored; optax, pytorch: a .zip with the per-array, per-step schedules "
        "in that library's convention and a runnable snippet",
    )
    p.add_argument(
        "-o",
        "--out",
        metavar="PATH",
        help="write here (a folder: the server's file name inside it; default: that name here)",
    )
    p.add_argument("--url", default=None, help="server URL (default $REVTUNE_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=None, help="API key (default $REVTUNE_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the file's path and its __export__ as JSON")
    p.set_defaults(run=_guarded(_export))


def _export(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = client.export(args.id, which=args.which, to=args.to, path=args.out)
    described = _described(path, args.to)
    if args.json:
        print(json.dumps({"path": str(path), **described}, indent=2))
        return 0
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    print(_resolved(described))
    return 0


def _described(path: Path, to: str) -> dict[str, Any]:
    """The ``__export__`` entry of the file just written (inside ``hyperparameters.npz`` for a zip)."""
    try:
        if to == "npz":
            data = path.read_bytes()
        else:
            with zipfile.ZipFile(path) as z:
                data = z.read("hyperparameters.npz")
        with np.load(io.BytesIO(data), allow_pickle=False) as values:
            return json.loads(str(values["__export__"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise CommandError(f"{path} is not a revtune export: {e}") from e


def _resolved(described: dict[str, Any]) -> str:
    """``which=best: snapshot meta_iter 4, the values meta-iteration 4 trained with (objective ...)``."""
    which, k = described["which"], described["meta_iter"]
    head = f"which={which}: hyperparameter snapshot meta_iter {k}"
    if not described.get("evaluated"):
        return f"{head}, the values after the final update (no meta-iteration has trained with them yet)"
    objective = described.get("objective")
    scored = "objective not finite" if objective is None else f"objective {objective:.6g}"
    return f"{head}, the values meta-iteration {k} trained with ({scored})"
