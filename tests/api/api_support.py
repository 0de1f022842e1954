"""Helpers for the API tests (fixtures are in conftest.py)."""

from __future__ import annotations

import warnings

import numpy as np

from jobs import repository

with warnings.catch_warnings():
    # Starlette asks for `httpx2`, which is not installed; the httpx-based TestClient works.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient as _TestClient


class TestClient(_TestClient):
    """Starlette's TestClient addressed to ``localhost``: with auth off the API answers only to
    loopback host names (its DNS-rebinding guard), and ``testserver`` is not one."""

    def __init__(self, app, base_url: str = "http://localhost", **kwargs):
        super().__init__(app, base_url=base_url, **kwargs)


__all__ = ["LAYERS", "TINY_SPEC", "TestClient", "learning_rates", "problems", "run", "submit"]

TINY_SPEC = {
    "name": "tiny",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 25},
    "model": {"kind": "mlp", "hidden": [8]},
    "training": {"steps": 5},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "global", "learn": False},
    },
    "meta": {"iterations": 3},
    "seed": 0,
}


def submit(client: TestClient, spec: dict | None = None, **headers) -> dict:
    reply = client.post("/v1/jobs", json=spec or TINY_SPEC, headers=headers)
    assert reply.status_code == 201, reply.text
    return reply.json()


def problems(reply) -> dict[str, str]:
    """A 422 body as ``{"dotted.loc": "msg; msg"}``."""
    assert reply.status_code == 422, reply.text
    found: dict[str, str] = {}
    for e in reply.json()["detail"]:
        loc = ".".join(str(p) for p in e["loc"])
        found[loc] = f"{found[loc]}; {e['msg']}" if loc in found else e["msg"]
    return found


LAYERS = ["layer0.W", "layer0.b", "layer1.W", "layer1.b"]


def learning_rates(k: int) -> np.ndarray:
    """Awkward float64s (not exactly representable in decimal) so a lossy format would show."""
    rng = np.random.default_rng(k)
    return np.exp(rng.normal(-1.0, 0.5, size=(5, 4)))


def run(service, job_id: str, n: int, objectives=None) -> None:
    """What a worker does: claim, record ``n`` meta-iterations, finish."""
    with service.sessions() as s:
        claim = repository.claim_job(s, job_id, "worker-1")
        s.commit()
    for k in range(n):
        with service.sessions() as s:
            repository.record_meta_iteration(
                s,
                job_id,
                claim,
                step={
                    "meta_iter": k,
                    "objective": (objectives or [1.0 / (k + 1)] * n)[k],
                    "train_loss": 2.0,
                    "valid_loss": 1.0 / (k + 1),
                    "valid_error": 0.5,
                    "test_loss": None,
                    "test_error": None,
                    "hypergrad_norm": float("nan"),
                    "elapsed_s": 0.25,
                    "reversal_exact": True,
                },
                hyperparameters={
                    "learning_rate": {
                        "values": learning_rates(k),
                        "axes": ["step", "layer"],
                        "labels": {"step": list(range(5)), "layer": LAYERS},
                        "learned": True,
                    },
                    "init_scale": {"values": np.array(0.1), "axes": [], "labels": {}, "learned": False},
                },
                checkpoint=b"checkpoint",
            )
            s.commit()
    with service.sessions() as s:
        repository.finish_job(s, job_id, claim, "succeeded")
        s.commit()
