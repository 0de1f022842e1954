"""`changed`: a job spec with some nested fields set, named by ``__``-joined paths."""

from __future__ import annotations

from typing import Any


def changed(spec: dict, **changes: Any) -> dict:
    """``spec`` (changed in place, and returned) with each ``a__b__c=value`` set at ``spec[a][b][c]``."""
    for path, value in changes.items():
        *head, last = path.split("__")
        node = spec
        for part in head:
            node = node[part]
        node[last] = value
    return spec
