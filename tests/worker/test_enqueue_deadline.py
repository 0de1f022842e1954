"""`worker.enqueue.enqueue_job` has a deadline (``publish_timeout_s``), whatever the broker does,
and the Redis transport has socket timeouts (`worker.app.redis_transport_options`)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import worker.app
from jobs.settings import Settings
from worker import enqueue
from worker.enqueue import EnqueueError, enqueue_job


def _settings(tmp_path, broker_url: str = "redis://127.0.0.1:1/0", **changes) -> Settings:
    return Settings(data_dir=tmp_path, broker_url=broker_url, **changes)


class FakeCelery:
    def __init__(self, behaviour):
        self.behaviour, self.sent = behaviour, []

    def send_task(self, name, args, queue):
        self.behaviour()
        self.sent.append((name, args, queue))


@pytest.fixture
def fake_broker(monkeypatch):
    def install(behaviour) -> FakeCelery:
        celery = FakeCelery(behaviour)
        monkeypatch.setattr(worker.app, "app_for", lambda settings: celery)
        return celery

    return install


def test_a_publish_that_hangs_fails_at_the_deadline(tmp_path, fake_broker):
    release = threading.Event()
    hung_at: list[float] = []

    def hang() -> None:
        hung_at.append(time.monotonic())
        release.wait(30)

    fake_broker(hang)
    try:
        start = time.monotonic()
        with pytest.raises(EnqueueError, match="did not answer within 0.3 s"):
            enqueue_job("job-1", _settings(tmp_path, publish_timeout_s=0.3))
        end = time.monotonic()
        assert end - start > 0.25, "the caller waited for the publish"
        # Timed from the moment the publish hung (its deadline began just before): the settings
        # and the job's queue, looked up first, are no part of the bound. A caller that waited the
        # default 3 s deadline, or the 30 s hang, fails it.
        waited = end - hung_at[0]
        assert waited < 2.0, f"the caller gave up {waited:.2f} s after the publish hung"
    finally:
        release.set()


def test_a_publish_that_answers_in_time_is_sent_and_a_failure_is_an_enqueue_error(tmp_path, fake_broker):
    celery = fake_broker(lambda: None)
    enqueue_job("job-2", _settings(tmp_path))
    assert celery.sent == [(worker.app.RUN_JOB_TASK, ["job-2"], worker.app.QUEUE)]

    def refuse():
        raise ConnectionRefusedError("no broker")

    fake_broker(refuse)
    with pytest.raises(EnqueueError, match="job-3 on the broker: no broker") as caught:
        enqueue_job("job-3", _settings(tmp_path))
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_hung_publishes_are_bounded_per_process(tmp_path, fake_broker):
    release = threading.Event()
    fake_broker(lambda: release.wait(30))
    settings = _settings(tmp_path, publish_timeout_s=0.2)
    try:
        for i in range(enqueue.MAX_PUBLISHES):
            with pytest.raises(EnqueueError, match="did not answer"):
                enqueue_job(f"hung-{i}", settings)
        threads = threading.active_count()
        with pytest.raises(EnqueueError, match="publishes are still waiting"):
            enqueue_job("one-more", settings)
        assert threading.active_count() == threads, "no thread for a publish that found no slot"
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while enqueue._publish_slots()._value < enqueue.MAX_PUBLISHES:  # the hung ones end and give back
        assert time.monotonic() < deadline
        time.sleep(0.01)
    enqueue_job("after", settings)


def test_the_redis_transport_has_read_and_connect_timeouts(tmp_path):
    app = worker.app.make_app(_settings(tmp_path, broker_socket_timeout_s=1.5))
    options = app.conf.broker_transport_options
    assert options["socket_timeout"] == 1.5 and options["socket_connect_timeout"] == 1.5
    assert app.conf.broker_connection_timeout == 1.5
    embedded = worker.app.make_app(_settings(tmp_path, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db"))
    assert not embedded.conf.broker_transport_options, "the SQLAlchemy transport rejects socket options"


def test_a_real_publish_to_a_broker_that_never_replies_fails_within_the_deadline(tmp_path):
    """A listening socket nobody reads stands for a frozen Redis: connections open, nothing answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        # Socket timeouts of 10 s: without the deadline the publish would fail only after 10 s, on
        # a socket timeout (another message), so the bound below has seconds of margin both ways.
        settings = _settings(tmp_path, broker_url=url, publish_timeout_s=1.0, broker_socket_timeout_s=10)
        start = time.monotonic()
        with pytest.raises(EnqueueError, match="did not answer within 1 s"):
            enqueue_job("frozen", settings)
        took = time.monotonic() - start
        assert took < 5.0, f"the publish failed after {took:.1f} s"
