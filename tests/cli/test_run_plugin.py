"""``revtune run`` on a spec whose model is a plugin: the installed plugin is loaded for the run (no
``REVTUNE_MODEL_PLUGINS``: that allow-list is the service's), and the built model is held to the
server's size and memory limits, as a worker holds it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hypercore import budget
from revtune.cli import main

SPEC = {
    "name": "local-plugin",
    "dataset": {"name": "digits", "train": 200, "valid": 100, "test": 100, "batch_size": 50},
    "model": {"kind": "plugin", "name": "resmlp", "config": {"width": 16, "blocks": 2, "smoothing": 0.1}},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True}},
    "meta": {"iterations": 2},
    "seed": 0,
}


def run(tmp_path, capsys, spec):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    out = tmp_path / "out"
    rc = main(["run", str(spec_file), "--out", str(out), "--quiet"])
    _, err = capsys.readouterr()
    return rc, err, out


def test_a_plugin_spec_runs_locally_as_the_library_runs_it(tmp_path, capsys, monkeypatch):
    from hypercore import problem_from_spec, tune
    from hypercore.plugins import load

    monkeypatch.delenv("REVTUNE_MODEL_PLUGINS", raising=False)
    rc, err, out = run(tmp_path, capsys, SPEC)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta_iterations"] == 2 and summary["last"]["reversal_exact"]
    library = tune(problem_from_spec(SPEC, plugins=load(["resmlp"])))
    np.testing.assert_array_equal(
        np.load(out / "hyperparameters" / "learning_rate.npy"),
        np.asarray(library.hyperparameters["learning_rate"].values),
    )


def test_a_plugin_that_is_not_installed_is_named_with_those_that_are(tmp_path, capsys):
    rc, err, out = run(tmp_path, capsys, {**SPEC, "model": {**SPEC["model"], "name": "nosuch"}})
    assert rc == 2
    assert "model.name: the model plugin 'nosuch' is not installed" in err
    assert "(installed: resmlp)" in err and "Traceback" not in err
    assert not out.exists()


def test_a_plugin_config_its_schema_refuses_names_the_field(tmp_path, capsys):
    rc, err, out = run(tmp_path, capsys, {**SPEC, "model": {**SPEC["model"], "config": {"width": "wide"}}})
    assert rc == 2 and "model.config" in err and "width" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("variable", "value", "field", "limit"),
    [
        ("REVTUNE_MAX_WEIGHTS", 100, "model", "at most 100 are allowed"),
        ("REVTUNE_MAX_HYPERPARAMETERS", 10, "hyperparameters", "at most 10 are allowed"),
        # the worker's 1.5 GiB runtime and 1 KiB: the activations counted on the built model (the
        # largest part here, more than the data) do not fit
        (
            "REVTUNE_MAX_JOB_MEMORY_BYTES",
            budget.RUNTIME_BYTES + 2**10,
            "dataset.batch_size",
            "in the worker (activations ",
        ),
    ],
)
def test_the_built_plugin_model_is_held_to_the_servers_limits(
    tmp_path, capsys, monkeypatch, variable, value, field, limit
):
    monkeypatch.setenv(variable, str(value))
    rc, err, out = run(tmp_path, capsys, SPEC)
    assert rc == 2
    assert f"invalid spec: {field}: " in err and limit in err
    assert not out.exists()
