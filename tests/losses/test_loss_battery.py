"""The battery every jaxlearn loss passes: one row per loss function in `CASES`.

Adding a loss is one `LossCase` above the marker line: the function, an independent float64
NumPy reference, and data fields saying what it accepts: `targets` (which of integer "labels",
"one_hot" and "soft" probability targets its second argument takes; empty for a loss that is not
a classification loss, which then gives `make_inputs` and `bad_shape`), `weights` (per-example
weights or a boolean mask) and `default_reduction` (None for a loss without `reduction`).
Every registered method of kind "loss" or "regularizer" must have a row.

Stateful losses (per-example buffers such as ELR's target rows, ALDR-KL's lambdas, PS-KD's
previous predictions) give `make_state(rng, inputs) -> state` and `state_name` (the name of the
state argument in the loss's errors). Such a loss is called `loss(first, *rest, state, [weights=,
reduction=]) -> (losses, new_state)` and its reference `reference(*inputs, state) -> (losses,
new_state)`; the state is a NumPy array or a tuple of arrays with the batch shape in front, and
the new state has the same structure, shapes and dtypes (at least float32, whatever the dtype
of `first`). A loss that stops the gradient of something computed from `first` (a state update
used in the loss, data-dependent coefficients) sets `frozen=True`: its reference then takes the
keyword `frozen_at` (the unperturbed `first`, or None for `first` itself) and computes those
stopped quantities from it, so that central differences see them as constants.

Large logits. Every row must give finite values and gradients equal to the reference at logits
of +-1e4: use safe forms (log-space sums, `log1p`, centred variances, an eps in normalisers).
Only a loss whose true value itself overflows float32 there (e.g. a sum of exponentials of
margins of 2e4) may be listed in `EXEMPT_FROM_LARGE_LOGITS`, name -> the reason why the exact
value is not representable; its check is then skipped with that reason. Numerical convenience is
not a reason.

For every row and every target form it supports:
  * the value against the reference (logits of scale 1 and 10), in float32, eager and under `jit`;
  * the gradient against central differences of the reference (float64), stopped quantities
    frozen at the unperturbed inputs (`frozen`);
  * finite values and gradients at logits of +-1e4 (equal to the reference; rows not exempt) and
    for bfloat16 logits (returned in bfloat16, close to float32 on the same rounded logits);
  * stateful rows: the new state against the reference, finite at +-1e4 and for bfloat16 logits
    (in the state's dtype, close to the float32 one), and carrying no gradient (the gradient
    flows only through the losses, as in the official codes that detach their buffers); a state
    of the wrong batch shape raises a ValueError naming `state_name`;
  * a ValueError naming the argument for mismatched shapes, concrete labels out of range or not
    integers, and concrete targets that are not probability rows; under `jit`, where they cannot
    be inspected, NaN (not a clamped value) for that example's loss and gradient only;
  * integer labels give what their one-hot targets give (in the row itself, or in `one_hot_row`);
  * with `weights`: all ones equal no weights; a zero weight removes an example (its loss and its
    gradient); scaling the weights by c scales "none" and "sum" by c and leaves "mean" unchanged;
    the weighted reductions match the reference (mean = sum(w l) / sum(w), 0 when every weight is
    0; see `jaxlearn.losses._common`); a boolean mask equals 0/1 weights; invalid concrete weights
    raise, invalid traced ones give NaN;
  * with `reduction`: "none" has the batch shape, "sum" == "mean" * batch size, an unknown
    reduction raises.

CPU budget: about 1.5 s per row and target form (measured on 2 loaded cores). Everything a row
computes under `jit` is one program, `program(case)`, compiled with `jaxlearn._compile.fast_jit`
once per row and input dtype and reused for every scale, target form, weight vector and invalid
input: every reduction, the weighted variants, gradients and the bfloat16 path are its outputs.
Besides it, a row compiles its kernel for one eager call and one float64 gradient (also with
`fast_jit`). A new check should add an output to `program` (a new input shape or dtype is a new
compilation) and read values with NumPy (every eager jnp op compiles). A stateful row's state is
one more argument of the same program, and its new state, the state's gradient check and the
bfloat16 state are more outputs of it: still one program per row and dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn import losses, registry
from jaxlearn._compile import fast_jit

Inputs = tuple[np.ndarray, ...]
FORMS = ("labels", "one_hot", "soft")


@dataclasses.dataclass(frozen=True)
class LossCase:
  """One loss function under test.

  Attributes:
    name: the pytest id.
    slug: the registry slug of the method the loss belongs to.
    loss: `loss(first, *rest, [weights=..., reduction=...])`; per-example losses by default unless
      `default_reduction` says otherwise. `first` (logits, predictions or parameters) is the input
      differentiated and scaled.
    reference: `reference(*inputs) -> per-example losses`, an independent float64 NumPy
      transcription of the paper's equations, given the inputs as passed to `loss`.
    targets: for a classification loss `loss(logits, targets)`: the forms its second argument
      takes: "labels" (integer class indices of shape logits.shape[:-1]), "one_hot" and "soft"
      (probability rows of the shape of logits). Empty for other losses.
    weights: whether `loss` takes `weights=`, per-example weights or a boolean mask.
    default_reduction: the default of `loss`'s `reduction=` ("none", "mean" or "sum"); None if it
      has no such argument.
    one_hot_row: the name of the row computing the same loss from probability targets, if this
      row's loss takes only labels.
    make_inputs: for a loss without `targets`: `make_inputs(rng, scale) -> inputs` (NumPy).
    bad_shape: for a loss without `targets`: `bad_shape(inputs) -> (inputs with mismatched
      shapes, argument name)`.
    make_state: for a stateful loss: `make_state(rng, inputs) -> state` (NumPy array or tuple
      of arrays, batch shape in front); None for a loss without state. See the module docstring.
    state_name: the name of the state argument (a wrong batch shape must raise naming it).
    frozen: whether `reference` takes `frozen_at=` (quantities the loss stops the gradient of are
      computed from it; see the module docstring).
  """

  name: str
  slug: str
  loss: Callable[..., jax.Array]
  reference: Callable[..., np.ndarray]
  targets: tuple[str, ...] = ()
  weights: bool = False
  default_reduction: str | None = None
  one_hot_row: str | None = None
  make_inputs: Callable[[np.random.Generator, float], Inputs] | None = None
  bad_shape: Callable[[Inputs], tuple[Inputs, str]] | None = None
  make_state: Callable[[np.random.Generator, Inputs], Any] | None = None
  state_name: str = "state"
  frozen: bool = False


# Independent references (float64 NumPy, from the papers' equations).


def _stablemax_log_probs(logits):
  """log(s(x) / sum s(x)) with the paper's s (arXiv:2501.04697)."""
  x = np.asarray(logits, np.float64)
  s = np.where(x >= 0, x + 1, 1 / (1 - np.minimum(x, 0)))
  return np.log(s / s.sum(-1, keepdims=True))


def _stablemax_ce_reference(logits, labels):
  return -_stablemax_log_probs(logits)[np.arange(len(labels)), labels]


def _stablemax_ce_probs_reference(logits, targets):
  return -(np.asarray(targets, np.float64) * _stablemax_log_probs(logits)).sum(-1)


# Stateful losses (ELR, ALDR-KL, PS-KD): shared NumPy pieces.


def _softmax64(logits):
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _log_softmax64(logits):
  z = np.asarray(logits, np.float64)
  shifted = z - z.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _probability_rows(logits, labels):
  """One-hot rows for integer labels, the targets themselves otherwise (float64)."""
  labels = np.asarray(labels)
  if labels.ndim < np.ndim(logits):
    return np.eye(np.shape(logits)[-1])[labels]
  return labels.astype(np.float64)


def _elr_reference(logits, labels, rows, frozen_at=None, beta=0.7, lam=3.0):
  """The official `elr_loss` (github.com/shengliu66/ELR, ELR/model/loss.py) per example."""
  p = np.clip(_softmax64(logits), 1e-4, 1 - 1e-4)
  q = np.clip(_softmax64(logits if frozen_at is None else frozen_at), 1e-4, 1 - 1e-4)
  t = beta * np.asarray(rows, np.float64) + (1 - beta) * q / q.sum(-1, keepdims=True)
  cross_entropy = -(_probability_rows(logits, labels) * _log_softmax64(logits)).sum(-1)
  return cross_entropy + lam * np.log(1 - (t * p).sum(-1)), t


def _partial_probability_rows(rng, inputs):
  """ELR-like running targets: probability rows times a mass in [0.2, 1) (float32)."""
  batch, classes = np.shape(inputs[0])
  rows = rng.dirichlet(np.ones(classes), size=batch) * rng.uniform(0.2, 1.0, size=(batch, 1))
  return rows.astype(np.float32)


# Bags, slates and paired views (aggregate responses, NeuralNDCG, Starbucks): own inputs.

_BAG_IDS = np.array([0, 1, 2, 0, 1, 2, 0, 2], np.int32)  # bags of sizes 3, 2, 3


def _bag_inputs(rng, scale):
  return rng.normal(size=8) * scale, _BAG_IDS, rng.normal(size=3)


def _bag_bad_shape(inputs):
  return (inputs[0], inputs[1][:-1], inputs[2]), "bag_ids"


def _bag_level_reference(predictions, bag_ids, responses):
  f = np.asarray(predictions, np.float64)
  means = np.array([f[bag_ids == b].mean() for b in range(len(responses))])
  return (np.asarray(responses, np.float64) - means) ** 2


def _instance_level_reference(predictions, bag_ids, responses):
  return (np.asarray(responses, np.float64)[bag_ids] - np.asarray(predictions, np.float64)) ** 2


def _slate_inputs(rng, scale):
  """4 slates of 5 items; -1 pads the ends of two slates; every slate has a relevant item."""
  labels = rng.integers(0, 3, size=(4, 5)).astype(np.float32)
  labels[:, 0] = np.maximum(labels[:, 0], 1)
  labels[1, 3:] = -1
  labels[2, 4:] = -1
  return rng.normal(size=(4, 5)) * scale, labels


def _slate_bad_shape(inputs):
  return (inputs[0], inputs[1][:, :-1]), "labels"


def _neural_ndcg_reference(scores, labels, k=3, tau=1.0, tol=1e-6, max_iter=50):
  """allRank's neuralNDCG per slate (float64, padding at the end of a slate)."""
  losses = []
  for s, y in zip(np.asarray(scores, np.float64), np.asarray(labels, np.float64)):
    m = int(np.sum(y != -1))
    s, y = s[:m], y[:m]
    scale = m + 1 - 2 * np.arange(1, m + 1)
    z = (scale[:, None] * s[None, :] - np.abs(s[:, None] - s[None, :]).sum(1)[None, :]) / tau
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for _ in range(max_iter):
      p = p / np.maximum(p.sum(0, keepdims=True), 1e-10)
      p = p / np.maximum(p.sum(1, keepdims=True), 1e-10)
      if max(np.abs(p.sum(1) - 1).max(), np.abs(p.sum(0) - 1).max()) < tol:
        break
    gains = 2.0**y - 1
    discounts = 1 / np.log2(np.arange(m) + 2)
    idcg = np.sum(np.sort(gains)[::-1][:k] * discounts[:k])
    losses.append(-np.sum((p @ gains)[:k] * discounts[:k]) / (idcg + 1e-10))
  return np.array(losses)


def _view_inputs(rng, scale):
  """Starbucks: 4 queries (batch axis first here) of 3 layers, 8 passages (groups of 2), width 6."""
  return rng.normal(size=(4, 3, 6)) * scale, rng.normal(size=(3, 8, 6))


def _view_bad_shape(inputs):
  return (inputs[0], inputs[1][:, :-1]), "p_reps"


_STARBUCKS_PAIRS = ((0, 2), (1, 4), (2, 6))


def _starbucks_queries_first(q_reps, p_reps, **options):
  """`starbucks_loss` with the queries (the batch) on the first axis of `q_reps`."""
  return losses.starbucks_loss(jnp.swapaxes(q_reps, 0, 1), p_reps, layer_dims=_STARBUCKS_PAIRS,
                               temperature=0.5, kl_weight=0.7, **options)


def _starbucks_reference(q_reps, p_reps, frozen_at=None, tau=0.5, kl_weight=0.7):
  """ielab/Starbucks retrieval/modeling.py `forward` (fixed list) per query, float64; the KL
  target (detached there) is computed from `frozen_at`."""
  q, p = np.asarray(q_reps, np.float64).swapaxes(0, 1), np.asarray(p_reps, np.float64)
  target_q = q if frozen_at is None else np.asarray(frozen_at, np.float64).swapaxes(0, 1)
  rows, positives = np.arange(q.shape[1]), np.arange(q.shape[1]) * 2
  full = _log_softmax64(q[-1] @ p[-1].T / tau)
  target = np.exp(_log_softmax64(target_q[-1] @ p[-1].T / tau))
  losses = -full[rows, positives]
  for layer, dim in _STARBUCKS_PAIRS[:-1]:
    sub = _log_softmax64(q[layer, :, :dim] @ p[layer, :, :dim].T / tau)
    kl = np.sum(np.where(target > 0, target * (np.log(np.where(target > 0, target, 1)) - sub), 0), 1)
    losses = losses - sub[rows, positives] + kl_weight * kl
  return losses


# Classification losses of the spherical and comp-sum families, and EnsLoss (binary scores).


def _z_loss_reference(logits, labels, a=1.5, b=0.5, eps=1e-12):
  """(1/a) softplus(a (b - z_c)), z = (o - mean) / sqrt(centred variance + eps) (arXiv:1604.08859);
  soft targets: sum_c t_c l(o, c)."""
  o = np.asarray(logits, np.float64)
  centred = o - o.mean(-1, keepdims=True)
  z = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
  return (_probability_rows(logits, labels) * np.logaddexp(0.0, a * (b - z)) / a).sum(-1)


def _comp_sum_reference(logits, labels, tau):
  """Phi^tau(u) = ((1 + u)^(1 - tau) - 1) / (1 - tau), u = (1 - p_c) / p_c (arXiv:2304.07288);
  soft targets: sum_c t_c l(h, c)."""
  log_p = _log_softmax64(logits)
  per_class = np.expm1(-(1 - tau) * log_p) / (1 - tau)  # (1 + u) = 1 / p
  return (_probability_rows(logits, labels) * per_class).sum(-1)


_ENSLOSS_BATCH = 6
_ENSLOSS_KEY = jax.random.key(5)


@functools.cache
def _ensloss_draws(n):
  return np.asarray(jax.random.normal(_ENSLOSS_KEY, (n,), jnp.float32), np.float64)


def _ensloss_inputs(rng, scale):
  return rng.normal(size=_ENSLOSS_BATCH) * scale, rng.integers(0, 2, size=_ENSLOSS_BATCH)


def _ensloss_bad_shape(inputs):
  return (inputs[0], inputs[1][:-1]), "labels"


def _ensloss_reference(logits, labels, frozen_at=None):
  """The official ensLoss.forward (statmlben/ensLoss losses.py), lambda = 0, per example, with
  the sorted coefficients (ranking and 1/s tail) frozen at `frozen_at`."""
  sign = 2.0 * np.asarray(labels, np.float64) - 1.0
  s = sign * np.asarray(logits, np.float64)
  s0 = sign * np.asarray(logits if frozen_at is None else frozen_at, np.float64)
  g = np.zeros_like(s)
  g[np.argsort(s0, kind="stable")] = np.maximum(np.sort(-np.exp(_ensloss_draws(len(s)))), -1.0)
  g = np.where(s0 > 1, g / np.where(s0 > 1, s0, 1.0), g) - 1e-6
  return g * s


def _ldr_scores64(logits, softplus, normalize):
  """The official preprocessing: softplus, then divided by the mean absolute score."""
  f = np.asarray(logits, np.float64)
  s = np.logaddexp(0.0, f) if softplus else f
  if not normalize:
    return s
  scale = np.abs(s).mean(-1, keepdims=True)
  if not softplus:
    return s / scale
  # Where every softplus(f) of a row underflows, its limit: softplus(x) ~ e^x as x -> -inf.
  tiny = scale < 1e-300
  return np.where(tiny, f.shape[-1] * _softmax64(f), s / np.where(tiny, 1.0, scale))


def _ldr_log_mean_exp(scores, y, margin, lam):
  """lam log mean_k exp(d_k / lam), d = c (1 - y) + s - <y, s> (official `LDRLoss_V1`)."""
  d = (margin * (1 - y) + scores - (y * scores).sum(-1, keepdims=True)) / lam
  top = d.max(-1, keepdims=True)
  return lam[..., 0] * (np.log(np.exp(d - top).mean(-1)) + top[..., 0])


def _ldr_kl_reference(logits, labels, margin=0.1, lam=10.0):
  s = _ldr_scores64(logits, True, True)
  lam = np.full(s.shape[:-1] + (1,), lam)
  return _ldr_log_mean_exp(s, _probability_rows(logits, labels), margin, lam)


def _aldr_kl_reference(logits, labels, lambdas, frozen_at=None, margin=0.1, lam0=10.0,
                       alpha=2.0):
  """The official `ALDRLoss_V1` (softplus=False) per example, and the new lambdas."""
  s = _ldr_scores64(logits, False, True)
  s_frozen = _ldr_scores64(logits if frozen_at is None else frozen_at, False, True)
  k = s.shape[-1]
  p = _softmax64(s_frozen / np.asarray(lambdas, np.float64)[..., None]) + 1e-5
  p = p / p.sum(-1, keepdims=True)
  kl = (p * np.log(k * p)).sum(-1)
  new = lam0 - lam0 * kl / (alpha * np.log(k))
  extra = -0.5 * alpha * np.log(k) / lam0 * (new - lam0) ** 2
  y = _probability_rows(logits, labels)
  return _ldr_log_mean_exp(s, y, margin, new[..., None]) + extra, new


def _aldr_lambdas(rng, inputs):
  """Per-example lambdas in (lam0 (1 - 1 / alpha), lam0] = (5, 10] (float32)."""
  return rng.uniform(5.5, 10.0, size=np.shape(inputs[0])[:-1]).astype(np.float32)


def _ps_kd_reference(logits, labels, previous, alpha=0.6):
  """Official PS-KD (main.py, pskd_loss.py): soft target (1 - a) y + a p_prev, its
  cross-entropy per example; the new buffer rows are the softmax."""
  targets = (1 - alpha) * _probability_rows(logits, labels) + alpha * np.asarray(
      previous, np.float64)
  return -(targets * _log_softmax64(logits)).sum(-1), _softmax64(logits)


def _previous_predictions(rng, inputs):
  """Previous softmax rows (float32)."""
  batch, classes = np.shape(inputs[0])
  return rng.dirichlet(np.ones(classes), size=batch).astype(np.float32)


CASES = [
    LossCase(
        name="stablemax_cross_entropy",
        slug="stablemax",
        loss=losses.stablemax_cross_entropy,
        reference=_stablemax_ce_reference,
        targets=("labels",),
        weights=True,
        default_reduction="none",
        one_hot_row="stablemax_cross_entropy_with_probs",
    ),
    LossCase(
        name="stablemax_cross_entropy_with_probs",
        slug="stablemax",
        loss=losses.stablemax_cross_entropy_with_probs,
        reference=_stablemax_ce_probs_reference,
        targets=("one_hot", "soft"),
        weights=True,
        default_reduction="none",
    ),
    LossCase(
        name="elr_loss",
        slug="elr",
        loss=functools.partial(losses.elr_loss, beta=0.7, lam=3.0),
        reference=functools.partial(_elr_reference, beta=0.7, lam=3.0),
        targets=("labels", "one_hot", "soft"),
        weights=True,
        default_reduction="none",
        make_state=_partial_probability_rows,
        state_name="target_rows",
        frozen=True,
    ),
    LossCase(
        name="bag_level_loss",
        slug="aggregate_response_losses",
        loss=losses.bag_level_loss,
        reference=_bag_level_reference,
        weights=True,
        default_reduction="mean",
        make_inputs=_bag_inputs,
        bad_shape=_bag_bad_shape,
    ),
    LossCase(
        name="instance_level_loss",
        slug="aggregate_response_losses",
        loss=losses.instance_level_loss,
        reference=_instance_level_reference,
        weights=True,
        default_reduction="mean",
        make_inputs=_bag_inputs,
        bad_shape=_bag_bad_shape,
    ),
    LossCase(
        name="neural_ndcg",
        slug="neural_ndcg",
        loss=functools.partial(losses.neural_ndcg, k=3),
        reference=_neural_ndcg_reference,
        weights=True,
        default_reduction="mean",
        make_inputs=_slate_inputs,
        bad_shape=_slate_bad_shape,
    ),
    LossCase(
        name="starbucks_loss",
        slug="starbucks_matryoshka",
        loss=_starbucks_queries_first,
        reference=_starbucks_reference,
        weights=True,
        default_reduction="mean",
        make_inputs=_view_inputs,
        bad_shape=_view_bad_shape,
        frozen=True,
    ),
    LossCase(
        name="spherical_z_loss",
        slug="z_loss",
        loss=functools.partial(losses.spherical_z_loss, a=1.5, b=0.5),
        reference=_z_loss_reference,
        targets=("labels", "one_hot", "soft"),
        weights=True,
        default_reduction="none",
    ),
    LossCase(
        name="comp_sum_gce",
        slug="comp_sum_losses",
        loss=functools.partial(losses.comp_sum_loss, tau=1.7),
        reference=functools.partial(_comp_sum_reference, tau=1.7),
        targets=("labels", "one_hot", "soft"),
        weights=True,
        default_reduction="none",
    ),
    LossCase(
        name="comp_sum_sum_exponential",
        slug="comp_sum_losses",
        loss=functools.partial(losses.comp_sum_loss, tau=0.0),
        reference=functools.partial(_comp_sum_reference, tau=0.0),
        targets=("labels", "one_hot", "soft"),
        weights=True,
        default_reduction="none",
    ),
    LossCase(
        name="ensloss",
        slug="ensloss",
        loss=lambda logits, labels, **options: losses.ensloss(
            logits, labels, _ENSLOSS_KEY, **options),
        reference=_ensloss_reference,
        weights=True,
        default_reduction="none",
        make_inputs=_ensloss_inputs,
        bad_shape=_ensloss_bad_shape,
        frozen=True,
    ),
    LossCase(
        name="ldr_kl_loss",
        slug="ldr_losses",
        loss=functools.partial(losses.ldr_kl_loss, margin=0.1, lam=10.0),
        reference=functools.partial(_ldr_kl_reference, margin=0.1, lam=10.0),
        targets=("labels", "one_hot", "soft"),
        weights=True,
        default_reduction="none",
    ),
    LossCase(
        name="aldr_kl_loss",
        slug="ldr_losses",
        loss=functools.partial(losses.aldr_kl_loss, margin=0.1, lam0=10.0, alpha=2.0),
        reference=functools.partial(_aldr_kl_reference, margin=0.1, lam0=10.0, alpha=2.0),
        targets=("labels", "one_hot", "soft"),
        weights=True,
        default_reduction="none",
        make_state=_aldr_lambdas,
        state_name="lambdas",
        frozen=True,
    ),
    LossCase(
        name="ps_kd_loss",
        slug="ps_kd",
        loss=functools.partial(losses.ps_kd_loss, alpha=0.6),
        reference=functools.partial(_ps_kd_reference, alpha=0.6),
        targets=("labels", "one_hot", "soft"),
        weights=True,
        default_reduction="none",
        make_state=_previous_predictions,
        state_name="previous",
    ),
    # Add new losses above this line
]

# Rows whose true value overflows float32 at logits of +-1e4: name -> why the exact value is not
# representable there (the check is skipped with this reason). Only for that: every other loss
# uses safe forms (log-space sums, log1p, centred variances, an eps in normalisers) and passes.
EXEMPT_FROM_LARGE_LOGITS: dict[str, str] = {
    "comp_sum_sum_exponential": (
        "tau = 0 is the sum-exponential loss sum_{y' != y} exp(h_y' - h_y): at gaps of 2e4 its "
        "true value exp(2e4) is not representable in float32"
    ),
}

BY_NAME = {case.name: case for case in CASES}
BATCH, CLASSES = 4, 5


def _forms(case: LossCase) -> tuple[str, ...]:
  return case.targets or ("inputs",)


def _params(select=lambda case, form: True):
  return [
      pytest.param(case, form, id=f"{case.name}-{form}")
      for case in CASES
      for form in _forms(case)
      if select(case, form)
  ]


ALL = _params()
CLASSIFICATION = _params(lambda case, form: form in FORMS)
WEIGHTED = _params(lambda case, form: case.weights)
REDUCED = _params(lambda case, form: case.default_reduction is not None)


def _id(case: LossCase) -> str:
  return case.name


# Inputs, made with NumPy: the first one float32, labels int32.


def _inputs(case: LossCase, form: str, seed: int, scale: float = 1.0) -> Inputs:
  rng = np.random.default_rng(seed)
  if form == "inputs":
    return tuple(_float32(a) for a in case.make_inputs(rng, scale))
  logits = (rng.normal(size=(BATCH, CLASSES)) * scale).astype(np.float32)
  labels = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
  if form == "labels":
    return logits, labels
  if form == "one_hot":
    return logits, np.eye(CLASSES, dtype=np.float32)[labels]
  return logits, rng.dirichlet(np.ones(CLASSES), size=BATCH).astype(np.float32)


def _float32(a):
  a = np.asarray(a)
  return a.astype(np.int32) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)


def _state(case: LossCase, inputs: Inputs) -> Any:
  """The state a stateful row's loss gets with `inputs` (None for a loss without state)."""
  if case.make_state is None:
    return None
  return case.make_state(np.random.default_rng(12), inputs)


def _batch_shape(case: LossCase, inputs: Inputs) -> tuple[int, ...]:
  call = lambda first, rest, state: _apply(case, first, rest, state)[0]
  return jax.eval_shape(call, inputs[0], inputs[1:], _state(case, inputs)).shape


def _weights(case: LossCase, inputs: Inputs) -> np.ndarray:
  """Weights in [0.5, 2): some above 1 and some below, for the mask check."""
  shape = _batch_shape(case, inputs)
  w = np.random.default_rng(11).uniform(0.5, 2.0, size=shape).astype(np.float32)
  w.reshape(-1)[:2] = [1.5, 0.75][: w.size]
  return w


def _with_first(array: np.ndarray, value) -> np.ndarray:
  """A copy of `array` whose first example (first entry, or first row for a row `value`) is
  `value`."""
  array = np.array(array)
  array[(0,) * (array.ndim - np.ndim(value))] = value
  return array


# The row's compiled program.


def _apply(case: LossCase, first, rest, state, weights=None, reduction="none"):
  """`(losses, new_state)`; the new state is None for a loss without state."""
  options = {} if weights is None else {"weights": weights}
  if case.default_reduction is not None:
    options["reduction"] = reduction
  elif reduction != "none":
    raise ValueError(f"{case.name} has no reduction")
  if case.make_state is None:
    return case.loss(first, *rest, **options), None
  return case.loss(first, *rest, state, **options)


def _state_outputs(prefix: str, state) -> dict[str, jax.Array]:
  """The leaves of a (new) state as outputs `prefix0`, `prefix1`, ..."""
  return {f"{prefix}{i}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}


def _state_sum(state) -> jax.Array:
  leaves = [leaf for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return sum((jnp.sum(leaf.astype(jnp.float32)) for leaf in leaves), jnp.zeros(()))


@functools.cache
def program(name: str) -> Callable[..., dict[str, jax.Array]]:
  """`program(name)(first, rest, weights, state)`: every jitted output the checks of a row read.

  A stateful row adds its new state (`state0`, `state1`, ... one per leaf), the gradient of the
  summed new state (`state_grad`, which must be 0) and the new state from bfloat16 logits
  (`bf16_state0`, ...) and from the same logits in float32 (`bf16_as_f32_state0`, ...).
  """
  case = BY_NAME[name]
  reductions = ("none", "mean", "sum") if case.default_reduction is not None else ("none",)

  def evaluate(first, rest, weights, state):
    call = lambda z, rest, weights=None, reduction="none": _apply(
        case, z, rest, state, weights, reduction)[0]
    summed = lambda z: jnp.sum(call(z, rest).astype(jnp.float32))
    low = first.astype(jnp.bfloat16)
    out = {
        "none": call(first, rest),
        "grad": jax.grad(summed)(first),
        "bf16": call(low, rest),
        "bf16_grad": jax.grad(summed)(low),
        "bf16_as_f32": call(low.astype(jnp.float32), rest),
    }
    if case.make_state is not None:
      new_state = lambda z: _apply(case, z, rest, state)[1]
      out.update(_state_outputs("state", new_state(first)))
      out["state_grad"] = jax.grad(lambda z: _state_sum(new_state(z)))(first)
      out.update(_state_outputs("bf16_state", new_state(low)))
      out.update(_state_outputs("bf16_as_f32_state", new_state(low.astype(jnp.float32))))
    for reduction in reductions[1:]:
      out[reduction] = call(first, rest, reduction=reduction)
    if case.weights:
      for reduction in reductions:
        out[f"{reduction}_w"] = call(first, rest, weights, reduction)
      out["mask"] = call(first, rest, weights > 1, reductions[-1])  # a boolean mask
      mean = "mean" if case.default_reduction is not None else "none"  # "none": summed
      out["grad_w"] = jax.grad(lambda z: jnp.sum(call(z, rest, weights, mean)))(first)
    return out

  return fast_jit(evaluate)


def _run(case: LossCase, inputs: Inputs, weights: np.ndarray | None = None) -> dict[str, Any]:
  """The row's program on concrete inputs; outputs as NumPy arrays (bfloat16 kept)."""
  if weights is None:
    weights = np.ones(_batch_shape(case, inputs), np.float32)
  out = program(case.name)(inputs[0], tuple(inputs[1:]), weights, _state(case, inputs))
  return {key: np.asarray(value) for key, value in out.items()}


def _eager(case: LossCase, inputs: Inputs, **options):
  """`case.loss` called directly on `inputs` (and the row's state): losses or (losses, state)."""
  state = () if case.make_state is None else (_state(case, inputs),)
  return case.loss(*inputs, *state, **options)


def _reference_and_state(case: LossCase, inputs: Inputs, frozen_at=None):
  """The reference's per-example losses (float64) and new state (None without state)."""
  state = () if case.make_state is None else (_state(case, inputs),)
  options = {"frozen_at": frozen_at} if case.frozen else {}
  result = case.reference(*inputs, *state, **options)
  losses, new_state = result if state else (result, None)
  return np.asarray(losses, np.float64), new_state


def _reference(case: LossCase, inputs: Inputs) -> np.ndarray:
  return _reference_and_state(case, inputs)[0]


def _assert_state_matches_reference(case: LossCase, out, inputs: Inputs, prefix="state"):
  """The new state of `out` equals the reference's, leaf by leaf, in the given state's dtypes."""
  if case.make_state is None:
    return
  given = jax.tree.leaves(_state(case, inputs))
  expected = jax.tree.leaves(_reference_and_state(case, inputs)[1])
  assert len(expected) == len(given), "the reference's new state has another structure"
  for i, (leaf, want) in enumerate(zip(given, expected)):
    got = out[f"{prefix}{i}"]
    assert got.dtype == np.asarray(leaf).dtype, f"{prefix}{i}: dtype {got.dtype}"
    np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=1e-5, atol=1e-6,
                               err_msg=f"{prefix}{i}")


# Values and gradients.


@pytest.mark.parametrize("case, form", ALL)
def test_value_matches_reference(case, form):
  for scale in (1.0, 10.0):
    inputs = _inputs(case, form, seed=0, scale=scale)
    expected = _reference(case, inputs)
    eager = _eager(case, inputs)  # with the default options
    if case.make_state is not None:
      eager, eager_state = eager
      _assert_state_matches_reference(case, _state_outputs("state", eager_state), inputs)
    assert eager.dtype == jnp.float32
    reduce = {"mean": np.mean, "sum": np.sum}.get(case.default_reduction, lambda v: v)
    np.testing.assert_allclose(eager, reduce(expected), rtol=1e-5, atol=1e-6)
    out = _run(case, inputs)
    np.testing.assert_allclose(out["none"], expected, rtol=1e-5, atol=1e-6)
    _assert_state_matches_reference(case, out, inputs)


@functools.cache
def _float64_gradient(name: str):
  losses = lambda first, rest, state: _apply(BY_NAME[name], first, rest, state)[0]
  return fast_jit(jax.grad(lambda first, rest, state: jnp.sum(losses(first, rest, state))))


@pytest.mark.parametrize("case, form", ALL)
def test_gradient_matches_central_differences(case, form):
  inputs = _inputs(case, form, seed=1, scale=2.0)
  first, rest = np.asarray(inputs[0], np.float64), inputs[1:]
  with jax.enable_x64(True):
    as_x64 = lambda a: jnp.asarray(a, jnp.float64 if a.dtype == np.float32 else a.dtype)
    state = jax.tree.map(lambda a: as_x64(np.asarray(a)), _state(case, inputs))
    grad = np.asarray(
        _float64_gradient(case.name)(as_x64(first), tuple(map(as_x64, rest)), state))
  step = 1e-6
  numeric = np.zeros_like(first)
  # Quantities the loss stops the gradient of stay at their values for `first` (`frozen`).
  summed = lambda z: _reference_and_state(case, (z,) + rest, frozen_at=first)[0].sum()
  for index in np.ndindex(first.shape):
    plus, minus = first.copy(), first.copy()
    plus[index] += step
    minus[index] -= step
    numeric[index] = (summed(plus) - summed(minus)) / (2 * step)
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case, form", ALL)
def test_large_logits_give_finite_values_and_gradients(case, form):
  if case.name in EXEMPT_FROM_LARGE_LOGITS:
    pytest.skip(EXEMPT_FROM_LARGE_LOGITS[case.name])
  inputs = _inputs(case, form, seed=2)
  signs = np.where(np.random.default_rng(3).random(inputs[0].shape) < 0.5, -1.0, 1.0)
  extreme = ((signs * 1e4).astype(np.float32),) + inputs[1:]
  out = _run(case, extreme, _weights(case, extreme) if case.weights else None)
  for key, value in out.items():
    assert np.all(np.isfinite(np.asarray(value, np.float32))), f"{key} is not finite"
  np.testing.assert_allclose(out["none"], _reference(case, extreme), rtol=1e-5, atol=1e-6)
  _assert_state_matches_reference(case, out, extreme)


@pytest.mark.parametrize("case, form", ALL)
def test_bfloat16_logits_are_finite_and_close_to_float32(case, form):
  inputs = _inputs(case, form, seed=4, scale=3.0)
  out = _run(case, inputs)
  assert out["bf16"].dtype == jnp.bfloat16 and out["bf16_grad"].dtype == jnp.bfloat16
  values = np.asarray(out["bf16"], np.float32)
  assert np.all(np.isfinite(values)) and np.all(np.isfinite(np.asarray(out["bf16_grad"], float)))
  # Computed in float32 and rounded once: within bfloat16's resolution of the float32 loss.
  np.testing.assert_allclose(values, out["bf16_as_f32"], rtol=1e-2, atol=1e-2)
  if case.make_state is not None:  # the new state keeps the state's dtype (>= float32)
    for i, leaf in enumerate(jax.tree.leaves(_state(case, inputs))):
      low, high = out[f"bf16_state{i}"], out[f"bf16_as_f32_state{i}"]
      assert low.dtype == np.asarray(leaf).dtype, f"bf16_state{i}: dtype {low.dtype}"
      assert np.all(np.isfinite(low)), f"bf16_state{i} is not finite"
      np.testing.assert_allclose(low, high, rtol=1e-2, atol=1e-2, err_msg=f"bf16_state{i}")


@pytest.mark.parametrize("case, form", [p for p in ALL if p.values[0].make_state is not None])
def test_new_state_carries_no_gradient(case, form):
  """The gradient flows only through the losses: the buffers are stored detached."""
  out = _run(case, _inputs(case, form, seed=13, scale=2.0))
  assert np.all(out["state_grad"] == 0), out["state_grad"]


# Invalid inputs.


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_mismatched_shapes_raise(case):
  form = _forms(case)[0]
  inputs = _inputs(case, form, seed=5)
  if form == "inputs":
    bad, argument = case.bad_shape(inputs)
  elif form == "labels":
    bad, argument = (inputs[0], inputs[1][:-1]), "labels"
  else:
    bad, argument = (inputs[0], inputs[1][:, :-1]), "targets"
  state = () if case.make_state is None else (_state(case, inputs),)
  with pytest.raises(ValueError, match=argument):
    case.loss(*bad, *state)
  if case.weights:
    with pytest.raises(ValueError, match="weights"):
      _eager(case, inputs, weights=np.ones(_batch_shape(case, inputs) + (2,), np.float32))
  if state:  # every leaf of the state one example short
    with pytest.raises(ValueError, match=case.state_name):
      case.loss(*inputs, jax.tree.map(lambda a: np.asarray(a)[:-1], state[0]))


def _invalid_first_example(form: str, inputs: Inputs) -> list[tuple[Inputs, str]]:
  """Inputs whose first example's labels or targets are invalid, with the error to expect."""
  logits, target = inputs
  if form == "labels":
    return [((logits, _with_first(target, value)), r"labels must .*\[") for value in (CLASSES, -1)]
  negative = np.array(target)
  negative[0] = 0.0
  negative[0, :2] = [1.5, -0.5]  # still sums to 1: only the sign is wrong
  cases = [((logits, negative), "targets must")]
  if form == "soft":
    cases.append(((logits, _with_first(target, target[0] * 1.5)), "targets must"))
  return cases


@pytest.mark.parametrize("case, form", CLASSIFICATION)
def test_concrete_invalid_labels_or_targets_raise(case, form):
  inputs = _inputs(case, form, seed=6)
  for bad, match in _invalid_first_example(form, inputs):
    with pytest.raises(ValueError, match=match):
      _eager(case, bad)
  if form == "labels":
    with pytest.raises(ValueError, match="labels must be integer"):
      _eager(case, (inputs[0], inputs[1].astype(np.float32)))


@pytest.mark.parametrize("case, form", CLASSIFICATION)
def test_traced_invalid_labels_or_targets_give_nan_not_a_clamped_loss(case, form):
  good = _inputs(case, form, seed=6)
  expected = _run(case, good)
  for bad, _ in _invalid_first_example(form, good):
    out = _run(case, bad)
    assert np.isnan(out["none"][0]) and np.all(np.isnan(out["grad"][0]))
    np.testing.assert_allclose(out["none"][1:], expected["none"][1:], rtol=1e-6)
    assert np.all(np.isfinite(out["grad"][1:]))
    if case.default_reduction is not None:
      assert np.isnan(out["mean"]) and np.isnan(out["sum"])
    if case.weights and case.default_reduction is not None:  # a zero weight does not hide it
      assert np.isnan(_run(case, bad, _with_first(_weights(case, bad), 0.0))["mean_w"])


# Target forms, weights and reductions.


@pytest.mark.parametrize("case", [c for c in CASES if "labels" in c.targets], ids=_id)
def test_integer_labels_equal_their_one_hot_targets(case):
  logits, labels = _inputs(case, "labels", seed=7)
  one_hot = np.eye(CLASSES, dtype=np.float32)[labels]
  twin = BY_NAME[case.one_hot_row] if case.one_hot_row else case
  if "one_hot" not in twin.targets:
    pytest.skip(f"{case.name} has no one-hot form (set one_hot_row)")
  weights = _weights(case, (logits, labels)) if case.weights and twin.weights else None
  from_labels = _run(case, (logits, labels), weights)
  from_one_hot = _run(twin, (logits, one_hot), weights)
  for key in from_labels.keys() & from_one_hot.keys():
    np.testing.assert_allclose(np.asarray(from_labels[key], np.float32),
                               np.asarray(from_one_hot[key], np.float32),
                               rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("case, form", WEIGHTED)
def test_weights(case, form):
  inputs = _inputs(case, form, seed=8)
  w = _weights(case, inputs)
  per_example = _reference(case, inputs)
  reduced = case.default_reduction is not None
  out = _run(case, inputs, w)
  # Against the reference: none = w * l, sum = sum(w l), mean = sum(w l) / sum(w).
  np.testing.assert_allclose(out["none_w"], w * per_example, rtol=1e-5, atol=1e-6)
  if reduced:
    np.testing.assert_allclose(out["sum_w"], np.sum(w * per_example), rtol=1e-5)
    np.testing.assert_allclose(out["mean_w"], np.sum(w * per_example) / np.sum(w), rtol=1e-5)
  # Scaling every weight by 2.5 scales "none" and "sum" by 2.5 and leaves "mean" unchanged.
  scaled = _run(case, inputs, 2.5 * w)
  np.testing.assert_allclose(scaled["none_w"], 2.5 * out["none_w"], rtol=1e-6)
  if reduced:
    np.testing.assert_allclose(scaled["sum_w"], 2.5 * out["sum_w"], rtol=1e-6)
    np.testing.assert_allclose(scaled["mean_w"], out["mean_w"], rtol=1e-6)
  # A boolean mask equals weights of 0 and 1.
  reduction = "sum" if reduced else "none"
  np.testing.assert_allclose(out["mask"], _run(case, inputs, (w > 1).astype(np.float32))[
      f"{reduction}_w"], rtol=1e-6)

  ones = _run(case, inputs)  # weights of all ones equal no weights
  for reduction in ("none", "mean", "sum") if reduced else ("none",):
    np.testing.assert_allclose(ones[f"{reduction}_w"], ones[reduction], rtol=1e-6, atol=1e-7)

  # A zero weight removes the example: no loss, no gradient, not in the mean.
  w0 = _with_first(w, 0.0)
  removed = _run(case, inputs, w0)
  first_example = (0,) * w.ndim
  assert removed["none_w"][first_example] == 0 and np.all(removed["grad_w"][first_example] == 0)
  if reduced:
    expected = np.sum(w0 * per_example) / np.sum(w0)
    np.testing.assert_allclose(removed["mean_w"], expected, rtol=1e-5)
    empty = _run(case, inputs, np.zeros_like(w))  # every weight 0: mean 0, gradient 0
    assert empty["mean_w"] == 0 and np.all(empty["grad_w"] == 0)

  # Invalid traced weights make that example NaN (concrete ones raise: next test).
  for value in (-1.0, np.nan, np.inf):
    bad = _run(case, inputs, _with_first(w, value))
    assert np.isnan(bad["none_w"][first_example]), value
    assert np.sum(~np.isfinite(bad["none_w"])) == 1, value
    if reduced:
      assert np.isnan(bad["mean_w"]) and np.isnan(bad["sum_w"]), value


@pytest.mark.parametrize("case", [c for c in CASES if c.weights], ids=_id)
def test_concrete_invalid_weights_raise(case):
  inputs = _inputs(case, _forms(case)[0], seed=9)
  w = _weights(case, inputs)
  for bad in (_with_first(w, -1.0), _with_first(w, np.nan), _with_first(w, np.inf)):
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
      _eager(case, inputs, weights=bad)
  with pytest.raises(ValueError, match="weights must be real numbers"):
    _eager(case, inputs, weights=w.astype(np.complex64))


@pytest.mark.parametrize("case, form", REDUCED)
def test_reductions_are_consistent(case, form):
  inputs = _inputs(case, form, seed=10)
  out = _run(case, inputs, _weights(case, inputs) if case.weights else None)
  batch_shape = _batch_shape(case, inputs)
  assert out["none"].shape == batch_shape and out["mean"].shape == out["sum"].shape == ()
  np.testing.assert_allclose(out["sum"], out["mean"] * np.prod(batch_shape), rtol=1e-6)
  if case.weights:
    w = _weights(case, inputs)
    np.testing.assert_allclose(out["sum_w"], out["mean_w"] * np.sum(w), rtol=1e-6)
  with pytest.raises(ValueError, match="reduction"):
    _eager(case, inputs, reduction="average")


def test_every_registered_loss_and_regularizer_has_a_row():
  covered = {case.slug for case in CASES}
  registered = registry.all_methods("loss") + registry.all_methods("regularizer")
  missing = sorted(m.slug for m in registered if m.slug not in covered)
  assert not missing, f"add a LossCase for: {missing}"
  unknown = sorted(covered - {m.slug for m in registered})
  assert not unknown, f"rows whose slug is not registered: {unknown}"
  for case in CASES:
    assert set(case.targets) <= set(FORMS), f"{case.name}: unknown target form"
    assert case.targets or (case.make_inputs and case.bad_shape), f"{case.name}: no inputs"
    assert case.default_reduction in (None, "none", "mean", "sum"), case.name
    assert case.one_hot_row is None or case.one_hot_row in BY_NAME, case.name
    twin = BY_NAME.get(case.one_hot_row)
    assert twin is None or (twin.make_state is None) == (case.make_state is None), case.name
