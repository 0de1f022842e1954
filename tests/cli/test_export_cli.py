"""``revtune export`` and `Client.export` against a live server whose real worker ran the job."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from client.live import TINY_LAYERS, TINY_SPEC, Service, shared_service

from revtune import Client
from revtune.cli import main

ITERATIONS = TINY_SPEC["meta"]["iterations"]
STEPS = TINY_SPEC["training"]["steps"]


def revtune(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def finished(request, tmp_path_factory) -> tuple[Service, dict]:
    service = shared_service(request, tmp_path_factory)
    with Client(service.url) as client:
        job = client.wait(client.submit(TINY_SPEC), timeout=300, progress=False)
    assert job["status"] == "succeeded", job
    return service, job


def test_export_defaults_to_best_and_says_which_snapshot_it_wrote(finished, tmp_path, capsys):
    service, job = finished
    best = job["best"]["meta_iter"]
    rc, out, err = revtune(capsys, "export", job["id"], "--to", "npz", "-o", tmp_path, "--url", service.url)
    assert rc == 0, err
    path = tmp_path / f"{job['id']}-best-{best}.npz"
    written, resolved = out.splitlines()
    assert written.startswith(f"wrote {path} (")
    assert resolved.startswith(
        f"which=best: hyperparameter snapshot meta_iter {best}, the values meta-iteration"
    )
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["__export__"]))["meta_iter"] == best
        assert z["learning_rate"].shape == (STEPS, TINY_LAYERS)
        with Client(service.url) as client:
            lr = client.hyperparameters(job, "learning_rate", meta_iter=best).values
        np.testing.assert_array_equal(z["learning_rate"], lr)


def test_export_last_for_optax_to_a_named_file(finished, tmp_path, capsys):
    service, job = finished
    target = tmp_path / "mine.zip"
    rc, out, err = revtune(
        capsys, "export", job["id"], "--which", "last", "--to", "optax", "-o", target, "--url", service.url
    )
    assert rc == 0, err
    assert (
        f"which=last: hyperparameter snapshot meta_iter {ITERATIONS}, the values after the final update"
        in out
    )
    with zipfile.ZipFile(target) as z:
        assert "train_optax.py" in z.namelist()
        with np.load(io.BytesIO(z.read("schedule.npz")), allow_pickle=False) as schedule:
            assert schedule["lr/layer0.W"].shape == schedule["momentum/layer1.b"].shape == (STEPS,)


def test_the_client_writes_the_servers_file_name_and_the_cli_reports_refusals(
    finished, tmp_path, capsys, monkeypatch
):
    service, job = finished
    monkeypatch.chdir(tmp_path)
    with Client(service.url) as client:
        path = client.export(job, which="1", to="pytorch")
    assert path == tmp_path / f"{job['id']}-1-1-pytorch.zip" and zipfile.is_zipfile(path)
    rc, out, _ = revtune(
        capsys, "export", job["id"], "--which", "1", "--to", "npz", "--json", "--url", service.url
    )
    assert rc == 0 and json.loads(out)["meta_iter"] == 1 and json.loads(out)["which"] == "1"
    rc, _, err = revtune(capsys, "export", job["id"], "--which", "soon", "--to", "npz", "--url", service.url)
    assert rc == 2 and "which" in err and "non-negative integer" in err
    rc, _, err = revtune(
        capsys, "export", job["id"], "--which", ITERATIONS + 1, "--to", "npz", "--url", service.url
    )
    assert rc == 2 and "404" in err and f"finished {ITERATIONS} meta-iterations" in err
