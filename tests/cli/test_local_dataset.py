"""``revtune run --dataset FILE.npz`` reads the file as the server reads an upload
(`hypercore.arrays`), so what runs as a job on the server runs locally too: task ids, ``center``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from revtune._job_cmds import _local_dataset
from revtune.cli import CommandError, main


def two_task_upload(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32) + 3.0  # off-centre, to see `center: false`
    y = np.arange(40) % 2
    task = np.repeat([0, 1], 20)[rng.permutation(40)]
    np.savez(path, X=X, y=y, task=task)
    return X, y, task


SPEC = {
    "name": "two-tasks",
    "dataset": {"id": "local", "train": 20, "valid": 10, "test": 4, "center": False},
    "model": {"kind": "multitask_mlp", "hidden": [4]},
    "training": {"steps": 2},
    "hyperparameters": {"sharing": {"init": 0.5, "granularity": "layer", "learn": True}},
    "meta": {"iterations": 1},
    "seed": 0,
}


def test_the_dataset_is_the_one_a_worker_builds(tmp_path):
    from hypercore.arrays import from_arrays

    X, y, task = two_task_upload(tmp_path / "two.npz")
    local = _local_dataset(str(tmp_path / "two.npz"), SPEC)
    # What `worker.runner.load_dataset` builds for this upload and the spec as the server stores it
    # (`shuffle: true`): the rows shuffled by the spec's seed, then split.
    seed = SPEC.get("seed", 0)
    worker = from_arrays(X, y, 20, 10, 4, center=False, task=task, shuffle_seed=seed)
    assert local.n_tasks == 2
    for split in ("train", "valid", "test"):
        for a in ("X", "y"):
            np.testing.assert_array_equal(getattr(local, f"{a}_{split}"), getattr(worker, f"{a}_{split}"))
    order = np.random.default_rng(seed).permutation(len(y))
    first = order[np.flatnonzero(task[order] == 0)[:10]]
    np.testing.assert_array_equal(local.X_train[:10], X[first])  # shuffled, not centred


def test_a_two_task_upload_with_center_false_runs_locally(tmp_path, capsys):
    two_task_upload(tmp_path / "two.npz")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    args = ["run", str(spec_file), "--dataset", str(tmp_path / "two.npz"), "--out", str(out), "--quiet"]
    rc = main(args)
    _, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta_iterations"] == 1 and summary["last"]["reversal_exact"]
    assert {"sharing.layer0", "sharing.layer1"} <= set(summary["hyperparameters"])


def test_a_bad_file_is_refused_naming_it_or_the_spec_field(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.ones((4, 2)), labels=np.arange(4))
    with pytest.raises(
        CommandError, match=rf"^--dataset {path}: holds arrays \['X', 'labels'\]; expected X and y"
    ):
        _local_dataset(str(path), SPEC)
    two_task_upload(path)
    with pytest.raises(CommandError, match=r"^dataset\.train: the 2 tasks are split alike"):
        _local_dataset(str(path), {**SPEC, "dataset": {**SPEC["dataset"], "train": 21}})
