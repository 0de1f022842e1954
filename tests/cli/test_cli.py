"""The ``revtune`` job commands against a live server, and ``revtune run`` with no server at all."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from client.live import TINY_LAYERS, TINY_SPEC, WARNED_SPEC, Service, tiny_spec

from revtune import Client
from revtune.cli import main

ITERATIONS = TINY_SPEC["meta"]["iterations"]
STEPS = TINY_SPEC["training"]["steps"]


def revtune(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPEC))
    return path


def test_submit_wait_then_read_everything_back(service: Service, spec_file, tmp_path, capsys):
    url = ("--url", service.url)
    rc, out, err = revtune(capsys, "submit", spec_file, "--wait", "--json", *url)
    assert rc == 0, err
    job = json.loads(out)
    assert job["status"] == "succeeded" and job["meta_iter"] == ITERATIONS
    assert f"{ITERATIONS}/{ITERATIONS} meta-iterations" in err.splitlines()[-1]

    rc, out, _ = revtune(capsys, "jobs", *url)
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["ID", "NAME", "STATUS", "PROGRESS", "BEST"]
    row = next(r for r in rows if r.startswith(job["id"]))
    assert row.split()[1:4] == ["tiny-digits", "succeeded", f"{ITERATIONS}/{ITERATIONS}"]
    rc, out, _ = revtune(capsys, "jobs", "--status", "succeeded", "--json", *url)
    assert job["id"] in {j["id"] for j in json.loads(out)}

    rc, out, _ = revtune(capsys, "show", job["id"], *url)
    assert rc == 0 and "succeeded" in out and f"{ITERATIONS}/{ITERATIONS} meta-iterations" in out
    assert f"best       {job['best']['objective']:.6g}" in out

    rc, out, _ = revtune(capsys, "steps", job["id"], *url)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["meta_iter", "objective", "train_loss"]
    assert [line.split()[0] for line in lines[1:]] == [str(k) for k in range(ITERATIONS)]
    rc, out, _ = revtune(capsys, "steps", job["id"], "--after", ITERATIONS - 2, "--json", *url)
    assert [s["meta_iter"] for s in json.loads(out)] == [ITERATIONS - 1]

    rc, out, _ = revtune(capsys, "hyper", job["id"], *url)
    names = {line.split()[0] for line in out.splitlines()[1:]}
    assert {"learning_rate", "momentum", "init_scale"} <= names

    rc, out, _ = revtune(capsys, "hyper", job["id"], "learning_rate", *url)
    lines = out.splitlines()
    assert lines[0].startswith(
        f"learning_rate after meta-iteration {ITERATIONS}: shape [{STEPS}, {TINY_LAYERS}]"
    )
    assert len(lines[1].split()) == 1 + TINY_LAYERS and len(lines) == 2 + STEPS

    npy = tmp_path / "lr.npy"
    rc, _, err = revtune(capsys, "hyper", job["id"], "learning_rate", "--format", "npy", "--out", npy, *url)
    assert rc == 0 and "wrote" in err
    lr = np.load(npy)
    assert lr.shape == (STEPS, TINY_LAYERS)
    rc, out, _ = revtune(capsys, "hyper", job["id"], "learning_rate", "--json", *url)
    np.testing.assert_array_equal(np.asarray(json.loads(out)["values"]), lr)
    rc, out, _ = revtune(capsys, "hyper", job["id"], "learning_rate", "--format", "csv", *url)
    rows = list(csv.reader(io.StringIO(out)))
    # long format: a header, then one row per (step, layer) value in C order
    assert rows[0] == ["step", "layer", "value"] and len(rows) == 1 + STEPS * TINY_LAYERS
    np.testing.assert_array_equal([float(r[-1]) for r in rows[1:]], lr.ravel())


def test_a_jobs_warnings_are_printed_as_they_appear_and_with_the_job(service: Service, tmp_path, capsys):
    path = tmp_path / "warned.yaml"
    path.write_text(yaml.safe_dump(WARNED_SPEC))
    url = ("--url", service.url)
    rc, out, err = revtune(capsys, "submit", path, "--wait", *url)
    assert rc == 0, err
    # the progress bar's stream: each warning once, when the job gains it
    noted = [line for line in err.splitlines() if line.startswith("warning")]
    assert [line.split(":")[0] for line in noted] == ["warning (diverged)", "warning (chaos_guard)"]
    job_id = out.splitlines()[0].split()[1]
    with Client(service.url) as client:
        warnings = client.get(job_id)["warnings"]
    assert [w["code"] for w in warnings] == ["diverged", "chaos_guard"]
    expected = [f"warning    {w['code']} (from meta-iteration 1): {w['message']}" for w in warnings]
    assert "in 2 of the 4 meta-iterations so far" in expected[0]

    for printed in (out, revtune(capsys, "show", job_id, *url)[1]):
        assert "status     succeeded" in printed
        assert [line for line in printed.splitlines() if line.startswith("warning")] == expected

    rc, out, _ = revtune(capsys, "jobs", *url)
    header, *rows = out.splitlines()
    assert header.split()[-1] == "WARNINGS"
    assert next(r for r in rows if r.startswith(job_id)).split()[-1] == "2"


def test_templates_list_and_print_a_spec_to_start_from(service: Service, capsys):
    rc, out, _ = revtune(capsys, "templates", "--url", service.url)
    names = out.split()
    assert rc == 0 and names
    rc, out, _ = revtune(capsys, "templates", names[0], "--url", service.url)
    spec = yaml.safe_load(out)
    assert {"dataset", "model", "training", "hyperparameters"} <= set(spec)


def test_cancel_a_running_job(service: Service, tmp_path, capsys):
    path = tmp_path / "long.json"
    path.write_text(json.dumps(tiny_spec(name="long", meta={"iterations": 200, "optimizer": "adam"})))
    rc, out, _ = revtune(capsys, "submit", path, "--json", "--url", service.url)
    job_id = json.loads(out)["id"]
    rc, out, _ = revtune(capsys, "cancel", job_id, "--url", service.url)
    assert rc == 0 and job_id in out
    with Client(service.url) as client:
        assert client.wait(job_id, progress=False, poll=0.2, timeout=120)["status"] == "cancelled"
    rc, out, _ = revtune(capsys, "delete", job_id, "--url", service.url)
    assert rc == 0 and f"deleted {job_id}" in out


def test_mistakes_are_one_line_errors(service: Service, tmp_path, capsys):
    rc, _, err = revtune(capsys, "show", "no-such-job", "--url", service.url)
    assert rc == 2 and err.startswith("revtune: error:") and "404" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_spec(training={"steps": 10**9})))
    rc, _, err = revtune(capsys, "submit", bad, "--url", service.url)
    assert rc == 2 and "training.steps" in err and "Traceback" not in err
    rc, _, err = revtune(capsys, "submit", "--url", service.url)
    assert rc == 2 and "spec FILE or --template NAME" in err
    rc, _, err = revtune(capsys, "submit", tmp_path / "missing.yaml", "--url", service.url)
    assert rc == 2 and "missing.yaml" in err


def test_run_tunes_locally_and_writes_results(spec_file, tmp_path):
    """`revtune run` as users run it: the console entry point in a fresh process, no server."""
    out_dir = tmp_path / "out"
    code = "import sys; from revtune.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", str(spec_file), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{ITERATIONS}/{ITERATIONS} meta-iterations" in proc.stderr
    steps = [json.loads(line) for line in (out_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["meta_iter"] for s in steps] == list(range(ITERATIONS))
    assert all(s["reversal_exact"] and np.isfinite(s["objective"]) for s in steps)
    with (out_dir / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["objective"]) for r in rows] == [s["objective"] for s in steps]
    lr = np.load(out_dir / "hyperparameters" / "learning_rate.npy")
    meta = json.loads((out_dir / "hyperparameters" / "learning_rate.json").read_text())
    assert lr.shape == (STEPS, TINY_LAYERS) and meta["axes"] == ["step", "layer"]
    assert len(meta["labels"]["layer"]) == TINY_LAYERS
    np.testing.assert_array_equal(np.asarray(meta["values"]), lr)
    assert not np.allclose(lr, TINY_SPEC["hyperparameters"]["learning_rate"]["init"])
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["best"]["objective"] == min(s["objective"] for s in steps)
    assert "best objective" in proc.stdout
    # OUT/best: what the best meta-iteration trained with (the initial values if it was the first)
    k = summary["best"]["meta_iter"]
    best = json.loads((out_dir / "best" / "learning_rate.json").read_text())
    assert best["meta_iter"] == k and best["axes"] == ["step", "layer"]
    import hypercore  # the same run in this process: bit for bit

    again = hypercore.tune(hypercore.problem_from_spec(TINY_SPEC), iterations=k + 1).records[k]
    for name, value in again.trained_with.items():
        np.testing.assert_array_equal(np.load(out_dir / "best" / f"{name}.npy"), value.values, err_msg=name)
    assert "best/*.npy|json" in proc.stdout


def test_run_refuses_a_bad_spec_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_spec(training={"steps": 0})))
    rc, _, err = revtune(capsys, "run", bad, "--out", tmp_path / "o")
    assert rc == 2 and "training.steps" in err


def test_datasets_lists_each_uploads_example_shape_and_target(service: Service, tmp_path, capsys):
    rng = np.random.default_rng(1)
    images, targets = tmp_path / "images.npz", tmp_path / "targets.npz"
    np.savez(images, X=rng.normal(size=(20, 6, 5)), y=np.arange(20) % 2)
    np.savez(targets, X=rng.normal(size=(20, 3)), y=rng.normal(size=(20, 2)))
    for path in (images, targets):
        rc, out, err = revtune(capsys, "upload", path, "--name", path.stem, "--url", service.url)
        assert rc == 0, err
    rc, out, _ = revtune(capsys, "datasets", "--url", service.url)
    header, *rows = out.splitlines()
    columns = header.split()
    assert columns[5:9] == ["EXAMPLE_SHAPE", "TARGET", "N_OUTPUTS", "N_TASKS"]
    cells = {row.split()[1]: row.split() for row in rows}
    assert cells["images"][5:8] == ["6x5", "class", "2"]
    assert cells["targets"][5:8] == ["3", "real", "2"]


def test_a_reader_that_goes_away_gets_no_traceback(service: Service):
    """``revtune templates | head -1``: the reader closes the pipe before the CLI has written."""
    cli = [sys.executable, "-c", "import sys; from revtune.cli import main; sys.exit(main())"]
    proc = subprocess.Popen(
        [*cli, "templates", "--url", service.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
