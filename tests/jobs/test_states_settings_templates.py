"""Job states, settings (production refuses unsafe ones) and the templates."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs import templates
from jobs.settings import Settings
from jobs.spec import BUILTIN_DATASETS, SpecError, count_hyperparameters, validate_spec
from jobs.states import TERMINAL, IllegalTransition, Origin, Status, can_transition, check_transition


def test_the_allowed_transitions_and_only_those():
    allowed = {
        ("queued", "running"),
        ("queued", "cancelled"),
        ("running", "succeeded"),
        ("running", "failed"),
        ("running", "cancelled"),
        ("running", "queued"),
        ("succeeded", "queued"),  # continued: more meta-iterations
        ("cancelled", "queued"),
    }
    for old in Status:
        for new in Status:
            assert can_transition(old, new) == ((old.value, new.value) in allowed), (old, new)
            # A recorded library run is never queued: its recorder continues it, not a worker.
            external = can_transition(old, new, Origin.EXTERNAL)
            assert not (external and new == Status.QUEUED and old != Status.RUNNING), (old, new)
    assert check_transition("queued", "running") is Status.RUNNING
    for final in TERMINAL:
        with pytest.raises(IllegalTransition, match="allowed from"):
            check_transition(final, "running")
    with pytest.raises(IllegalTransition, match="final"):
        check_transition("failed", "queued")


def test_defaults_live_in_the_data_folder(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path.resolve()}/revtune.db"
    assert s.broker_url == f"sqla+sqlite:///{tmp_path.resolve()}/broker.db"
    assert (
        s.auth == "on"
        and s.cors_origins == []
        and s.dataset_path("abc") == tmp_path.resolve() / "datasets/abc.npz"
    )
    assert s.compilation_cache_dir == tmp_path.resolve() / "jax-cache"
    assert Settings(data_dir=tmp_path, compilation_cache="OFF").compilation_cache_dir is None
    elsewhere = Settings(data_dir=tmp_path, compilation_cache=str(tmp_path / "shared" / "cache"))
    assert elsewhere.compilation_cache_dir == tmp_path.resolve() / "shared/cache"


def test_environment_variables_configure_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("REVTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REVTUNE_MAX_STEPS", "20")
    monkeypatch.setenv("REVTUNE_AUTH", "off")
    monkeypatch.setenv("REVTUNE_CORS_ORIGINS", '["https://example.org"]')
    s = Settings()
    assert s.limits.max_steps == 20 and s.auth == "off" and s.cors_origins == ["https://example.org"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"auth": "off"}, "REVTUNE_AUTH=off"),
        ({"database_url": "postgresql+psycopg://revtune:revtune@db/revtune"}, "REVTUNE_DATABASE_URL"),
        ({"database_url": "postgresql://u:postgres@db/r"}, "default password"),
        ({"broker_url": "redis://:changeme@redis:6379/0"}, "REVTUNE_BROKER_URL"),
    ],
)
def test_production_refuses_auth_off_and_default_secrets(tmp_path, changes, message):
    with pytest.raises(ValidationError, match=message):
        Settings(env="production", data_dir=tmp_path, **changes)
    Settings(env="development", data_dir=tmp_path, **changes)


def test_production_accepts_a_real_secret(tmp_path):
    s = Settings(
        env="production", data_dir=tmp_path, database_url="postgresql+psycopg://revtune:Zq8-x7@db/revtune"
    )
    assert s.auth == "on"


def test_a_heartbeat_timeout_shorter_than_the_interval_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="HEARTBEAT_TIMEOUT"):
        Settings(data_dir=tmp_path, heartbeat_interval_s=10, heartbeat_timeout_s=5)


@pytest.mark.parametrize("name", templates.names())
def test_every_template_is_a_valid_spec(name):
    spec = validate_spec(templates.get(name))
    assert spec.name == name and name in templates.DESCRIPTIONS


def test_templates_reproduce_the_papers_sizes():
    mnist = validate_spec(templates.get("lr-schedule-mnist"))
    assert (
        mnist.model.hidden == [50, 50, 50] and mnist.training.steps == 100 and mnist.objective == "train_loss"
    )
    # 800 learning rates + 800 momenta + 8 initial scales; the fixed global l2 is one more value.
    assert count_hyperparameters(mnist, BUILTIN_DATASETS["mnist5k"]) == 1608 + 1
    l2 = validate_spec(templates.get("l2-per-weight-logreg"))
    assert count_hyperparameters(l2, BUILTIN_DATASETS["mnist5k"]) == 7850 + 3
    # Trained by AdamW: 800 learning rates + beta1, weight decay and initial scale per layer (8
    # each) learned; the fixed global beta2 and l2 are two more values.
    adamw = validate_spec(templates.get("adam-schedule-mnist"))
    assert adamw.training.optimizer == "adamw" and adamw.meta.optimizer == "adam_paper"
    assert count_hyperparameters(adamw, BUILTIN_DATASETS["mnist5k"]) == 824 + 2
    l2_adam = validate_spec(templates.get("l2-per-weight-logreg-adam"))
    assert l2_adam.training.optimizer == "adam" and l2_adam.hyperparameters.l2.granularity == "weight"
    # 7,850 penalties; the fixed learning rate, beta1, beta2 and initial scale
    assert count_hyperparameters(l2_adam, BUILTIN_DATASETS["mnist5k"]) == 7850 + 4
    assert templates.get("nope") is None
    edited = templates.get("chaos-sweep")
    edited["seed"] = 5
    assert templates.get("chaos-sweep")["seed"] == 0, "templates hand out copies"


def test_the_toy_template_has_no_dataset_and_only_the_toy_may_leave_it_out():
    toy = validate_spec(templates.get("toy-figure1"))
    assert toy.model.kind == "toy2d" and toy.dataset is None and "dataset" not in toy.to_dict()
    assert validate_spec(toy.to_dict()) == toy, "the stored spec validates again unchanged"
    assert (toy.training.steps, toy.meta.iterations, toy.meta.learning_rate) == (50, 3, 0.001)
    with_data = templates.get("toy-figure1") | {"dataset": {"name": "digits", "train": 10, "valid": 10}}
    with pytest.raises(SpecError) as info:
        validate_spec(with_data)
    assert info.value.errors == [
        {"loc": ["dataset"], "msg": "the toy2d model has no data: leave `dataset` out"}
    ]
    with_scale = templates.get("toy-figure1")
    with_scale["hyperparameters"]["init_scale"] = {"init": 0.1}
    with pytest.raises(SpecError, match="hyperparameters.init_scale: the toy2d model starts from a fixed"):
        validate_spec(with_scale)
    with pytest.raises(SpecError, match="model: .*no layers"):
        validate_spec(templates.get("toy-figure1") | {"model": {"kind": "toy2d", "hidden": [4]}})
    no_data = {k: v for k, v in templates.get("chaos-sweep").items() if k != "dataset"}
    with pytest.raises(SpecError, match="dataset: is required"):
        validate_spec(no_data)
