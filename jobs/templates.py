"""The paper's experiments as ready job specs (Maclaurin, Duvenaud & Adams, ICML 2015).

Each template is a plain spec dict (``GET /v1/templates/{name}``) that validates as a `JobSpec`
under the default limits. The paper used 10,000-example slices of MNIST; the largest built-in here
is ``mnist5k`` (5,000 images), so the slices are smaller and the numbers will not match the paper's
to the digit: the shapes of the results (the learned schedules, the per-weight penalties, the
learned images) are what these reproduce.

=============================  =====================================================================
template                       paper experiment
=============================  =====================================================================
``lr-schedule-digits``         DESIGN.md's example: learning-rate and momentum schedules per layer
                               and step on scikit-learn's digits (small: minutes on a CPU)
``lr-schedule-cnn-digits``     the same schedules on a convolutional net (``model.kind: cnn``,
                               conv 8 and 16 channels, 3x3 kernels, 2x2 average pooling, dense 32)
                               on digits as 8x8x1 images: one schedule per kernel, bias and dense
                               array (not in the paper)
``lr-schedule-cnn-mnist1d``    a 1-D convolutional net (``cnn1d``, 16 and 16 channels, width-5
                               kernels) on MNIST-1D (Greydanus 2020), whose sequences separate
                               models where MNIST does not (not in the paper)
``toy-figure1``                figure 1: the two-weight toy (no data), 50 steps from the fixed start
                               (1.4, 3.9); learning rate and momentum per step (100 hyperparameters),
                               3 meta-iterations of SGD with momentum: final loss 395.3, 356.6, 356.3
``lr-schedule-mnist``          section 3.1 / figure 2: 784-50-50-50-10 tanh net, 100 steps of batch
                               200, learning rate and momentum per layer and step plus the initial
                               scale per layer: 800 + 800 + 8 = 1,608 hyperparameters; the paper's
                               Adam (``adam_paper``) with step 0.04 for 50 meta-iterations on the
                               final *training* loss
``adam-schedule-mnist``        the schedule experiment with AdamW as the training optimizer
                               (``training.optimizer: adamw``): the same data, net and 100 steps, a
                               learning rate per layer and step (800), beta1, weight decay and initial
                               scale per layer (8 each) learned, beta2 fixed at 0.999: 824 learned
``l2-per-weight-logreg``       figure 6: one L2 penalty per weight of a logistic regression
                               (7,850 hyperparameters), 50 steps of batch 20 (one epoch), learning
                               rate 1, momentum 0.9, initial scale e^-4; gradient descent on log L2
                               with step 1000
``l2-per-weight-logreg-adam``  the same trained by Adam (``training.optimizer: adam``, learning rate
                               0.01, betas 0.9 and 0.999): its hypergradients have the SGD run's
                               scale, so the meta-optimiser is the same
``training-data-logreg``       figure 7: ten training images (7,840 pixels) learned from N(0, 0.01^2)
                               starts, one per class, with a learned global L2; logistic regression,
                               20 full-batch steps, learning rate 1, momentum 0.9; gradient descent
                               with step 1
``sharing-mnist5k-tasks``      section 3.4 (the Omniglot table) on ``mnist5k_tasks``: ten tasks (five
                               "alphabets" with permuted labels, and each rotated), one 784-400-200-10
                               tanh net per task, 50 full-batch steps; the 300 entries of the three
                               layers' 10 x 10 sharing matrices learned by gradient descent (step 0.2,
                               20 meta-iterations) on the mean per-task validation loss, with the
                               training and validation images re-split every meta-iteration
``noisy-labels-digits``        issue 20 (not in the paper): 40 % of the training labels flipped, one
                               weight per training example learned on the clean validation loss of
                               a logistic regression; the flipped examples sink
``noisy-labels-mnist5k``       the same on 3,000 MNIST images
``chaos-sweep``                figure 5: one global learning rate of a 784-200-50-10 net near the
                               chaotic regime (alpha = e^1.5); submit copies with ``learning_rate.init``
                               swept over e^0.5 .. e^2.5 and compare the final losses and hypergradients
                               (pixels uncentred, as the paper's; centred pixels push the chaos
                               beyond e^2.5: see docs/RESULTS.md, F)
=============================  =====================================================================
"""

from __future__ import annotations

import copy
import math
from typing import Any

_TOY_FIGURE1: dict[str, Any] = {
    "name": "toy-figure1",
    "model": {"kind": "toy2d"},
    "training": {"steps": 50},
    "hyperparameters": {
        # The paper's start: log alpha = -4.5 and gamma = 0.99 at every step.
        "learning_rate": {"init": math.exp(-4.5), "granularity": "step", "learn": True},
        "momentum": {"init": 0.99, "granularity": "step", "learn": True},
    },
    "objective": "train_loss",
    # HIPS/hypergrad's simple_sgd(step 0.01, mass 0.9) moves by step * (mass v - (1 - mass) g); optax's
    # heavy ball moves by lr * (momentum v + g): the same steps with lr = 0.01 * (1 - 0.9).
    "meta": {"iterations": 3, "optimizer": "sgd", "learning_rate": 0.001, "momentum": 0.9},
    "seed": 0,
}

_LR_SCHEDULE_DIGITS: dict[str, Any] = {
    "name": "lr-schedule-digits",
    "dataset": {"name": "digits", "train": 1000, "valid": 400, "test": 397, "batch_size": 100},
    "model": {"kind": "mlp", "hidden": [50, 50], "activation": "tanh"},
    "training": {"steps": 100},
    "hyperparameters": {
        "learning_rate": {"init": 0.5, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "layer_step", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "layer", "learn": True},
        "l2": {"init": 0.0, "granularity": "layer", "learn": False},
    },
    "objective": "valid_loss",
    "meta": {"iterations": 50, "optimizer": "adam", "learning_rate": 0.04},
    "seed": 0,
}

# Issue 17: the schedule experiment on convolutional nets. A layer is a parameter array, so the
# schedules are one per convolution's kernel and bias, and per dense layer's.
_LR_SCHEDULE_CNN_DIGITS: dict[str, Any] = {
    "name": "lr-schedule-cnn-digits",
    "dataset": {"name": "digits", "train": 1000, "valid": 400, "test": 397, "batch_size": 100},
    "model": {
        "kind": "cnn",
        "channels": [8, 16],
        "kernel": 3,
        "pool": 2,
        "hidden": [32],
        "activation": "tanh",
    },
    "training": {"steps": 100},
    "hyperparameters": {
        "learning_rate": {"init": 0.5, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "layer_step", "learn": True},
        "init_scale": {"init": 0.2, "granularity": "layer", "learn": True},
    },
    "objective": "valid_loss",
    "meta": {"iterations": 50, "optimizer": "adam", "learning_rate": 0.04},
    "seed": 0,
}

_LR_SCHEDULE_CNN_MNIST1D: dict[str, Any] = {
    "name": "lr-schedule-cnn-mnist1d",
    "dataset": {"name": "mnist1d", "train": 3000, "valid": 1000, "test": 1000, "batch_size": 100},
    "model": {
        "kind": "cnn1d",
        "channels": [16, 16],
        "kernel": 5,
        "pool": 2,
        "hidden": [32],
        "activation": "relu",
    },
    "training": {"steps": 100},
    "hyperparameters": {
        "learning_rate": {"init": 0.5, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "layer_step", "learn": True},
        "init_scale": {"init": 0.3, "granularity": "layer", "learn": True},
    },
    "objective": "valid_loss",
    "meta": {"iterations": 50, "optimizer": "adam", "learning_rate": 0.01},
    "seed": 0,
}

_LR_SCHEDULE_MNIST: dict[str, Any] = {
    "name": "lr-schedule-mnist",
    "dataset": {"name": "mnist5k", "train": 3000, "valid": 1000, "test": 1000, "batch_size": 200},
    "model": {"kind": "mlp", "hidden": [50, 50, 50], "activation": "tanh"},
    "training": {"steps": 100},
    "hyperparameters": {
        # The paper's starting point: log alpha = -1, gamma = 0.5, log scale = -3, no L2.
        "learning_rate": {"init": math.exp(-1), "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.5, "granularity": "layer_step", "learn": True},
        "init_scale": {"init": math.exp(-3), "granularity": "layer", "learn": True},
        "l2": {"init": 0.0, "granularity": "global", "learn": False},
    },
    "objective": "train_loss",
    "meta": {"iterations": 50, "optimizer": "adam_paper", "learning_rate": 0.04},
    "seed": 0,
}

_ADAM_SCHEDULE_MNIST: dict[str, Any] = {
    "name": "adam-schedule-mnist",
    "dataset": {"name": "mnist5k", "train": 3000, "valid": 1000, "test": 1000, "batch_size": 200},
    "model": {"kind": "mlp", "hidden": [50, 50, 50], "activation": "tanh"},
    "training": {"steps": 100, "optimizer": "adamw"},
    "hyperparameters": {
        "learning_rate": {"init": 0.01, "granularity": "layer_step", "learn": True},
        # beta1 takes momentum's place; a learned one is kept >= its min (0.5 by default)
        "beta1": {"init": 0.9, "granularity": "layer", "learn": True},
        "beta2": {"init": 0.999, "granularity": "global", "learn": False},
        # PyTorch's AdamW default (optax's is 1e-4): lr x wd = 1e-4 a step, well above the engine's
        # 2**-24 lattice for the decay factor 1 - lr wd
        "weight_decay": {"init": 0.01, "granularity": "layer", "learn": True},
        "init_scale": {"init": math.exp(-3), "granularity": "layer", "learn": True},
    },
    "objective": "train_loss",
    "meta": {"iterations": 50, "optimizer": "adam_paper", "learning_rate": 0.04},
    "seed": 0,
}

_L2_PER_WEIGHT: dict[str, Any] = {
    "name": "l2-per-weight-logreg",
    "dataset": {"name": "mnist5k", "train": 1000, "valid": 1000, "test": 1000, "batch_size": 20},
    "model": {"kind": "logreg"},
    "training": {"steps": 50},
    "hyperparameters": {
        "learning_rate": {"init": 1.0, "granularity": "global", "learn": False},
        "momentum": {"init": 0.9, "granularity": "global", "learn": False},
        "init_scale": {"init": math.exp(-4), "granularity": "global", "learn": False},
        "l2": {"init": 0.027, "granularity": "weight", "learn": True},
    },
    "objective": "valid_loss",
    # The paper's meta-optimiser: plain gradient descent on log L2 with step 1000.
    "meta": {"iterations": 50, "optimizer": "sgd", "learning_rate": 1000.0, "momentum": 0.0},
    "seed": 0,
}

_L2_PER_WEIGHT_ADAM: dict[str, Any] = {
    **_L2_PER_WEIGHT,
    "name": "l2-per-weight-logreg-adam",
    "training": {"steps": 50, "optimizer": "adam"},
    "hyperparameters": {
        "learning_rate": {"init": 0.01, "granularity": "global", "learn": False},
        "beta1": {"init": 0.9, "granularity": "global", "learn": False},
        "beta2": {"init": 0.999, "granularity": "global", "learn": False},
        "init_scale": {"init": math.exp(-4), "granularity": "global", "learn": False},
        "l2": {"init": 0.027, "granularity": "weight", "learn": True},
    },
}

_TRAINING_DATA: dict[str, Any] = {
    "name": "training-data-logreg",
    # stratify: the ten training examples (whose pixels are replaced by the learned images) are one
    # per class, so the learned images are labelled 0..9 as in the paper.
    "dataset": {
        "name": "mnist5k",
        "train": 10,
        "valid": 1000,
        "test": 1000,
        "batch_size": 10,
        "stratify": True,
    },
    "model": {"kind": "logreg"},
    "training": {"steps": 20},
    "hyperparameters": {
        "learning_rate": {"init": 1.0, "granularity": "global", "learn": False},
        "momentum": {"init": 0.9, "granularity": "global", "learn": False},
        "init_scale": {"init": math.exp(-4), "granularity": "global", "learn": False},
        "l2": {"init": 0.01, "granularity": "global", "learn": True},
        "training_data": {"init": 0.01, "granularity": "weight", "learn": True},
    },
    "objective": "valid_loss",
    # The paper's meta-optimiser: plain gradient descent with step 1.
    "meta": {"iterations": 40, "optimizer": "sgd", "learning_rate": 1.0, "momentum": 0.0},
    "seed": 0,
}

_SHARING: dict[str, Any] = {
    "name": "sharing-mnist5k-tasks",
    # 10 training and 2 validation images of every class in every task, re-split every meta-iteration
    # as the paper's 12 per character were (10 / 2), and 87 test images each (the paper: 3).
    "dataset": {"name": "mnist5k_tasks", "train": 1000, "valid": 200, "test": 8700, "resplit": True},
    "model": {"kind": "multitask_mlp", "hidden": [400, 200], "activation": "tanh"},
    "training": {"steps": 50},
    "hyperparameters": {
        # The paper trains on the *sum* over tasks of each task's mean NLL, plus e^-4 ||Z||^2, with
        # alpha = 1. The loss here is the mean over all examples, 1/10 of that sum (equal tasks), so
        # alpha = 10 and L2 = e^-4 / 10 take exactly the paper's steps.
        "learning_rate": {"init": 10.0, "granularity": "global", "learn": False},
        "momentum": {"init": 0.9, "granularity": "global", "learn": False},
        "init_scale": {"init": math.exp(-2), "granularity": "global", "learn": False},
        "l2": {"init": math.exp(-4) / 10, "granularity": "global", "learn": False},
        # T = 0.5 I + 0.05 11^T for each layer, as the paper's start
        "sharing": {"init": 0.5, "granularity": "layer", "learn": True},
    },
    "objective": "valid_loss",
    "meta": {"iterations": 20, "optimizer": "sgd", "learning_rate": 0.2, "momentum": 0.0},
    "seed": 0,
}

_CHAOS_SWEEP: dict[str, Any] = {
    "name": "chaos-sweep",
    # The paper's pixels were not centred for this experiment (HIPS/hypergrad's load_data default).
    "dataset": {"name": "mnist5k", "train": 1000, "valid": 500, "batch_size": 250, "center": False},
    "model": {"kind": "mlp", "hidden": [200, 50], "activation": "tanh"},
    "training": {"steps": 50},
    "hyperparameters": {
        "learning_rate": {"init": math.exp(1.5), "granularity": "global", "learn": True},
        "momentum": {"init": 0.9, "granularity": "global", "learn": False},
        "init_scale": {"init": math.exp(-2), "granularity": "global", "learn": False},
    },
    "objective": "train_loss",
    "meta": {"iterations": 20, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.0},
    "seed": 0,
}


def _noisy_labels(name: str, dataset: str, train: int, valid: int, test: int) -> dict[str, Any]:
    """Issue 20's experiment (not the paper's): 40 % of the training labels flipped to another class
    (the validation and test labels stay clean), one weight per training example learned on the
    validation loss of a logistic regression; the flipped examples sink (benchmarks/example_weights.py:
    area under the ROC curve 0.97 on digits after 20 meta-iterations)."""
    return {
        "name": name,
        "dataset": {
            "name": dataset,
            "train": train,
            "valid": valid,
            "test": test,
            "batch_size": 100,
            "label_noise": {"fraction": 0.4, "seed": 1},
        },
        "model": {"kind": "logreg"},
        "training": {"steps": 100},
        "hyperparameters": {
            "learning_rate": {"init": 0.5, "granularity": "global", "learn": False},
            "momentum": {"init": 0.9, "granularity": "global", "learn": False},
            "init_scale": {"init": 0.1, "granularity": "global", "learn": False},
            "example_weight": {"init": 1.0, "granularity": "example", "learn": True},
        },
        "objective": "valid_loss",
        "meta": {"iterations": 20, "optimizer": "adam", "learning_rate": 0.3},
        "seed": 0,
    }


TEMPLATES: dict[str, dict[str, Any]] = {
    t["name"]: t
    for t in (
        _LR_SCHEDULE_DIGITS,
        _LR_SCHEDULE_CNN_DIGITS,
        _LR_SCHEDULE_CNN_MNIST1D,
        _TOY_FIGURE1,
        _LR_SCHEDULE_MNIST,
        _ADAM_SCHEDULE_MNIST,
        _L2_PER_WEIGHT,
        _L2_PER_WEIGHT_ADAM,
        _TRAINING_DATA,
        _SHARING,
        _CHAOS_SWEEP,
        _noisy_labels("noisy-labels-digits", "digits", 1000, 400, 397),
        _noisy_labels("noisy-labels-mnist5k", "mnist5k", 3000, 1000, 1000),
    )
}

DESCRIPTIONS: dict[str, str] = {
    "lr-schedule-digits": "learning-rate and momentum schedules per layer and step on digits (small, fast)",
    "lr-schedule-cnn-digits": "schedules per layer and step of a small convolutional net on digits (8x8 "
    "images): conv 8, conv 16, dense 32",
    "lr-schedule-cnn-mnist1d": "schedules per layer and step of a 1-D convolutional net on MNIST-1D "
    "sequences, a problem where a CNN beats an MLP",
    "toy-figure1": "the paper's figure 1: two weights, 50 steps, per-step schedules, 3 meta-iterations",
    "lr-schedule-mnist": "the paper's schedule experiment: 784-50-50-50-10, 100 steps, 1,608 hyperparameters",
    "adam-schedule-mnist": "the schedule experiment trained by AdamW: learning rate per layer and step, "
    "beta1 and weight decay per layer (824 learned)",
    "l2-per-weight-logreg": "one L2 penalty per weight of a logistic regression on MNIST (7,850)",
    "l2-per-weight-logreg-adam": "the per-weight L2 penalties of a logistic regression trained by Adam",
    "training-data-logreg": "ten synthetic training images learned for a logistic regression",
    "sharing-mnist5k-tasks": "the paper's multi-task experiment: how ten tasks' nets share weights, learned",
    "chaos-sweep": "a global learning rate near the chaotic regime; sweep learning_rate.init",
    "noisy-labels-digits": "40 % of digits' training labels flipped; a weight per training example "
    "learned: the flipped ones sink (1,000 weights)",
    "noisy-labels-mnist5k": "the same on 3,000 MNIST training images (3,000 weights)",
}


def names() -> list[str]:
    return list(TEMPLATES)


def get(name: str) -> dict[str, Any] | None:
    """A fresh copy of the template's spec (safe to edit), or None if there is no such template."""
    template = TEMPLATES.get(name)
    return None if template is None else copy.deepcopy(template)
