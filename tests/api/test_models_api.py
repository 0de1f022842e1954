"""``GET /v1/models`` and plugin specs at submit, with plugins advertised as a worker would (the API
never imports one); on SQLite and PostgreSQL. tests/e2e runs a real plugin on a real worker."""

from __future__ import annotations

from api_support import TINY_SPEC, problems, submit

from hypercore.families import FAMILIES
from jobs import models, repository

SCHEMA = {
    "type": "object",
    "properties": {"width": {"type": "integer", "minimum": 1}},
    "required": ["width"],
    "additionalProperties": False,
}
PLUGIN_SPEC = {
    **TINY_SPEC,
    "model": {"kind": "plugin", "name": "resmlp", "config": {"width": 8}},
}


def advertise(service, worker_id: str, version: str = "0.1.0", seen_s_ago: float = 0.0) -> None:
    ad = {"name": "resmlp", "version": version, "description": "a residual MLP", "config_schema": SCHEMA}
    with service.sessions() as session:
        repository.advertise_plugins(session, worker_id, [ad])
        session.query(models.ModelPluginAd).filter_by(worker_id=worker_id).update(
            {models.ModelPluginAd.seen_at: models.db_now(-seen_s_ago)}
        )
        session.commit()


def test_models_lists_the_builtin_kinds_and_the_plugins_live_workers_offer(service):
    empty = service.alice.get("/v1/models")
    assert empty.status_code == 200, empty.text
    assert empty.json() == {
        "builtin": [{"kind": kind, "description": family.doc} for kind, family in FAMILIES.items()],
        "plugins": [],
    }
    advertise(service, "host:1")
    advertise(service, "host:2", version="0.0.9", seen_s_ago=1.0)
    advertise(service, "gone:3", seen_s_ago=10 * service.settings.plugin_live_s)
    (plugin,) = service.alice.get("/v1/models").json()["plugins"]
    assert plugin == {
        "kind": "plugin",
        "name": "resmlp",
        "version": "0.1.0",
        "description": "a residual MLP",
        "config_schema": SCHEMA,
        "workers": [{"worker": "host:1", "version": "0.1.0"}, {"worker": "host:2", "version": "0.0.9"}],
    }
    assert service.anonymous.get("/v1/models").status_code == 401


def test_a_plugin_spec_is_refused_on_the_field_it_gets_wrong(service):
    assert problems(service.alice.post("/v1/jobs", json=PLUGIN_SPEC)) == {
        "body.model.name": "no worker offers the model plugin 'resmlp' (GET /v1/models lists those they do)"
    }
    advertise(service, "host:1")
    bad = {**PLUGIN_SPEC, "model": {"kind": "plugin", "name": "resmlp", "config": {"width": 0, "depth": 2}}}
    assert problems(service.alice.post("/v1/jobs", json=bad)) == {
        "body.model.config": "Additional properties are not allowed ('depth' was unexpected)",
        "body.model.config.width": "0 is less than the minimum of 1",
    }
    mixed = {**PLUGIN_SPEC, "model": {**PLUGIN_SPEC["model"], "hidden": [8]}}
    assert problems(service.alice.post("/v1/jobs", json=mixed)) == {
        "body.model.hidden": "a plugin model takes its settings in `model.config`: leave `hidden` out"
    }
    job = submit(service.alice, PLUGIN_SPEC)
    assert job["spec"]["model"] == {"kind": "plugin", "name": "resmlp", "config": {"width": 8}, "hidden": []}
    assert service.enqueued == [job["id"]]
