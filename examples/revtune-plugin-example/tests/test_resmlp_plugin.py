"""The example plugin: found through its entry point, its config checked by its schema, its loss the
label-smoothed cross-entropy, and tuned by the engine with exact reversal, as a spec names it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from revtune_plugin_example import ResidualMLP, resmlp

import hypercore
from hypercore import data, plugins
from hypercore.families import DatasetShape
from hypercore.models import nll
from hypercore.spec import problem_from_spec

SPEC = {
    "dataset": {"name": "digits", "train": 60, "valid": 30},
    "model": {"kind": "plugin", "name": "resmlp", "config": {"width": 12, "blocks": 2, "smoothing": 0.1}},
    "training": {"steps": 8},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "layer", "learn": True},
        "init_scale": {"init": 0.2, "granularity": "layer", "learn": True},
    },
    "meta": {"iterations": 2},
}


@pytest.fixture(scope="module")
def loaded():
    return plugins.load(["resmlp"])


def test_the_entry_point_is_installed_with_its_schema_and_description(loaded):
    plugin = loaded["resmlp"]
    assert plugin.factory is resmlp
    assert plugin.config_schema["required"] == ["width"]
    assert plugin.description.startswith("a residual MLP")
    assert plugin.version == "0.1.0"


def test_a_config_its_schema_refuses_names_the_field(loaded):
    shape = DatasetShape(n_features=64, n_classes=10)
    with pytest.raises(
        plugins.PluginError, match=r"^model\.config\.blocks: 9 is greater than the maximum of 8"
    ):
        loaded["resmlp"].build({"width": 4, "blocks": 9}, shape)
    with pytest.raises(plugins.PluginError, match=r"^model\.config: 'width' is a required property"):
        loaded["resmlp"].build({}, shape)


def test_the_model_has_residual_blocks_and_a_label_smoothed_loss():
    model = resmlp({"width": 5, "blocks": 2}, DatasetShape(n_features=3, n_classes=4))
    assert list(model.shapes) == [
        "in.W",
        "in.b",
        "block0.W",
        "block0.b",
        "block1.W",
        "block1.b",
        "out.W",
        "out.b",
    ]
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 3, 0, 1])
    unsmoothed = ResidualMLP(3, 5, 4, smoothing=0.0)
    np.testing.assert_allclose(unsmoothed.training_loss(logits, y), nll(logits, y), rtol=1e-6)
    # smoothing s adds s * (mean over classes of -log p) and takes s of the NLL away
    s, logp = 0.2, jax.nn.log_softmax(logits)
    expected = (1 - s) * nll(logits, y) + s * -jnp.mean(logp)
    np.testing.assert_allclose(
        ResidualMLP(3, 5, 4, smoothing=s).training_loss(logits, y), expected, rtol=1e-6
    )


def test_the_spec_tunes_it_bit_identically_to_the_model_built_by_hand(loaded):
    from_spec = hypercore.tune(problem_from_spec(SPEC, plugins=loaded))
    ds = data.load("digits", 60, 30, 0, seed=0)
    hypers = {
        "learning_rate": hypercore.Hyper("learning_rate", 0.3, "layer", learn=True),
        "init_scale": hypercore.Hyper("init_scale", 0.2, "layer", learn=True),
    }
    model = ResidualMLP(64, 12, 10, blocks=2, smoothing=0.1)
    by_hand = hypercore.tune(hypercore.Problem.build(model, ds, hypers, steps=8, iterations=2))
    assert len(from_spec.records) == 2
    for a, b in zip(from_spec.records, by_hand.records, strict=True):
        assert (a.objective, a.hypergrad_norm) == (b.objective, b.hypergrad_norm)
        assert a.reversal_exact is not False
        for name, value in a.hyperparameters.items():
            np.testing.assert_array_equal(value.values, b.hyperparameters[name].values)
    assert np.isfinite(from_spec.records[-1].objective)
