"""The ``revtune`` command line: builds the parser from command groups and dispatches.

A command group is a module with ``register(subparsers)`` that adds its commands, each with
``set_defaults(run=callable)``; ``run(args) -> int`` is the exit status. Adding a group is adding
its module to `_command_groups`. A command reports a mistake the user can fix by raising
`CommandError` (from `revtune._common`): its message is printed without a traceback and the exit status is 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from revtune import _export_cmds, _job_cmds, _server_cmds
from revtune._common import CommandError

__all__ = ["CommandError", "build_parser", "main"]


def _command_groups():
    return (_server_cmds, _job_cmds, _export_cmds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revtune",
        description="Tune thousands of hyperparameters by reversing training (SGD, Adam, AdamW) exactly.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _command_groups():
        group.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CommandError as e:
        print(f"revtune: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`revtune steps JOB | head`): what it wanted was written. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
