"""``revtune continue`` (and `Client.continue_job`) against the shared live server and its real
worker: a finished job runs more meta-iterations and ends as one job run for the sum would."""

from __future__ import annotations

import pytest
from client.live import Service, tiny_spec

from revtune import Client
from revtune.cli import main

pytestmark = pytest.mark.integration


def revtune(capsys, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_continue_a_finished_job_to_the_same_end_as_one_run(service: Service, capsys):
    with Client(service.url) as client:
        # a long job ahead of it on the one worker, so that "short" is still queued when continued
        # (alone, a two-iteration job could finish before the command runs)
        ahead = client.submit(tiny_spec(name="ahead", meta={"iterations": 500, "optimizer": "adam"}))
        short = client.submit(tiny_spec(name="short", meta={"iterations": 2}))["id"]
        rc, _, err = revtune(capsys, "continue", short, "--iterations", 2, "--url", service.url)
        client.cancel(ahead)
        assert rc == 2 and "continue it once it has finished" in err  # still queued
        assert client.wait(short)["status"] == "succeeded"

        rc, out, err = revtune(capsys, "continue", short, "--iterations", 2, "--wait", "--url", service.url)
        assert rc == 0, err
        assert "status     succeeded" in out and "4/4 meta-iterations" in err.splitlines()[-1]

        whole = client.wait(client.submit(tiny_spec(name="whole", meta={"iterations": 4})))
        assert [s["objective"] for s in client.steps(short)] == [s["objective"] for s in client.steps(whole)]
        ours, theirs = (client.hyperparameters(j, "learning_rate") for j in (short, whole["id"]))
        assert ours.meta_iter == theirs.meta_iter == 4
        assert (ours.values == theirs.values).all()
