"""Job states and the transitions between them.

::

    queued --claim--> running --finish--> succeeded | failed | cancelled
       |                 |
       |                 +--requeue--> queued     (worker died or shut down: resume from checkpoint)
       +--cancel--> cancelled                     (never started)

The database is the source of truth: every status write goes through `check_transition`, so a
late message from a worker that lost its claim cannot move a finished job.
"""

from __future__ import annotations

from enum import StrEnum

from jobs.errors import Conflict


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
ACTIVE = frozenset({Status.QUEUED, Status.RUNNING})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.QUEUED}),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class IllegalTransition(Conflict):
    """A status change the state machine forbids (e.g. ``succeeded -> running``)."""


def can_transition(old: str, new: str) -> bool:
    return Status(new) in TRANSITIONS[Status(old)]


def check_transition(old: str, new: str) -> Status:
    """Return ``new`` as a `Status` if ``old -> new`` is allowed; raise `IllegalTransition` if not."""
    if not can_transition(old, new):
        allowed = ", ".join(sorted(TRANSITIONS[Status(old)])) or "none: it is final"
        raise IllegalTransition(f"a {old} job cannot become {new} (allowed from {old}: {allowed})")
    return Status(new)
