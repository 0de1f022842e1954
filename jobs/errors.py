"""Domain errors, raised by the repository and mapped to HTTP codes in one place (`api.errors`)."""

from __future__ import annotations


class JobsError(Exception):
    """Base of the domain errors; the message is meant for the user."""


class NotFound(JobsError):
    """No such resource for this tenant (another tenant's resource is reported the same way). 404."""


class Conflict(JobsError):
    """The request clashes with the resource's state (deleting a running job, ...). 409."""


class InvalidInput(JobsError):
    """A request field is wrong in a way the schema cannot see. 422; ``loc`` names the field."""

    def __init__(self, loc: list[str | int], msg: str):
        super().__init__(f"{'.'.join(str(p) for p in loc)}: {msg}")
        self.loc, self.msg = loc, msg
