"""`worker.runner._failure`: the message a failed job shows, per kind of error, and which errors
leave their traceback in the log."""

from __future__ import annotations

import logging

import pytest

from hypercore.hyper import ConfigError
from hypercore.meta import MetaDivergedError
from hypercore.tune import CheckpointError, ReversalError
from worker import runner
from worker.runner import JobInputError, _failure


@pytest.mark.parametrize(
    ("error", "message", "logged"),
    [
        (
            MetaDivergedError("objective nan"),
            "the meta-optimisation diverged: objective nan "
            "(hyperparameters.learning_rate.init, meta.learning_rate)",
            None,
        ),
        (ReversalError("bits differ"), "exact reversal failed: bits differ", None),
        (
            CheckpointError("wrong keys"),
            "the job's checkpoint cannot be resumed (wrong keys); resubmit the spec",
            "job j1: unreadable checkpoint",
        ),
        (ConfigError("model.kind", "unknown"), "model.kind: unknown", None),
        (JobInputError("dataset.id: gone"), "dataset.id: gone", None),
        (
            KeyError("x"),
            "internal error (KeyError: 'x'); the worker log has the details",
            "job j1 failed unexpectedly",
        ),
    ],
)
def test_each_error_becomes_the_message_a_user_reads(error, message, logged, caplog):
    with caplog.at_level(logging.ERROR, logger=runner.__name__):
        try:
            raise error
        except Exception as e:
            assert _failure("j1", e, "unreadable checkpoint") == message
    assert [r.getMessage() for r in caplog.records] == ([logged] if logged else [])
    assert all(r.exc_info is not None for r in caplog.records)
