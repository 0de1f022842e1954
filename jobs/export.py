"""Export: a job's hyperparameters, taken home in the conventions of the user's own optimizer.

``GET /v1/jobs/{id}/export?which=best|last|<meta_iter>&to=npz|optax|pytorch`` (docs/API.md, "Export")
reads one hyperparameter snapshot (`load`, which resolves ``which`` with
`jobs.repository.results.resolve_which`) and writes it as one file (`export`):

- ``npz``: every hyperparameter in natural units under its REST name, float64 as stored, plus
  ``__spec__`` (the job's spec, JSON) and ``__export__`` (what was exported, JSON); no pickle.
- ``optax`` and ``pytorch``: a ``.zip`` of that ``hyperparameters.npz``, ``schedule.npz`` (one ``(T,)``
  array per parameter array and step in the target's convention, `schedules`), ``spec.json``, a
  runnable snippet (``train_optax.py`` or ``train_pytorch.py``, no revtune import) and a README.

Why a conversion at all: the engine's SGD with momentum is the paper's rule
``v <- g v - (1 - g) grad; w <- w + a v`` (v0 = 0), whose velocity is an average of gradients, while
optax's ``sgd(momentum=)`` and PyTorch's ``SGD`` are the heavy ball ``u <- mu u + grad; w <- w - lr u``
(u0 = 0), whose buffer is a sum. With ``u_t = -v_{t+1} / (1 - g_t)`` the two are the same run when

    lr_t = a_t (1 - g_t),    mu_t = g_t (1 - g_{t-1}) / (1 - g_t)  (t >= 1)

``mu_0`` multiplies a zero buffer and is inert; it is exported as ``g_0`` because PyTorch creates a
momentum buffer only for a non-zero momentum (and a buffer made later would start at the gradient,
not at ``mu u + grad``). Adam and AdamW need no conversion: the engine runs optax's ``adamw`` rule
with per-step values (`hypercore.adam`), except that its bias corrections are
``1 - prod_{s<=t} b_s``, which equal optax's and PyTorch's ``1 - b^(t+1)`` only for a constant ``b``
(the snippets then use the libraries' own Adam, else a small scheduled one).

The schedules are computed from the values the engine *used*: it runs a momentum as
``round(g 2**16) / 2**16``, Adam's betas as ``round(b 2**24) / 2**24`` and AdamW's decay factor
``1 - lr wd`` as ``round(f 2**24) / 2**24`` (`quantize_gamma`, `quantize_beta`, `decay_factor` mirror
`hypercore._fixed` and `hypercore.adam` in numpy; ``tests/hypercore/test_export_rule.py`` checks
them against the engine), so that training with the export repeats the engine's run, not a run a
rounding away. ``hyperparameters.npz`` keeps the stored values untouched.

JAX-free (numpy, the standard library and `hypercore.vocab`): the API builds exports.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import textwrap
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from hypercore import vocab
from jobs.errors import Conflict
from jobs.repository.jobs import get_job
from jobs.repository.results import (
    HyperparameterValue,
    get_hyperparameter,
    list_hyperparameters,
    list_steps,
    resolve_which,
)

__all__ = [
    "ADAM_EPS",
    "CONVENTIONS",
    "TARGETS",
    "Bundle",
    "Snapshot",
    "decay_factor",
    "export",
    "load",
    "quantize_beta",
    "quantize_gamma",
    "schedules",
]

TARGETS = ("npz", "optax", "pytorch")
ADAM_EPS = 1e-8  # the engine's Adam epsilon (hypercore.adam.Adam.eps), optax's and PyTorch's default
_GAMMA_D = 2**16  # hypercore._fixed.D
_BETA_D = 2**24  # hypercore.adam.DB
# Model kinds whose forward pass the snippets write out; for the others they say to bring your own.
_WRITTEN_MODELS = ("mlp", "logreg")

CONVENTIONS = (
    "Values are in natural units (a learning rate, not its log), float64 as stored. Snapshot meta_iter k "
    "holds the values after k finished meta-iterations; meta-iteration k (step k of GET /steps, 0-based) "
    "trained and scored exactly the values of snapshot k, from fresh initial weights init_scale * N(0, 1) "
    "and minibatches of batch_size examples drawn uniformly with replacement, both drawn from (seed, k). "
    "The engine's rules: sgd_momentum v <- g v - (1 - g) grad; w <- w + a v (v0 = 0), with g used as "
    "round(g 2^16) / 2^16; adam and adamw as optax's adamw with per-step values, eps 1e-8, bias "
    "corrections 1 - prod_{s<=t} b_s, b used as round(b 2^24) / 2^24 and the decay factor 1 - lr wd as "
    "round(f 2^24) / 2^24. l2 adds sum lambda w^2 to the training loss (gradient 2 lambda w; no 1/2). "
    "schedule.npz holds per parameter array and step the target's values computed from those the engine "
    "used: heavy ball lr_t = a_t (1 - g_t), momentum_t = g_t (1 - g_{t-1}) / (1 - g_t), momentum_0 = g_0; "
    "Adam lr, b1, b2 and weight_decay = (1 - f_t) / lr_t."
)


# ---- the engine's lattices, in numpy ---------------------------------------------------------------


def quantize_gamma(gamma: Any) -> np.ndarray:
    """The momentum the engine runs: ``clip(round(g 2**16), 1, 2**16) / 2**16``
    (`hypercore.quantize_gamma`)."""
    g = np.asarray(gamma, np.float64)
    return np.clip(np.round(g * _GAMMA_D), 1, _GAMMA_D) / _GAMMA_D


def quantize_beta(beta: Any) -> np.ndarray:
    """The Adam beta the engine runs: ``clip(round(b 2**24), 2**23, 2**24 - 1) / 2**24``
    (`hypercore.quantize_beta`)."""
    b = np.asarray(beta, np.float64)
    return np.clip(np.round(b * _BETA_D), _BETA_D // 2, _BETA_D - 1) / _BETA_D


def decay_factor(learning_rate: Any, weight_decay: Any) -> np.ndarray:
    """AdamW's factor on ``w`` as the engine runs it: ``clip(round((1 - lr wd) 2**24), 2**23, 2**24) /
    2**24`` (`hypercore.weight_decay_factors`)."""
    f = 1.0 - np.asarray(learning_rate, np.float64) * np.asarray(weight_decay, np.float64)
    return np.clip(np.round(f * _BETA_D), _BETA_D // 2, _BETA_D) / _BETA_D


# ---- what is exported ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One resolved snapshot of a job: ``values`` by REST name (each with ``values``, ``axes``,
    ``labels``, ``learned``: a `HyperparameterValue`, or the engine's ``HyperValue``), the step that
    evaluated them (``objective``: None when no meta-iteration has, or it diverged)."""

    job_id: str
    spec: Mapping[str, Any]
    which: str
    meta_iter: int
    values: Mapping[str, Any]
    objective: float | None = None
    evaluated: bool = False


@dataclasses.dataclass(frozen=True)
class Bundle:
    """The file an export answers with."""

    filename: str
    media_type: str
    content: bytes
    meta_iter: int


def load(session: Session, tenant_id: str, job_id: str, which: str) -> Snapshot:
    """The snapshot ``which`` (``best``, ``last`` or a meta-iteration; `resolve_which`) of the tenant's
    job, with every hyperparameter.

    A fixed hyperparameter is stored once; where a snapshot's listing lacks one (snapshot 0 of a job
    that stored its fixed values at ``meta_iter`` 1), its value is read where it is stored: it never
    changes."""
    meta_iter = resolve_which(session, tenant_id, job_id, which)
    which = which.strip()
    which = which if which in ("best", "last") else str(meta_iter)  # "007" names snapshot 7
    job = get_job(session, tenant_id, job_id)
    _, rows = list_hyperparameters(session, tenant_id, job_id, meta_iter=meta_iter)
    _, latest = list_hyperparameters(session, tenant_id, job_id)
    values: dict[str, HyperparameterValue] = {}
    for row in rows:
        values[row.name] = get_hyperparameter(session, tenant_id, job_id, row.name, meta_iter=meta_iter)
    for row in latest:
        if row.name not in values and not row.learned:
            values[row.name] = get_hyperparameter(session, tenant_id, job_id, row.name)
    page = list_steps(session, tenant_id, job_id, after=meta_iter - 1, limit=1)
    step = page.items[0] if page.items and page.items[0].meta_iter == meta_iter else None
    return Snapshot(
        job_id=job.id,
        spec=dict(job.spec),
        which=which,
        meta_iter=meta_iter,
        values=dict(sorted(values.items())),
        objective=None if step is None else step.objective,
        evaluated=step is not None,
    )


def export(
    snapshot: Snapshot,
    to: str,
    *,
    parameter_shapes: Mapping[str, Sequence[int]] | None = None,
    target: str | None = None,
) -> Bundle:
    """The file for ``to`` (`TARGETS`). ``parameter_shapes``: the model's arrays in order with their
    shapes, where known (the listing's ``parameter_shapes``); ``target``: the dataset's target,
    ``"class"`` or ``"real"``, where known. Without them the snippets still give ``optimizer()`` and
    leave the model to the user. `Conflict` when the values cannot be written in the target's
    convention (a momentum the engine ran as exactly 1)."""
    if to not in TARGETS:
        raise ValueError(f"to must be one of {', '.join(TARGETS)}, got {to!r}")
    stem = f"{snapshot.job_id}-{snapshot.which}-{snapshot.meta_iter}"
    plan = _Plan.of(snapshot, parameter_shapes, target)
    hyper_npz = _hyperparameters_npz(snapshot, plan)
    if to == "npz":
        return Bundle(f"{stem}.npz", "application/octet-stream", hyper_npz, snapshot.meta_iter)
    arrays = schedules(snapshot, plan=plan)
    schedule = io.BytesIO()
    np.savez(schedule, **arrays)
    snippet = _OPTAX if to == "optax" else _PYTORCH
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("hyperparameters.npz", hyper_npz)
        z.writestr("schedule.npz", schedule.getvalue())
        z.writestr("spec.json", json.dumps(snapshot.spec, indent=2) + "\n")
        z.writestr(f"train_{to}.py", _render(snippet, snapshot, plan))
        z.writestr("README.md", _readme(snapshot, plan, to, arrays))
    return Bundle(f"{stem}-{to}.zip", "application/zip", out.getvalue(), snapshot.meta_iter)


def description(snapshot: Snapshot, plan: _Plan | None = None) -> dict[str, Any]:
    """``__export__``: what was exported and how to read it."""
    plan = plan or _Plan.of(snapshot, None, None)
    return {
        "job": snapshot.job_id,
        "which": snapshot.which,
        "meta_iter": snapshot.meta_iter,
        "evaluated": snapshot.evaluated,
        "objective": _finite_or_none(snapshot.objective),
        "training_optimizer": plan.optimizer,
        "defaults_used": dict(plan.defaults_used),
        "conventions": CONVENTIONS,
    }


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _hyperparameters_npz(snapshot: Snapshot, plan: _Plan) -> bytes:
    arrays: dict[str, np.ndarray] = {
        name: np.asarray(v.values, np.float64) for name, v in snapshot.values.items()
    }
    # Example weights go with the examples they weigh: each one's row in the dataset's source (an
    # upload's own row order), its given label and, where known, whether it was mislabelled.
    weights = snapshot.values.get("example_weight")
    if weights is not None and list(weights.axes) == ["example"]:
        for label, key, dtype in (
            ("example", "rows", np.int64),
            ("label", "label", np.int64),
            ("noisy", "noisy", bool),
        ):
            if isinstance(weights.labels.get(label), list):
                arrays[f"example_weight.{key}"] = np.asarray(weights.labels[label], dtype)
    arrays["__spec__"] = np.array(json.dumps(snapshot.spec))
    arrays["__export__"] = np.array(json.dumps(description(snapshot, plan)))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# ---- the per-array, per-step view --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a snippet needs beyond the values: the parameter arrays in model order (None: unknown),
    their shapes (None: unknown), the steps, the training optimizer, the model kind, the dataset's
    target, and the kinds that were not stored (their spec init or default is used)."""

    arrays: list[str] | None
    shapes: dict[str, list[int]] | None
    steps: int | None
    optimizer: str
    model: dict[str, Any]
    target: str | None
    values: dict[str, Any]
    defaults_used: tuple[tuple[str, float], ...]

    @classmethod
    def of(
        cls, snapshot: Snapshot, parameter_shapes: Mapping[str, Sequence[int]] | None, target: str | None
    ) -> _Plan:
        spec = snapshot.spec
        optimizer = vocab.training_optimizer(spec)
        values = dict(snapshot.values)
        arrays = _array_names(values, parameter_shapes)
        shapes = None
        if parameter_shapes is not None and arrays == list(parameter_shapes):
            shapes = {a: [int(d) for d in parameter_shapes[a]] for a in arrays}
        elif arrays is not None and all(f"init_scale.{a}" in values for a in arrays):
            shapes = {a: list(np.shape(values[f"init_scale.{a}"].values)) for a in arrays}
        steps = _steps(spec, values)
        defaults = []
        given = (spec.get("hyperparameters") or {}) if isinstance(spec, Mapping) else {}
        for kind, default in vocab.default_kinds(optimizer).items():
            if kind in values or any(name.startswith(f"{kind}.") for name in values):
                continue
            setting = given.get(kind) if isinstance(given, Mapping) else None
            init = setting.get("init") if isinstance(setting, Mapping) else None
            value = float(init) if isinstance(init, int | float) and not isinstance(init, bool) else default
            values[kind] = HyperparameterValue(kind, snapshot.meta_iter, [], [], {}, False, np.array(value))
            defaults.append((kind, value))
        model = dict(spec.get("model") or {}) if isinstance(spec, Mapping) else {}
        return cls(arrays, shapes, steps, optimizer, model, target, values, tuple(defaults))

    @property
    def written_model(self) -> bool:
        """Whether the snippets write the model's forward pass (an mlp or logreg of known shapes and
        target)."""
        known = self.shapes is not None and self.target is not None
        return known and self.model.get("kind") in _WRITTEN_MODELS


def _array_names(
    values: Mapping[str, Any], parameter_shapes: Mapping[str, Sequence[int]] | None
) -> list[str] | None:
    """The parameter arrays in model order: a ``layer`` axis's labels (what the values were stored
    with), else the listing's ``parameter_shapes``, else the per-weight values' names."""
    for v in values.values():
        axes = list(v.axes)
        if "layer" in axes and isinstance(v.labels.get("layer"), list):
            return [str(a) for a in v.labels["layer"]]
    if parameter_shapes:
        return list(parameter_shapes)
    for kind in ("init_scale", "l2"):
        names = [name.split(".", 1)[1] for name in values if name.startswith(f"{kind}.")]
        if names:
            return names
    return None


def _steps(spec: Mapping[str, Any], values: Mapping[str, Any]) -> int | None:
    training = spec.get("training") if isinstance(spec, Mapping) else None
    steps = training.get("steps") if isinstance(training, Mapping) else None
    if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
        return steps
    for v in values.values():
        axes = list(v.axes)
        if "step" in axes:
            return int(np.shape(v.values)[axes.index("step")])
    return None


def _per_step(name: str, value: Any, arrays: list[str], steps: int) -> dict[str, np.ndarray]:
    """A schedule kind (global, layer, step or layer_step) as ``{array: (T,)}``."""
    v = np.asarray(value.values, np.float64)
    axes = list(value.axes)
    layers = [str(a) for a in value.labels.get("layer", [])] if "layer" in axes else []
    if "step" in axes and v.shape[axes.index("step")] != steps:
        raise Conflict(f"{name} has {v.shape[axes.index('step')]} steps, the job's training {steps}")
    if "layer" in axes and sorted(layers) != sorted(arrays):
        raise Conflict(f"{name}'s layer axis names {layers}, not the model's arrays {arrays}")
    out = {}
    for array in arrays:
        if axes == []:
            out[array] = np.full(steps, float(v))
        elif axes == ["layer"]:
            out[array] = np.full(steps, float(v[layers.index(array)]))
        elif axes == ["step"]:
            out[array] = v.copy()
        elif axes == ["step", "layer"]:
            out[array] = v[:, layers.index(array)].copy()
        else:
            raise Conflict(f"{name} has axes {axes}: not a schedule (global, layer, step or layer_step)")
    return out


def _per_array(kind: str, values: Mapping[str, Any], arrays: list[str]) -> dict[str, np.ndarray] | None:
    """``init_scale`` or ``l2`` as ``{array: scalar or weight-shaped}``; None if not stored."""
    if kind in values:
        value = values[kind]
        v = np.asarray(value.values, np.float64)
        axes = list(value.axes)
        if axes == []:
            return {a: np.asarray(float(v)) for a in arrays}
        if axes == ["layer"]:
            layers = [str(a) for a in value.labels.get("layer", [])]
            return {a: np.asarray(float(v[layers.index(a)])) for a in arrays}
        return None
    if all(f"{kind}.{a}" in values for a in arrays):
        return {a: np.asarray(values[f"{kind}.{a}"].values, np.float64) for a in arrays}
    return None


def schedules(
    snapshot: Snapshot,
    *,
    parameter_shapes: Mapping[str, Sequence[int]] | None = None,
    plan: _Plan | None = None,
) -> dict[str, np.ndarray]:
    """``schedule.npz``: per parameter array ``A`` and training step, in optax's and PyTorch's
    convention (the two agree): ``lr/A`` and ``momentum/A`` (heavy ball) for ``sgd_momentum``; ``lr/A``,
    ``b1/A``, ``b2/A``, ``weight_decay/A`` (decoupled, AdamW's) for ``adam`` and ``adamw``; each
    ``(T,)``. Plus ``init_scale/A`` and ``l2/A`` (a scalar, or one per weight), where stored. See the
    module docstring for the conversion."""
    plan = plan or _Plan.of(snapshot, parameter_shapes, None)
    if plan.arrays is None:
        raise Conflict(
            f"job {snapshot.job_id}: its parameter arrays are unknown (no value has a layer axis or one per "
            "weight, and the service cannot build its model), so its values cannot be laid out per array; "
            "to=npz still works"
        )
    if plan.steps is None:
        raise Conflict(f"job {snapshot.job_id}: its spec gives no training.steps; to=npz still works")
    arrays, steps, values = plan.arrays, plan.steps, plan.values
    lr = _per_step("learning_rate", values["learning_rate"], arrays, steps)
    out: dict[str, np.ndarray] = {}
    if plan.optimizer == "sgd_momentum":
        gamma = _per_step("momentum", values["momentum"], arrays, steps)
        for a in arrays:
            g = quantize_gamma(gamma[a])
            if np.any(g == 1.0):
                t = int(np.argmax(g == 1.0))
                raise Conflict(
                    f"job {snapshot.job_id}: the momentum of {a} at step {t} ran as exactly 1 "
                    "(>= 1 - 2^-17), where the engine's velocity ignores the gradient: no heavy-ball "
                    "learning rate and momentum express that step; to=npz still works"
                )
            mu = np.empty(steps)
            mu[0] = g[0]
            mu[1:] = g[1:] * (1.0 - g[:-1]) / (1.0 - g[1:])
            out[f"lr/{a}"] = lr[a] * (1.0 - g)
            out[f"momentum/{a}"] = mu
    else:
        b1 = _per_step("beta1", values["beta1"], arrays, steps)
        b2 = _per_step("beta2", values["beta2"], arrays, steps)
        decays = plan.optimizer == "adamw" and "weight_decay" in values
        wd = _per_step("weight_decay", values["weight_decay"], arrays, steps) if decays else None
        for a in arrays:
            out[f"lr/{a}"] = lr[a]
            out[f"b1/{a}"] = quantize_beta(b1[a])
            out[f"b2/{a}"] = quantize_beta(b2[a])
            if wd is not None and np.any(wd[a] != 0):
                out[f"weight_decay/{a}"] = (1.0 - decay_factor(lr[a], wd[a])) / lr[a]
            else:
                out[f"weight_decay/{a}"] = np.zeros(steps)
    for kind in ("init_scale", "l2"):
        per_array = _per_array(kind, values, arrays)
        for a, v in (per_array or {}).items():
            out[f"{kind}/{a}"] = v
    return out


def _constant_betas(arrays: Mapping[str, np.ndarray]) -> bool:
    return all(np.all(v == v[0]) for k, v in arrays.items() if k.startswith(("b1/", "b2/")))


# ---- the bundle's text -----------------------------------------------------------------------------


def _render(template: str, snapshot: Snapshot, plan: _Plan) -> str:
    spec = snapshot.spec
    dataset = spec.get("dataset") or {}
    batch_size = dataset.get("batch_size") if isinstance(dataset, Mapping) else None
    if batch_size is not None and batch_size == dataset.get("train"):
        batch_size = None  # the engine trains full-batch then (hypercore.tune.Problem.build), not drawing
    constants = {
        "JOB": snapshot.job_id,
        "WHICH": snapshot.which,
        "META_ITER": snapshot.meta_iter,
        "SEED": int(spec.get("seed") or 0),
        "TRAINING_OPTIMIZER": plan.optimizer,
        "STEPS": plan.steps,
        "BATCH_SIZE": batch_size if isinstance(batch_size, int) else None,
        "ARRAYS": plan.arrays,
        "SHAPES": plan.shapes,
        "MODEL_KIND": plan.model.get("kind"),
        "ACTIVATION": plan.model.get("activation", "tanh"),
        "TARGET": plan.target,
        "WRITTEN_MODEL": plan.written_model,
        "EPS": ADAM_EPS,
    }
    lines = [f"{k} = {_literal(v)}" for k, v in constants.items()]
    return template.replace("{{CONSTANTS}}", "\n".join(lines)).replace("{{JOB}}", snapshot.job_id)


def _literal(value: Any) -> str:
    """``value`` as Python source in the repository's style (double-quoted strings)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _reflow(text: str, width: int = 100) -> str:
    """Markdown paragraphs and list items re-wrapped at ``width``; headings, indented blocks kept."""
    out = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if any(line.startswith(("    ", "#")) for line in lines) or not block.strip():
            out.append(block)
            continue
        items: list[list[str]] = []
        for line in lines:
            if line.startswith("- ") or not items:
                items.append([line])
            else:
                items[-1].append(line.strip())
        wrapped = []
        for item in items:
            bullet = item[0].startswith("- ")
            joined = " ".join(item)
            wrapped.append(
                textwrap.fill(
                    joined,
                    width,
                    subsequent_indent="  " if bullet else "",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
        out.append("\n".join(wrapped))
    return "\n\n".join(out)


def _readme(snapshot: Snapshot, plan: _Plan, to: str, arrays: Mapping[str, np.ndarray]) -> str:
    job, k = snapshot.job_id, snapshot.meta_iter
    if snapshot.evaluated and snapshot.objective is not None:
        scored = (
            f"Meta-iteration {k} (step {k} of `GET /v1/jobs/{job}/steps`) trained with exactly these values "
            f"and scored objective {snapshot.objective:.10g}."
        )
    elif snapshot.evaluated:
        scored = f"Meta-iteration {k} trained with exactly these values; its objective was not finite."
    else:
        scored = (
            "These are the values after the job's final update: no meta-iteration has trained with them yet "
            "(`which=best` gives the values the lowest-objective meta-iteration trained with)."
        )
    names = ", ".join(f"`{a}`" for a in plan.arrays or [])
    snippet = f"train_{to}.py"
    library = "optax" if to == "optax" else "PyTorch"
    if plan.optimizer == "sgd_momentum":
        conversion = f"""The job trained with SGD with momentum, the engine's (the paper's) rule, per
parameter array:

    v <- g_t v - (1 - g_t) grad;  w <- w + a_t v          (v_0 = 0)

{library} uses the heavy ball, `u <- mu_t u + grad; w <- w - lr_t u` (u_0 = 0). With
`u_t = -v_(t+1) / (1 - g_t)` they are the same run when

    lr_t = a_t (1 - g_t)
    momentum_t = g_t (1 - g_(t-1)) / (1 - g_t)      for t >= 1

`momentum_0` multiplies a buffer that is still zero and changes nothing; it is written as `g_0`
because PyTorch creates a momentum buffer only when the momentum is not 0. A momentum above
`g_(t-1)` can make `momentum_t` exceed 1: that is the same run, not an error. `g_t` is the momentum
the engine ran, `round(g 2^16) / 2^16` of the stored value (at most 2^-17 away), so that the export
repeats the engine's run."""
    else:
        which_adam = (
            "every beta here is constant over the steps, so the snippet uses the library's own Adam"
            if _constant_betas(arrays)
            else "some beta here changes over the steps, so the snippet carries a small Adam with the product"
        )
        adam = "AdamW" if plan.optimizer == "adamw" else "Adam"
        conversion = f"""The job trained with {adam}: optax's `adamw` rule with per-step values (eps = 1e-8,
m_0 = v_0 = 0):

    m <- b1_t m + (1 - b1_t) g;  v <- b2_t v + (1 - b2_t) g^2
    w <- (1 - lr_t wd_t) w - lr_t (m / c1_t) / (sqrt(v / c2_t) + eps),  c_t = 1 - prod_(s<=t) b_s

`lr`, `b1`, `b2` and `weight_decay` (decoupled, as optax's `adamw` and `torch.optim.AdamW`) are written
per parameter array and step. The betas are those the engine ran, `round(b 2^24) / 2^24`, and
`weight_decay_t = (1 - f_t) / lr_t` with `f_t = round((1 - lr_t wd_t) 2^24) / 2^24`, the factor the
engine multiplied the weights by (0 for Adam). The bias corrections `1 - prod b_s` equal the
libraries' `1 - b^(t+1)` only for a constant `b`: {which_adam}."""
    model = (
        f"`apply` and `loss` are the job's {plan.model.get('kind')} "
        f"({'mean softmax cross-entropy' if plan.target == 'class' else 'mean squared error'} "
        "over the batch) "
        "plus the L2 term."
        if plan.written_model
        else f"The job's model ({plan.model.get('kind')}) is not written out: bring your own, with these "
        f"parameter arrays{' and shapes' if plan.shapes else ''} ({names}), and add `l2_penalty(params)` to "
        "its loss."
    )
    defaults = ""
    if plan.defaults_used:
        listed = ", ".join(f"{k} = {v:g}" for k, v in plan.defaults_used)
        defaults = f"\nNot stored with the job, so taken from its spec's init or the default: {listed}.\n"
    extra = [
        n for n in snapshot.values if n.split(".", 1)[0] in ("training_data", "sharing", "example_weight")
    ]
    beyond = ""
    if extra:
        beyond = (
            f"\n`{'`, `'.join(extra)}` are in `hyperparameters.npz` but no optimizer setting: "
            "`training_data` is the learned training inputs (train on them with the dataset's labels), "
            "`sharing` the task-mixing matrices of a multi-task model, `example_weight` one weight per "
            "training example (`example_weight.rows`: each one's row in your data, `.label` its given "
            "label): the lowest are the examples to distrust; drop them, or weigh each example's loss by "
            "it (the engine's training loss is the weighted mean over each minibatch).\n"
        )
    seed = int(snapshot.spec.get("seed") or 0)
    repeat = (
        f"On the job's training split, preprocessed as the service does (`hypercore.data.load`), this "
        f"repeats meta-iteration {k}'s own run from seed {seed}:\n\n"
        f"    w_key = jax.random.split(jax.random.PRNGKey({seed}))[0]\n"
        f"    params = init_params(jax.random.fold_in(w_key, {k}))\n"
        f"    params = train(params, X_train, y_train, key=jax.random.fold_in(jax.random.key({seed}), {k}))"
        if to == "optax"
        else "Your own data, seeds and batch draws make a new run with the same hyperparameters."
    )
    resplit = ""
    dataset = snapshot.spec.get("dataset") or {}
    if isinstance(dataset, Mapping) and dataset.get("resplit"):
        resplit = " The job re-drew its train/valid split every meta-iteration (`dataset.resplit`)."
    return (
        _reflow(f"""# revtune export: job {job}, `which={snapshot.which}` (snapshot meta_iter {k})

`which={snapshot.which}` resolved to hyperparameter snapshot `meta_iter={k}`: the values after {k}
finished meta-iterations. {scored}
{defaults}
## Files

- `hyperparameters.npz`: every hyperparameter in natural units (a learning rate, not its log) under
  its REST name, float64 as stored (`GET /v1/jobs/{job}/hyperparameters/NAME?meta_iter={k}`), plus
  `__spec__` (the job's spec, JSON) and `__export__` (this export, JSON). Read it with
  `numpy.load(path, allow_pickle=False)`.
- `schedule.npz`: per parameter array `A` (in model order: {names}) and training step, the values in
  {library}'s convention, each of shape `(T,)` with T = {plan.steps}: {_schedule_keys(plan)}; and
  `init_scale/A`, `l2/A` (a scalar, or one per weight of `A`).
- `spec.json`: the job's spec.
- `{snippet}`: a runnable, self-contained snippet (no revtune needed): `optimizer()`{
            "" if to == "optax" else " (one parameter group per array) and `RevtuneSchedule`"
        }, `init_params`, `l2_penalty`, `apply`, `loss` and `train`. It reads the two `.npz` files beside it.
- `README.md`: this file.

## The conversion

{conversion}

## The loss

`l2` is the paper's penalty on the training loss, `sum lambda w^2` (its gradient is `2 lambda w`; no
1/2), a scalar per array or one per weight: the snippet adds it to the loss explicitly
(`l2_penalty`), not as the optimizer's weight decay. {model}
{beyond}
## Initial weights and minibatches

Every meta-iteration draws fresh initial weights, `init_scale * N(0, 1)` per weight (`init_scale` a
scalar per array or one per weight), and trains on minibatches of `batch_size` examples drawn
uniformly with replacement at every step (the full training set when the spec has no
`batch_size`).{resplit} `init_params` draws them as the engine does{
            " (one vector of normal draws in float32, cut into the arrays in model order)"
            if to == "optax"
            else " in distribution (torch's generator draws other numbers than the engine's JAX)"
        }; `train` draws a minibatch per step. {repeat}

Values are float64 as stored; a value that diverged is stored as it was (NaN or inf).
""")
        + "\n"
    )


def _schedule_keys(plan: _Plan) -> str:
    if plan.optimizer == "sgd_momentum":
        return "`lr/A`, `momentum/A`"
    return "`lr/A`, `b1/A`, `b2/A`, `weight_decay/A`"


_OPTAX = '''"""Train with the hyperparameters revtune learned for job {{JOB}}, in optax.

Generated by revtune's export; needs jax, optax and numpy (no revtune). README.md beside this file
says what every value is. `optimizer()` is the job's training optimizer, per parameter array and
step, in optax's convention (schedule.npz); `init_params`, `l2_penalty`, `apply`, `loss` and `train`
repeat the rest of the job's training run.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = pathlib.Path(__file__).resolve().parent
with np.load(HERE / "schedule.npz", allow_pickle=False) as _z:
    SCHEDULE = {k: _z[k] for k in _z.files}

{{CONSTANTS}}


def _at(values, count):
    """``values[count]``; past the job's last step, its last value."""
    return values[jnp.minimum(count, values.shape[0] - 1)]


class ScheduledAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def scheduled_adamw(lr, b1, b2, weight_decay, eps=EPS) -> optax.GradientTransformation:
    """Adam(W) with per-step ``b1``, ``b2``: bias corrections ``1 - prod_{s<=t} b_s`` (the engine's),
    which optax's ``1 - b^(t+1)`` equals only for a constant ``b``; decoupled weight decay as adamw."""
    lr, b1, b2, weight_decay = (jnp.asarray(x) for x in (lr, b1, b2, weight_decay))
    c1, c2 = 1.0 - jnp.cumprod(b1), 1.0 - jnp.cumprod(b2)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScheduledAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(grads, state, params):
        t = jnp.minimum(state.count, lr.shape[0] - 1)
        mu = jax.tree.map(lambda m, g: (b1[t] * m + (1 - b1[t]) * g).astype(m.dtype), state.mu, grads)
        nu = jax.tree.map(lambda v, g: (b2[t] * v + (1 - b2[t]) * g * g).astype(v.dtype), state.nu, grads)

        def step(m, v, w):
            u = (m / c1[t]) / (jnp.sqrt(v / c2[t]) + eps)
            return (-lr[t] * (u + weight_decay[t] * w)).astype(w.dtype)

        return jax.tree.map(step, mu, nu, params), ScheduledAdamState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init, update)


def _array_optimizer(name: str) -> optax.GradientTransformation:
    lr = jnp.asarray(SCHEDULE[f"lr/{name}"])
    if TRAINING_OPTIMIZER == "sgd_momentum":
        momentum = jnp.asarray(SCHEDULE[f"momentum/{name}"])
        return optax.inject_hyperparams(optax.sgd)(
            learning_rate=lambda count: _at(lr, count), momentum=lambda count: _at(momentum, count)
        )
    b1, b2 = SCHEDULE[f"b1/{name}"], SCHEDULE[f"b2/{name}"]
    weight_decay = jnp.asarray(SCHEDULE[f"weight_decay/{name}"])
    if np.all(b1 == b1[0]) and np.all(b2 == b2[0]):
        if TRAINING_OPTIMIZER == "adam":
            return optax.inject_hyperparams(optax.adam)(
                learning_rate=lambda count: _at(lr, count), b1=float(b1[0]), b2=float(b2[0]), eps=EPS
            )
        return optax.inject_hyperparams(optax.adamw)(
            learning_rate=lambda count: _at(lr, count),
            b1=float(b1[0]),
            b2=float(b2[0]),
            eps=EPS,
            weight_decay=lambda count: _at(weight_decay, count),
        )
    return scheduled_adamw(lr, b1, b2, weight_decay)


def optimizer() -> optax.GradientTransformation:
    """The job's training optimizer for a params dict ``{array name: array}``: one optax optimizer
    per parameter array, each with its own per-step values (counted from its first update)."""
    transforms = {name: _array_optimizer(name) for name in ARRAYS}
    return optax.multi_transform(transforms, {name: name for name in ARRAYS})


def init_params(key, dtype=jnp.float32) -> dict[str, jax.Array]:
    """``init_scale * N(0, 1)`` per weight: one vector of standard normal draws from ``key``, cut into
    the arrays in model order, as the engine draws them."""
    if SHAPES is None or any(f"init_scale/{name}" not in SCHEDULE for name in ARRAYS):
        raise NotImplementedError(f"this job's parameter shapes or init scales are unknown; arrays: {ARRAYS}")
    sizes = [math.prod(SHAPES[name]) for name in ARRAYS]
    z = jax.random.normal(key, (sum(sizes),), dtype)
    params, start = {}, 0
    for name, size in zip(ARRAYS, sizes, strict=True):
        scale = jnp.asarray(SCHEDULE[f"init_scale/{name}"]).astype(dtype)
        params[name] = scale * z[start : start + size].reshape(SHAPES[name])
        start += size
    return params


def l2_penalty(params) -> jax.Array:
    """``sum lambda w^2`` over every array with an ``l2`` (no 1/2): the job's penalty, part of the loss."""
    total = jnp.zeros((), params[ARRAYS[0]].dtype)
    for name in ARRAYS:
        lam = SCHEDULE.get(f"l2/{name}")
        if lam is not None and np.any(lam != 0):
            w = params[name]
            total = total + jnp.sum(jnp.asarray(lam).astype(w.dtype) * w * w)
    return total


def apply(params, X) -> jax.Array:
    """The job's model: logits (or a real target's outputs) for a batch ``X``, each example flattened."""
    if not WRITTEN_MODEL:
        raise NotImplementedError(
            f"the job's model ({MODEL_KIND}) is not written out here: bring your own with the parameter "
            f"arrays {ARRAYS}" + (f" of shapes {SHAPES}" if SHAPES else "")
        )
    n_layers = len(ARRAYS) // 2
    h = jnp.asarray(X).reshape(np.shape(X)[0], -1).astype(params["layer0.W"].dtype)
    for i in range(n_layers):
        h = h @ params[f"layer{i}.W"] + params[f"layer{i}.b"]
        if i < n_layers - 1:
            h = jnp.tanh(h) if ACTIVATION == "tanh" else jax.nn.relu(h)
    return h


def loss(params, X, y) -> jax.Array:
    """The job's training loss on a batch: the mean softmax cross-entropy (the mean squared error for
    a real target) plus `l2_penalty`."""
    out = apply(params, X)
    if TARGET == "real":
        err = out - jnp.asarray(y).reshape(out.shape).astype(out.dtype)
        data = jnp.mean(err * err)
    else:
        logp = jax.nn.log_softmax(out, axis=-1)
        data = -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=-1))
    return data + l2_penalty(params)


def train(params, X, y, batch_size=BATCH_SIZE, key=None, steps=STEPS, loss_fn=loss):
    """``steps`` steps of `optimizer` on ``loss_fn``: step ``t`` on ``batch_size`` examples drawn
    uniformly with replacement with ``jax.random.fold_in(key, t)`` (``batch_size`` None: every example)."""
    opt = optimizer()
    state = opt.init(params)
    X, y = jnp.asarray(X), jnp.asarray(y)
    n = X.shape[0]
    if batch_size is not None and key is None:
        raise ValueError("minibatches need a key: train(..., key=jax.random.key(0))")

    @jax.jit
    def step(params, state, t):
        if batch_size is None:
            xb, yb = X, y
        else:
            idx = jax.random.randint(jax.random.fold_in(key, t), (batch_size,), 0, n, dtype=jnp.int32)
            xb, yb = X[idx], y[idx]
        grads = jax.grad(loss_fn)(params, xb, yb)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for t in range(steps):
        params, state = step(params, state, jnp.int32(t))
    return params


if __name__ == "__main__":
    print(f"job {JOB}, which={WHICH}: snapshot meta_iter {META_ITER}, {TRAINING_OPTIMIZER}, {STEPS} steps")
    print(f"parameter arrays: {ARRAYS}")
    print(optimizer())
'''


_PYTORCH = '''"""Train with the hyperparameters revtune learned for job {{JOB}}, in PyTorch.

Generated by revtune's export; needs torch and numpy (no revtune). README.md beside this file says
what every value is. `optimizer(params)` has one parameter group per array; `RevtuneSchedule` sets
each group's values for every step (call its `step()` after every `optimizer.step()`, as a
scheduler); `init_params`, `l2_penalty`, `apply`, `loss` and `train` repeat the rest of the job's
training run.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
with np.load(HERE / "schedule.npz", allow_pickle=False) as _z:
    SCHEDULE = {k: _z[k] for k in _z.files}

{{CONSTANTS}}

CONSTANT_BETAS = TRAINING_OPTIMIZER == "sgd_momentum" or all(
    np.all(v == v[0]) for k, v in SCHEDULE.items() if k.startswith(("b1/", "b2/"))
)


class ScheduledAdamW(torch.optim.Optimizer):
    """Adam(W) with per-step ``b1``, ``b2``: bias corrections ``1 - prod_{s<=t} b_s`` (the engine's),
    which torch's ``1 - b^t`` equals only for a constant ``b``; decoupled weight decay as AdamW.
    `RevtuneSchedule` sets each group's ``lr``, ``b1``, ``b2`` and ``weight_decay`` per step."""

    def __init__(self, params, eps=EPS):
        super().__init__(params, {"lr": 0.0, "b1": 0.9, "b2": 0.999, "weight_decay": 0.0, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, b1, b2, wd, eps = (group[k] for k in ("lr", "b1", "b2", "weight_decay", "eps"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    state["prod_b1"], state["prod_b2"] = 1.0, 1.0
                state["prod_b1"] *= b1
                state["prod_b2"] *= b2
                state["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                state["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                mhat = state["m"] / (1 - state["prod_b1"])
                denom = (state["v"] / (1 - state["prod_b2"])).sqrt().add_(eps)
                p.mul_(1 - lr * wd).addcdiv_(mhat, denom, value=-lr)
        return loss


def _values(name: str, t: int) -> dict[str, float]:
    """Group ``name``'s values at step ``t`` (past the job's last step: its last values)."""
    t = min(t, STEPS - 1)
    lr = float(SCHEDULE[f"lr/{name}"][t])
    if TRAINING_OPTIMIZER == "sgd_momentum":
        return {"lr": lr, "momentum": float(SCHEDULE[f"momentum/{name}"][t])}
    values = {"lr": lr, "weight_decay": float(SCHEDULE[f"weight_decay/{name}"][t])}
    b1, b2 = float(SCHEDULE[f"b1/{name}"][t]), float(SCHEDULE[f"b2/{name}"][t])
    if CONSTANT_BETAS:
        values["betas"] = (b1, b2)
    else:
        values.update(b1=b1, b2=b2)
    return values


def optimizer(params: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
    """The job's training optimizer: one parameter group per array (``group["name"]``), with step 0's
    values; `RevtuneSchedule` moves them on."""
    groups = [{"params": [params[name]], "name": name, **_values(name, 0)} for name in ARRAYS]
    if TRAINING_OPTIMIZER == "sgd_momentum":
        # dampening 0, no nesterov: the heavy ball u <- momentum u + grad; w <- w - lr u
        return torch.optim.SGD(groups, lr=groups[0]["lr"])
    if not CONSTANT_BETAS:
        return ScheduledAdamW(groups, eps=EPS)
    if TRAINING_OPTIMIZER == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"], eps=EPS, weight_decay=0.0)
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], eps=EPS)


class RevtuneSchedule:
    """Sets every parameter group's per-step values (like ``LambdaLR``, but per group and for the
    momentum, betas and weight decay too): step 0's at construction, step ``t``'s after the ``t``-th
    call of `step`. Call ``schedule.step()`` after every ``optimizer.step()``."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer, self.t = optimizer, 0
        self._set()

    def _set(self) -> None:
        for group in self.optimizer.param_groups:
            group.update(_values(group["name"], self.t))

    def step(self) -> None:
        self.t += 1
        self._set()

    def state_dict(self) -> dict:
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        self._set()


def init_params(generator=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """``init_scale * N(0, 1)`` per weight, drawn by torch (the engine's distribution; other numbers
    than its JAX draws)."""
    if SHAPES is None or any(f"init_scale/{name}" not in SCHEDULE for name in ARRAYS):
        raise NotImplementedError(f"this job's parameter shapes or init scales are unknown; arrays: {ARRAYS}")
    params = {}
    for name in ARRAYS:
        scale = torch.as_tensor(SCHEDULE[f"init_scale/{name}"], dtype=dtype)
        params[name] = (scale * torch.randn(SHAPES[name], generator=generator, dtype=dtype)).requires_grad_()
    return params


def l2_penalty(params) -> torch.Tensor:
    """``sum lambda w^2`` over every array with an ``l2`` (no 1/2): the job's penalty, part of the loss."""
    total = torch.zeros((), dtype=params[ARRAYS[0]].dtype)
    for name in ARRAYS:
        lam = SCHEDULE.get(f"l2/{name}")
        if lam is not None and np.any(lam != 0):
            w = params[name]
            total = total + torch.sum(torch.as_tensor(lam, dtype=w.dtype) * w * w)
    return total


def apply(params, X) -> torch.Tensor:
    """The job's model: logits (or a real target's outputs) for a batch ``X``, each example flattened."""
    if not WRITTEN_MODEL:
        raise NotImplementedError(
            f"the job's model ({MODEL_KIND}) is not written out here: bring your own with the parameter "
            f"arrays {ARRAYS}" + (f" of shapes {SHAPES}" if SHAPES else "")
        )
    n_layers = len(ARRAYS) // 2
    h = torch.as_tensor(X).reshape(len(X), -1).to(params["layer0.W"].dtype)
    for i in range(n_layers):
        h = h @ params[f"layer{i}.W"] + params[f"layer{i}.b"]
        if i < n_layers - 1:
            h = torch.tanh(h) if ACTIVATION == "tanh" else torch.relu(h)
    return h


def loss(params, X, y) -> torch.Tensor:
    """The job's training loss on a batch: the mean softmax cross-entropy (the mean squared error for
    a real target) plus `l2_penalty`."""
    out = apply(params, X)
    if TARGET == "real":
        data = torch.mean((out - torch.as_tensor(y).reshape(out.shape).to(out.dtype)) ** 2)
    else:
        data = torch.nn.functional.cross_entropy(out, torch.as_tensor(y).long())
    return data + l2_penalty(params)


def train(params, X, y, batch_size=BATCH_SIZE, generator=None, steps=STEPS, loss_fn=loss):
    """``steps`` steps of `optimizer` with `RevtuneSchedule` on ``loss_fn``: each on ``batch_size``
    examples drawn uniformly with replacement (``batch_size`` None: every example)."""
    opt = optimizer(params)
    schedule = RevtuneSchedule(opt)
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    for _ in range(steps):
        if batch_size is None:
            xb, yb = X, y
        else:
            idx = torch.randint(0, len(X), (batch_size,), generator=generator)
            xb, yb = X[idx], y[idx]
        opt.zero_grad()
        loss_fn(params, xb, yb).backward()
        opt.step()
        schedule.step()
    return params


if __name__ == "__main__":
    print(f"job {JOB}, which={WHICH}: snapshot meta_iter {META_ITER}, {TRAINING_OPTIMIZER}, {STEPS} steps")
    print(f"parameter arrays: {ARRAYS}")
    print(optimizer(init_params()) if SHAPES else "bring your own model")
'''
