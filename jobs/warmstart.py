"""Warm starts: a job spec's ``{"from_job": ID, "which": ...}`` inits, resolved into values.

``hyperparameters.<kind>.init`` may name another job of the same tenant and which of its values
to start from (``"best"``, ``"last"`` or a meta-iteration; `jobs.repository.results.resolve_which`
says what each means). The API resolves it when the job is submitted, before the spec is checked:
the stored spec holds the values themselves (an array, or for a kind stored as several arrays a
mapping of their suffixes to arrays, `hypercore.vocab.init_shape`) and ``init_from`` says where
they came from, so the job does not depend on the other job afterwards (deleting it changes
nothing) and a repeat of the same values is a plain array init. The values are natural units, as
the downloads give them; their shape must be this job's (the rules check it, naming the field).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from hypercore import vocab
from jobs import repository
from jobs.errors import Conflict, InvalidInput, NotFound
from jobs.repository.results import resolve_which


def resolve_references(session: Session, tenant_id: str, data: Any) -> Any:
    """``data`` (a submitted spec, not yet checked) with every ``{from_job, which}`` init replaced
    by the values it names; anything else is returned as it is, for the spec's checks to judge.
    `InvalidInput` on ``hyperparameters.<kind>.init`` (``.from_job`` or ``.which``) when the job,
    the snapshot or the hyperparameter is not there."""
    section = data.get("hyperparameters") if isinstance(data, Mapping) else None
    if not isinstance(section, Mapping):
        return data
    wanted = {
        kind: setting
        for kind, setting in section.items()
        if isinstance(setting, Mapping) and vocab.is_reference(setting.get("init"))
    }
    if not wanted:
        return data
    out = copy.deepcopy(dict(data))
    for kind, setting in wanted.items():
        values, origin = _resolve(session, tenant_id, kind, setting["init"])
        out["hyperparameters"][kind] = {**setting, "init": values, "init_from": origin}
    return out


def _resolve(session: Session, tenant_id: str, kind: str, ref: Mapping[str, Any]) -> tuple[Any, dict]:
    field = ["body", "hyperparameters", kind, "init"]
    job_id, which = ref.get("from_job"), ref.get("which", "last")
    if not isinstance(job_id, str) or not job_id or not job_id.isprintable():
        raise InvalidInput([*field, "from_job"], f"must be a job id, got {job_id!r:.60}")
    if isinstance(which, bool) or not isinstance(which, str | int):
        raise InvalidInput(
            [*field, "which"], f"must be 'best', 'last' or a meta-iteration, got {which!r:.60}"
        )
    try:
        repository.get_job(session, tenant_id, job_id)
    except NotFound as e:
        raise InvalidInput([*field, "from_job"], str(e)) from None
    try:
        meta_iter = resolve_which(session, tenant_id, job_id, str(which))
        _, rows = repository.list_hyperparameters(session, tenant_id, job_id, meta_iter=meta_iter)
    except NotFound as e:
        raise InvalidInput([*field, "which"], str(e)) from None
    except (Conflict, InvalidInput) as e:
        raise InvalidInput([*field, "which"], str(getattr(e, "msg", e))) from None
    names = [r.name for r in rows if r.name == kind or r.name.startswith(f"{kind}.")]
    if not names:
        known = ", ".join(sorted({r.name.split(".", 1)[0] for r in rows}))
        raise InvalidInput(
            [*field, "from_job"], f"job {job_id} has no {kind} to start from (it has: {known or 'none'})"
        )

    def values(name: str) -> list | float:
        return repository.get_hyperparameter(
            session, tenant_id, job_id, name, meta_iter=meta_iter
        ).values.tolist()

    if names == [kind]:
        init = values(kind)
    else:
        init = {name.split(".", 1)[1]: values(name) for name in names}
    return init, {"job": job_id, "which": which, "meta_iter": meta_iter}
