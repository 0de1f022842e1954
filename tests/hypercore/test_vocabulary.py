"""The description half of hypercore: JAX-free, and the engine's own shapes and kinds."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import hypercore
from hypercore import arrays, cnn, families, models, rules, vocab
from hypercore.hyper import DEFAULTS, Hyper


def _loaded(code: str) -> list[str]:
    probe = (
        f"import sys, json; {code}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jax', 'jaxlib', 'optax', 'hypercore'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "code",
    [
        "import hypercore",
        "import hypercore.vocab, hypercore.families, hypercore.rules, hypercore.arrays, hypercore.steps",
        "import jobs, jobs.spec, jobs.settings, jobs.templates, jobs.repository, jobs.states",
        "import api, api.app",
        "import revtune.cli",
    ],
)
def test_the_description_half_imports_no_jax(code):
    loaded = _loaded(code)
    assert not [m for m in loaded if not m.startswith("hypercore")], loaded
    assert set(loaded) <= hypercore.DESCRIPTION_MODULES


def test_an_engine_name_loads_the_engine_on_first_use():
    loaded = _loaded("import hypercore; hypercore.tune")
    assert "jax" in loaded and "hypercore.tune" in loaded
    code = "import jax, hypercore; hypercore.Problem; assert jax.config.jax_enable_x64"
    assert "hypercore.tune" in _loaded(code)


@pytest.mark.parametrize(
    ("model", "build"),
    [
        ({"kind": "mlp", "hidden": [5, 3]}, lambda f, c, t: models.mlp(f, [5, 3], c)),
        ({"kind": "logreg"}, lambda f, c, t: models.logistic_regression(f, c)),
        ({"kind": "toy2d"}, lambda f, c, t: models.toy2d()),
        ({"kind": "multitask_mlp", "hidden": [4]}, lambda f, c, t: models.multitask_mlp(f, [4], c, t)),
        (
            {"kind": "cnn", "channels": [2, 3], "kernel": 5, "pool": 1, "hidden": [4]},
            lambda f, c, t: cnn.cnn((7, 1), c, [2, 3], kernel=5, pool=1, hidden=[4]),
        ),
        ({"kind": "cnn1d", "channels": [2], "pool": 3}, lambda f, c, t: cnn.cnn1d((7,), c, [2], pool=3)),
    ],
)
def test_every_family_has_the_engine_models_shapes(model, build):
    assert set(families.FAMILIES) == {"mlp", "logreg", "toy2d", "multitask_mlp", "cnn", "cnn1d"}
    built = build(7, 3, 4)
    shape = families.DatasetShape(n_features=7, n_classes=3, n_tasks=4, example_shape=(7, 1))
    if model["kind"] == "cnn1d":
        shape = dataclasses.replace(shape, example_shape=(7,))
    assert families.parameter_shapes(model, shape) == {k: tuple(v) for k, v in built.shapes.items()}
    if model["kind"] == "multitask_mlp":
        assert families.sharing_layers(built.shapes) == built.sharing_layers()


def test_the_builtin_shapes_are_the_loaders():
    for name, shape in families.BUILTIN_DATASETS.items():
        info = arrays.builtin_info(name)
        assert (shape.n_rows, shape.n_features, shape.n_classes) == (
            info["n_examples"],
            info["n_features"],
            info["n_classes"],
        )
    ds = arrays.load("mnist5k_tasks", 100, 100)
    assert (ds.n_tasks, families.BUILTIN_DATASETS["mnist5k_tasks"].split_unit) == (10, 100)


def test_the_kinds_table_drives_the_engine():
    assert tuple(DEFAULTS) == vocab.DEFAULT_KINDS == ("learning_rate", "momentum", "init_scale", "l2")
    for name, kind in vocab.KINDS.items():
        for natural in (0.25, 0.75):
            raw = vocab.to_raw(name, np.float64(natural))
            np.testing.assert_allclose(vocab.to_natural(name, raw), natural, rtol=1e-12)
        for granularity in vocab.GRANULARITIES:
            init = "data" if kind.data_init else 0.5
            problems = vocab.check_setting(name, init, granularity, True)
            assert (not problems) == (granularity in kind.granularities), (name, granularity)
    assert [field for field, _ in vocab.check_setting("l2", 0.0, "layer", True)] == ["init", "learn"]
    assert vocab.is_off("l2", 0.0) and Hyper("l2", 0.0).off and not Hyper("l2", 1e-3).off


def test_counting_matches_the_engines_layout():
    """`rules.count_hyperparameters` (what the server limits) counts what the engine lays out."""
    import jax

    spec = {
        "dataset": {"name": "digits", "train": 30, "valid": 10},
        "model": {"kind": "mlp", "hidden": [6]},
        "training": {"steps": 5},
        "hyperparameters": {
            "learning_rate": {"init": 0.1, "granularity": "layer_step", "learn": True},
            "l2": {"init": 1e-3, "granularity": "weight", "learn": True},
            "training_data": {"init": "data", "granularity": "weight", "learn": False},
        },
    }
    problem = hypercore.problem_from_spec(spec)
    learned, fixed = problem.hypers.init_raw(jax.random.key(0), problem.dataset.X_train)
    laid_out = sum(np.size(v) for v in {**learned, **fixed}.values())
    assert rules.count_hyperparameters(spec, families.BUILTIN_DATASETS["digits"]) == laid_out


def test_one_step_record_everywhere():
    """The engine's step, the repository's rows, the REST schema and the CLI's CSV columns all read
    `hypercore.steps`; the client's typed copy (httpx only) must agree with it."""
    from api.schemas import StepOut
    from hypercore.steps import STEP_FIELDS, STEP_TYPES, step_dict
    from jobs import repository
    from revtune import _job_cmds
    from revtune.client import Step

    assert list(StepOut.model_fields) == list(STEP_FIELDS) == list(STEP_TYPES)
    assert repository.STEP_FIELDS is STEP_FIELDS and _job_cmds._STEP_COLUMNS is STEP_FIELDS
    assert list(Step.__annotations__) == list(STEP_FIELDS)
    row = step_dict({**dict.fromkeys(STEP_FIELDS, 1.0), "objective": float("nan"), "meta_iter": 3})
    assert row["objective"] is None and row["meta_iter"] == 3 and list(row) == list(STEP_FIELDS)


def test_a_cnns_activations_count_every_feature_map_before_and_after_pooling():
    digits = families.BUILTIN_DATASETS["digits"]
    model = {"kind": "cnn", "channels": [8, 16], "hidden": [32]}
    # input 64, dense 32 + 10; conv0: 8x8x8 then pooled 4x4x8; conv1: 4x4x16 then pooled 2x2x16
    assert families.activation_units(model, digits) == 64 + 32 + 10 + (64 + 16) * 8 + (16 + 4) * 16
    assert families.activation_units({"kind": "mlp", "hidden": [32]}, digits) == 64 + 32 + 10
