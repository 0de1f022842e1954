"""Job states and the transitions between them.

::

    queued --claim--> running --finish--> succeeded | failed | cancelled
       |                 |                        |                 |
       |                 |                        +--continue--> queued   (more meta-iterations,
       |                 |                                                 from the checkpoint)
       |                 +--requeue--> queued     (worker died or shut down: resume from checkpoint)
       +--cancel--> cancelled                     (never started)

A succeeded or cancelled job may be continued (`jobs.repository.continue_job`): it goes back to the
queue with more meta-iterations and resumes from its checkpoint. A failed one may not (its run
cannot go on as it was); a new job can start from its values instead.

A library run the service records (origin ``external``, `Origin`) is created ``running`` by its
recorder, is never queued, and may be resumed from ``failed`` (its last recorder died or its run
raised) by a new recorder: ``EXTERNAL_TRANSITIONS``.

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
    Status.SUCCEEDED: frozenset({Status.QUEUED}),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset({Status.QUEUED}),
}


# A library run: no queue; a failed one may be resumed (its steps so far are kept).
EXTERNAL_TRANSITIONS: dict[Status, frozenset[Status]] = {
    **TRANSITIONS,
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset({Status.RUNNING}),
    Status.CANCELLED: frozenset(),
}


class Origin(StrEnum):
    """Who runs a job: a worker of the service, or the user's own library run that a client records."""

    SERVICE = "service"
    EXTERNAL = "external"


class IllegalTransition(Conflict):
    """A status change the state machine forbids (e.g. ``succeeded -> running``)."""


def _table(origin: str) -> dict[Status, frozenset[Status]]:
    return EXTERNAL_TRANSITIONS if origin == Origin.EXTERNAL else TRANSITIONS


def can_transition(old: str, new: str, origin: str = Origin.SERVICE) -> bool:
    return Status(new) in _table(origin)[Status(old)]


def check_transition(old: str, new: str, origin: str = Origin.SERVICE) -> Status:
    """Return ``new`` as a `Status` if ``old -> new`` is allowed for a job of ``origin``; raise
    `IllegalTransition` if not."""
    if not can_transition(old, new, origin):
        allowed = ", ".join(sorted(_table(origin)[Status(old)])) or "none: it is final"
        raise IllegalTransition(f"a {old} job cannot become {new} (allowed from {old}: {allowed})")
    return Status(new)
