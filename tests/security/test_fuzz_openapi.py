"""Property-based fuzzing of every operation in the app's own OpenAPI schema (schemathesis).

For each operation schemathesis generates requests from the schema (valid and, in the negative
phase, invalid ones: wrong types, missing fields, out-of-range numbers, odd strings) and sends them
to a real app on SQLite and on PostgreSQL, authenticated as tenant alice. Every answer must be no
5xx, a status code the schema documents, a documented content type, and a body that matches the
documented schema for its status. Bounded and deterministic (``derandomize``), so CI reruns the
same cases (``REVTUNE_FUZZ_EXAMPLES`` raises the bound; ``REVTUNE_FUZZ_REPORT=file.json`` writes
how many requests each operation got, by status)::

    nice -n 19 .venv/bin/python -m pytest tests/security/test_fuzz_openapi.py -q
"""

from __future__ import annotations

import collections
import io
import json
import os
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from api_support import TINY_SPEC, TestClient, run
from hypothesis import HealthCheck, Phase, settings

import migrations
from api import create_app
from jobs import repository
from jobs.db import session_factory

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import schemathesis
    from schemathesis import checks

from security_support import make_settings  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("REVTUNE_FUZZ_EXAMPLES", "25"))
SENT = [0]
TALLY: collections.defaultdict[str, collections.Counter] = collections.defaultdict(collections.Counter)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def _schema_app():
    """An app only to read the schema from (nothing connects until a request comes)."""
    return create_app(make_settings("sqlite:///:memory:", "/tmp/revtune-schema-only"), enqueue=lambda _: None)


schema = schemathesis.openapi.from_dict(_schema_app().openapi())


class Fuzzed:
    def __init__(self, app, headers: dict[str, str]):
        self.app, self.headers = app, headers
        self.real_ids: dict[str, str] = {}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(request, tmp_path_factory) -> Iterator[Fuzzed]:
    data_dir = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'revtune.db'}"
    else:
        url = request.getfixturevalue("make_postgres_database")("revtune_fuzz")
    migrations.upgrade(url)
    # A generous POST budget: the fuzzer must reach the handlers, not the rate limit (tested apart).
    settings_ = make_settings(url, data_dir).model_copy(update={"post_rate_limit": 100_000})
    with session_factory(settings_)() as s:
        key = repository.create_api_key(s, "alice")[1]
        s.commit()
    app = create_app(settings_, enqueue=lambda _: None)
    headers = {"Authorization": f"Bearer {key}"}
    # Something to find: a finished job with steps and hyperparameters, and a dataset.
    with TestClient(app, headers=headers) as client:
        job = client.post("/v1/jobs", json=TINY_SPEC).json()
        buffer = io.BytesIO()
        np.savez(buffer, X=np.ones((20, 3)), y=np.arange(20) % 2)
        dataset = client.post(
            "/v1/datasets", files={"file": ("d.npz", buffer.getvalue())}, data={"name": "d"}
        )
        dataset_id = dataset.json()["id"]

    class _Service:
        def sessions(self):
            return session_factory(settings_)()

    run(_Service(), job["id"], 2)
    fuzzed_ = Fuzzed(app, headers)
    fuzzed_.real_ids = {"job_id": job["id"], "dataset_id": dataset_id, "name": "learning_rate"}
    yield fuzzed_


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_5xx_or_off_schema(case, fuzzed):
    # Random ids only ever find nothing: every other request uses the real job's and dataset's ids,
    # so that the query parameters are fuzzed against real rows too (not for DELETE: keep them).
    SENT[0] += 1
    if case.method.upper() != "DELETE" and SENT[0] % 2 == 0 and case.path_parameters:
        for name, value in fuzzed.real_ids.items():
            if name in case.path_parameters:
                case.path_parameters[name] = value
    response = case.call(app=fuzzed.app, headers=fuzzed.headers)
    TALLY[f"{case.method.upper()} {case.path}"][str(response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)


@pytest.fixture(scope="session", autouse=True)
def _write_tally():
    """With ``REVTUNE_FUZZ_REPORT=path``, the requests sent per operation and status, as JSON."""
    yield
    if os.environ.get("REVTUNE_FUZZ_REPORT") and TALLY:
        with open(os.environ["REVTUNE_FUZZ_REPORT"], "w") as out:
            json.dump({op: dict(sorted(c.items())) for op, c in sorted(TALLY.items())}, out, indent=1)
