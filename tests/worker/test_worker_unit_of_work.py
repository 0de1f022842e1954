"""`unit_of_work` and `transaction`: one commit per unit, a rollback on any error, and a fresh
attempt (through tenacity) only when the database was unreachable."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from worker import runner
from worker.runner import retryable, transaction, unit_of_work


class _Session:
    """What a unit of work does to its session, for `_Sessions` to count."""

    def __init__(self, log: list[str]):
        self.log = log

    def __enter__(self):
        self.log.append("open")
        return self

    def __exit__(self, *exc_info):
        self.log.append("close")

    def commit(self):
        self.log.append("commit")

    def rollback(self):
        self.log.append("rollback")


class _Sessions:
    def __init__(self):
        self.log: list[str] = []

    def __call__(self):
        return _Session(self.log)


def _outage() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("could not connect to server"))


def _failing(failures: list[Exception]):
    calls = []

    def work(session):
        calls.append(session)
        if failures:
            raise failures.pop(0)
        return "done"

    return work, calls


def test_a_unit_of_work_commits_when_its_block_ends():
    sessions = _Sessions()
    with unit_of_work(sessions) as session:
        session.log.append("work")
    assert sessions.log == ["open", "work", "commit", "close"]


def test_a_retryable_error_is_retried_in_a_fresh_session(caplog):
    sessions = _Sessions()
    work, calls = _failing([_outage(), _outage()])
    with caplog.at_level(logging.WARNING, logger=runner.__name__):
        assert transaction(sessions, work, "testing", delays_s=(0, 0, 0)) == "done"
    assert len(calls) == 3 and len({id(s) for s in calls}) == 3
    # The two failed attempts rolled back; only the third committed.
    assert sessions.log == ["open", "rollback", "close"] * 2 + ["open", "commit", "close"]
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable while testing (could not connect to server); retrying in 0 s"
    ] * 2


def test_an_invalidated_connection_is_retryable_and_other_dbapi_errors_are_not():
    invalidated = DBAPIError(
        "SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True
    )
    assert retryable(_outage()) and retryable(invalidated)
    assert not retryable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not retryable(ValueError("no"))
    sessions = _Sessions()
    work, calls = _failing([invalidated])
    assert transaction(sessions, work, "testing", delays_s=(0,)) == "done"
    assert len(calls) == 2


def test_a_non_retryable_error_rolls_back_and_propagates_at_once():
    sessions = _Sessions()
    work, calls = _failing([IntegrityError("INSERT", {}, Exception("duplicate key"))])
    with pytest.raises(IntegrityError):
        transaction(sessions, work, "testing", delays_s=(0, 0))
    assert len(calls) == 1
    assert sessions.log == ["open", "rollback", "close"]


def test_an_error_that_is_not_the_database_s_rolls_back_and_propagates():
    sessions = _Sessions()
    work, calls = _failing([KeyError("meta_iter")])
    with pytest.raises(KeyError):
        transaction(sessions, work, "testing", delays_s=(0, 0))
    assert len(calls) == 1 and sessions.log == ["open", "rollback", "close"]


def test_an_outage_longer_than_the_delays_propagates_after_the_last_attempt():
    sessions = _Sessions()
    work, calls = _failing([_outage()] * 3)
    with pytest.raises(OperationalError):
        transaction(sessions, work, "testing", delays_s=(0, 0))
    assert len(calls) == 3 and "commit" not in sessions.log


def test_a_rolled_back_unit_of_work_leaves_nothing_in_a_real_database(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'uow.db'}")
    sessions = sessionmaker(engine)
    with unit_of_work(sessions) as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))

    def insert_then_fail(session):
        session.execute(text("INSERT INTO t VALUES (1)"))
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        transaction(sessions, insert_then_fail, "testing", delays_s=(0,))
    transaction(sessions, lambda session: session.execute(text("INSERT INTO t VALUES (2)")), "testing")
    with sessions() as session:
        assert session.execute(text("SELECT x FROM t")).scalars().all() == [2]
    engine.dispose()
