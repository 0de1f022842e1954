"""A job that would need more memory than a worker has is refused at submit, through the real API.

A spec inside every other limit (an mlp of 2048 and 1800 units on digits, 1000 steps, momentum 0.01)
needed 11 GB in the worker, and a 6 GiB worker was killed for memory three times in 42 s as the job
went from worker to worker. `jobs.spec.validate_spec` now estimates the job's peak memory
(`hypercore.budget`) and refuses it past ``REVTUNE_MAX_JOB_MEMORY_BYTES`` (4 GiB), naming the
field that drives it::

    .venv/bin/python -m pytest tests/security/test_job_memory.py -q
"""

from __future__ import annotations

from api_support import TINY_SPEC, problems, submit
from security_support import spec_with

KILLER = spec_with(
    "hyperparameters",
    {
        "learning_rate": {"init": 0.1, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.01, "granularity": "global", "learn": False},
    },
    spec_with("training.steps", 1000, spec_with("model.hidden", [2048, 1800])),
)


def test_the_job_that_killed_workers_is_422_on_its_momentum_and_never_enqueued(service):
    found = problems(service.alice.post("/v1/jobs", json=KILLER))
    says = found["body.hyperparameters.momentum.init"]
    assert says.startswith("this job needs about 7.7 GiB in the worker (information buffer 5.5 GiB"), says
    assert "at momentum 0.01 over 1000 steps" in says and "REVTUNE_MAX_JOB_MEMORY_BYTES = 4.0 GiB" in says
    # a learned momentum kept >= 0.5 loses at most a bit a step: the same net fits
    floored = spec_with("hyperparameters.momentum", {"init": 0.9, "learn": True, "min": 0.5}, KILLER)
    assert submit(service.alice, floored)["status"] == "queued"
    assert len(service.enqueued) == 1


def test_the_limit_is_the_server_s_setting(service):
    """As each REVTUNE_MAX_* limit (tests/security/test_bad_input.py's LIMIT_CASES): the tiny spec
    passes the default and is refused under a limit it exceeds (its estimate includes the worker's
    1.5 GiB runtime, so 1 GiB is below every job), on the field that drives its largest part."""
    assert submit(service.alice, TINY_SPEC)["status"] == "queued", "within the default limits"
    service.app.state.settings = service.settings.model_copy(update={"max_job_memory_bytes": 2**30})
    found = problems(service.alice.post("/v1/jobs", json=TINY_SPEC))
    assert "past REVTUNE_MAX_JOB_MEMORY_BYTES = 1.0 GiB" in found["body.dataset.train"], found
    assert "(training data " in found["body.dataset.train"]
