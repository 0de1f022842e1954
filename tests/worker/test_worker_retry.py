"""`with_db_retry`: database outages are waited out, other errors are not retried."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from worker.runner import with_db_retry


class _Flaky:
    def __init__(self, failures: list[Exception]):
        self.failures, self.calls = list(failures), 0

    def __call__(self):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def _outage() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("could not connect to server"))


def test_operational_errors_are_retried_until_the_database_answers():
    flaky = _Flaky([_outage(), _outage()])
    assert with_db_retry(flaky, "testing", delays_s=(0, 0, 0)) == "done"
    assert flaky.calls == 3


def test_an_outage_longer_than_the_retries_propagates():
    flaky = _Flaky([_outage()] * 3)
    with pytest.raises(OperationalError):
        with_db_retry(flaky, "testing", delays_s=(0, 0))
    assert flaky.calls == 3


def test_other_database_errors_are_not_retried():
    flaky = _Flaky([IntegrityError("INSERT", {}, Exception("duplicate key"))])
    with pytest.raises(IntegrityError):
        with_db_retry(flaky, "testing", delays_s=(0, 0))
    assert flaky.calls == 1
