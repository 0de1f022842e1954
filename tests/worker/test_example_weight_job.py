"""A job that learns a weight per training example on labels with known noise, through
`worker.runner.run_job` on a real database: the stored weights carry each example's row in the
source, its given label and whether it was flipped, the flipped examples lose weight, and the export
hands the weights over with those rows."""

from __future__ import annotations

import io

import numpy as np
import pytest
from direct_worker import direct_worker_fixtures
from sklearn.metrics import roc_auc_score

from hypercore import data
from jobs import export, repository
from jobs.spec import validate_spec
from worker import runner

pytestmark = pytest.mark.integration

SPEC = {
    "name": "noisy-labels-tiny",
    "dataset": {
        "name": "digits",
        "train": 200,
        "valid": 100,
        "batch_size": 50,
        "label_noise": {"fraction": 0.4, "seed": 1},
    },
    "model": {"kind": "logreg"},
    "training": {"steps": 40},
    "hyperparameters": {
        "learning_rate": {"init": 0.5},
        "example_weight": {"init": 1.0, "granularity": "example", "learn": True},
    },
    "meta": {"iterations": 3, "learning_rate": 0.3},
    "seed": 0,
}

settings, sessions, tenant_id = direct_worker_fixtures("example-weights")


def test_example_weights_find_the_flipped_labels_and_export_with_their_rows(settings, sessions, tenant_id):
    with sessions() as session:
        job, _ = repository.create_job(session, tenant_id, validate_spec(SPEC))
        session.commit()
    assert runner.run_job(job.id, settings=settings, sessions=sessions) == "succeeded"

    want = data.load("digits", 200, 100, 0, seed=0, label_noise={"fraction": 0.4, "seed": 1})
    with sessions() as session:
        weights = repository.get_hyperparameter(session, tenant_id, job.id, "example_weight")
        snapshot = export.load(session, tenant_id, job.id, "best")
    assert weights.axes == ["example"] and weights.values.shape == (200,)
    assert weights.labels["example"] == want.train_rows.tolist()
    assert weights.labels["label"] == want.y_train.tolist()
    assert weights.labels["noisy"] == want.noisy.tolist() and sum(want.noisy) == 80
    # Three meta-iterations already rank the flipped labels low.
    assert roc_auc_score(want.noisy, -np.log(weights.values)) > 0.9

    bundle = export.export(snapshot, "npz")
    with np.load(io.BytesIO(bundle.content), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["example_weight.rows"], want.train_rows)
        np.testing.assert_array_equal(npz["example_weight.noisy"], want.noisy)
        assert npz["example_weight"].shape == (200,)
