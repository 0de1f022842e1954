"""The model plugins the workers offer (`jobs.models.ModelPluginAd`), for the API, which cannot import them.

A worker process writes its plugins at start-up (`advertise_plugins`), refreshes their ``seen_at``
on every reaper pass (`refresh_plugins`) and removes them when it stops (`withdraw_plugins`). A
plugin counts as offered while some worker seen within ``live_within_s`` (by the database's clock)
has it: a worker killed without its clean-up stops counting after that window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from jobs.models import ModelPluginAd, db_now


@dataclasses.dataclass(frozen=True)
class OfferedPlugin:
    """A plugin as the live workers offer it: the most recently seen worker's ``version``,
    ``description`` and ``config_schema``, and every live worker that has it (``{"worker", "version"}``)."""

    name: str
    version: str
    description: str
    config_schema: dict[str, Any]
    workers: list[dict[str, str]]


def advertise_plugins(session: Session, worker_id: str, plugins: Iterable[Mapping[str, Any]]) -> None:
    """Replace ``worker_id``'s advertisements by ``plugins`` (each ``{name, version, description,
    config_schema}``, `hypercore.plugins.ModelPlugin.advertisement`)."""
    session.execute(delete(ModelPluginAd).where(ModelPluginAd.worker_id == worker_id))
    for plugin in plugins:
        session.add(
            ModelPluginAd(
                worker_id=worker_id,
                name=plugin["name"],
                version=plugin["version"],
                description=plugin["description"],
                config_schema=dict(plugin["config_schema"]),
            )
        )
    session.flush()
    session.execute(
        update(ModelPluginAd)
        .where(ModelPluginAd.worker_id == worker_id)
        .values(seen_at=db_now())
        .execution_options(synchronize_session=False)
    )


def refresh_plugins(session: Session, worker_id: str) -> None:
    """``worker_id`` is alive: its advertisements count for another ``live_within_s``."""
    session.execute(
        update(ModelPluginAd)
        .where(ModelPluginAd.worker_id == worker_id)
        .values(seen_at=db_now())
        .execution_options(synchronize_session=False)
    )


def withdraw_plugins(session: Session, worker_id: str) -> None:
    """``worker_id`` stops: it offers nothing any more."""
    session.execute(delete(ModelPluginAd).where(ModelPluginAd.worker_id == worker_id))


def offered_plugins(session: Session, *, live_within_s: float) -> list[OfferedPlugin]:
    """Every plugin some worker seen in the last ``live_within_s`` seconds offers, by name."""
    rows = session.scalars(
        select(ModelPluginAd)
        .where(ModelPluginAd.seen_at >= db_now(-live_within_s))
        .order_by(ModelPluginAd.name, ModelPluginAd.seen_at.desc(), ModelPluginAd.worker_id)
    ).all()
    by_name: dict[str, list[ModelPluginAd]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    return [
        OfferedPlugin(
            name=name,
            version=ads[0].version,
            description=ads[0].description,
            config_schema=dict(ads[0].config_schema),
            workers=sorted(({"worker": ad.worker_id, "version": ad.version} for ad in ads), key=str),
        )
        for name, ads in by_name.items()
    ]


def offered_plugin(session: Session, name: str, *, live_within_s: float) -> OfferedPlugin | None:
    """The plugin ``name`` if a live worker offers it (`offered_plugins`), else None."""
    return next((p for p in offered_plugins(session, live_within_s=live_within_s) if p.name == name), None)
