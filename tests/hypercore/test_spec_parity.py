"""The server's validation and the engine's build agree: the same specs pass, the rest fail on the
same field (issue 14). Both call `hypercore.rules.problems`; this checks that nothing around it
(the server's pydantic schema, the engine's type checks and `Problem.build`) disagrees."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypercore import vocab
from hypercore.spec import SpecError as EngineSpecError
from hypercore.spec import problem_from_spec
from jobs import templates
from jobs.spec import SpecError as ServerSpecError
from jobs.spec import SpecLimits, validate_spec

# Limits far above anything generated: the parity is of the rules, which the engine shares; the
# server's size limits are its own (tests/jobs/test_spec.py).
UNLIMITED = SpecLimits(
    max_steps=10**6,
    max_meta_iterations=10**6,
    max_layers=100,
    max_hidden_width=10**6,
    max_weights=10**9,
    max_hyperparameters=10**9,
    max_dataset_rows=10**6,
    max_features=10**6,
    max_classes=10**6,
)


def server_verdict(spec) -> tuple | None:
    """None if the server accepts ``spec``, else the loc of its first problem."""
    try:
        validate_spec(spec, UNLIMITED)
    except ServerSpecError as e:
        return tuple(e.errors[0]["loc"])
    return None


def engine_verdict(spec) -> tuple | None:
    try:
        problem_from_spec(spec)
    except EngineSpecError as e:
        return e.loc
    except ValueError as e:  # a refusal past the rules (Problem.build): the parity is broken
        return ("engine:" + str(e),)
    return None


@pytest.mark.parametrize("name", templates.names())
def test_every_template_is_accepted_by_both(name):
    spec = templates.get(name)
    if (spec.get("dataset") or {}).get("id"):
        pytest.skip("a template on an upload needs its arrays")
    assert server_verdict(spec) is None
    spec = copy.deepcopy(spec)
    spec["training"]["steps"] = 2  # the build is what is checked: keep it small
    assert engine_verdict(spec) is None


SMALL_DATA = {
    "digits": {"train": [10, 20, 40, 2000], "valid": [5, 10], "test": [0, 7]},
    "mnist5k_tasks": {"train": [100, 150, 200], "valid": [100, 100], "test": [0, 100]},
}

any_number = st.sampled_from([-1.0, 0.0, 1e-4, 0.05, 0.5, 0.9, 1.0, 1.5])
VALID_INIT = {
    "learning_rate": 0.1,
    "momentum": 0.5,
    "beta1": 0.9,
    "beta2": 0.99,
    "weight_decay": 1e-3,
    "init_scale": 0.1,
    "l2": 1e-3,
    "training_data": "data",
    "sharing": 0.5,
    "example_weight": 1.0,
}


def mostly(draw, valid, anything):
    """Usually a valid value, now and then anything: about half the specs pass, the rest break a rule."""
    # (Hypothesis favours the ends of a range, so the rare branch takes a middle value.)
    return draw(anything) if draw(st.integers(0, 9)) == 5 else valid


@st.composite
def hyper_setting(draw, kind: str):
    spec = vocab.KINDS[kind]
    init = mostly(draw, VALID_INIT[kind], st.sampled_from(["data", 0.3]) if spec.data_init else any_number)
    return {
        "init": init,
        "granularity": mostly(
            draw, draw(st.sampled_from(spec.granularities)), st.sampled_from(vocab.GRANULARITIES)
        ),
        "learn": draw(st.booleans()),
    }


@st.composite
def specs(draw):
    kind = draw(st.sampled_from(["mlp", "logreg", "toy2d", "multitask_mlp"]))
    spec: dict = {"name": "parity", "training": {"steps": draw(st.sampled_from([1, 2, 3]))}, "seed": 0}
    if draw(st.integers(0, 4)) == 2:  # now and then another training optimizer, or a wrong one
        spec["training"]["optimizer"] = mostly(
            draw, draw(st.sampled_from(list(vocab.TRAINING_OPTIMIZERS))), st.just("rmsprop")
        )
    fitting = [4] if kind in ("mlp", "multitask_mlp") else []
    hidden = mostly(draw, fitting, st.sampled_from([[], [4], [3, 0], [5, 4]]))
    spec["model"] = {"kind": kind, "hidden": hidden} if hidden or draw(st.booleans()) else {"kind": kind}
    if kind != "toy2d" or draw(st.integers(0, 9)) == 5:
        names = ["mnist5k_tasks"] if kind == "multitask_mlp" and draw(st.integers(0, 4)) != 2 else ["digits"]
        name = names[0]
        counts = SMALL_DATA[name]
        ds: dict = {"name": name}
        for field in ("train", "valid", "test"):
            if field == "test" or draw(st.integers(0, 19)) != 7:  # now and then a count is left out
                ds[field] = draw(st.sampled_from(counts[field]))
        if draw(st.integers(0, 2)) == 0:
            ds["batch_size"] = draw(st.sampled_from([5, 10, 30]))
        if draw(st.integers(0, 3)) == 0:
            ds["resplit"] = True
        if draw(st.integers(0, 5)) == 0:
            ds["center"] = False
        spec["dataset"] = ds
    kinds = draw(st.lists(st.sampled_from(list(vocab.KINDS)), unique=True, max_size=3))
    if draw(st.integers(0, 9)) != 5:  # mostly the training optimizer's own kinds
        own = vocab.training_optimizer(spec)
        if own in vocab.TRAINING_OPTIMIZERS:
            kinds = [k for k in kinds if not vocab.optimizer_problem(k, own)]
    if draw(st.integers(0, 5)) != 3:
        kinds = ["learning_rate", *[k for k in kinds if k != "learning_rate"]]
    spec["hyperparameters"] = {k: draw(hyper_setting(k)) for k in kinds}
    if "learning_rate" in spec["hyperparameters"] and draw(st.integers(0, 5)) != 3:
        spec["hyperparameters"]["learning_rate"]["learn"] = True
    meta: dict = {"iterations": 1, "optimizer": draw(st.sampled_from(["adam", "sgd", "adam_paper"]))}
    if draw(st.integers(0, 5)) == 0:
        meta["momentum"] = 0.5
    spec["meta"] = meta
    spec["objective"] = draw(st.sampled_from(["valid_loss", "train_loss"]))
    return spec


def test_the_generated_specs_are_both_accepted_and_refused():
    """The parity below means something only if the generator gives both verdicts, often."""
    verdicts = []

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(specs())
    def collect(spec):
        verdicts.append(server_verdict(spec))

    collect()
    accepted = sum(v is None for v in verdicts)
    fields = {v for v in verdicts if v is not None}
    assert 0.2 * len(verdicts) < accepted < 0.8 * len(verdicts), accepted
    assert len(fields) >= 10, fields


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(specs())
def test_generated_specs_get_the_same_verdict(spec):
    server = server_verdict(spec)
    engine = engine_verdict(spec)
    assert server == engine, f"server {server}, engine {engine} on {spec}"
