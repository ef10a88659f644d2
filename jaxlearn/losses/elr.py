r"""Early-learning regularization (ELR): a running target per example keeps noisy labels out.

Early in training a network fits the clean examples and predicts the true class of most noisy
ones; later it memorizes the noisy labels. ELR keeps, for every training example i, a running
average t_i of the model's (detached) predictions and adds a term that pulls the prediction
towards it, so the early predictions, not the noisy labels, are what the model keeps fitting.
With p = clip(softmax(z), 1e-4, 1 - 1e-4) (as in the official code), per example

.. math::

   t_i &\leftarrow \beta\, t_i + (1 - \beta)\,
        \frac{\mathrm{sg}(p_i)}{\sum_c \mathrm{sg}(p_{ic})}, \\
   \ell_i &= -\sum_c y_{ic} \log \operatorname{softmax}(z_i)_c
        + \lambda \log\bigl(1 - \langle t_i, p_i \rangle\bigr),

with sg the stop-gradient, the targets updated *before* they are used, and the buffer t
initialised to zeros. The official loss is the batch mean of ℓ (`reduction="mean"`). The clip
also zeroes the regularizer's gradient through a clipped probability, as `torch.clamp` does.

Evaluation: 1 - <t', p> is formed as beta (1 - sum_c t_c) + sum_c t'_c (1 - p_c) (the same number:
the row added to beta t sums to 1), with 1 - p_c of the largest class summed from the other
classes' probabilities, so it keeps its relative precision when the target and a confident
prediction concentrate on one class (1 - <t', p> near the clip value 1e-4) instead of cancelling.

References:
  Sheng Liu, Jonathan Niles-Weed, Narges Razavian and Carlos Fernandez-Granda,
  "Early-Learning Regularization Prevents Memorization of Noisy Labels"
  (https://arxiv.org/abs/2007.00151), NeurIPS 2020. Official code:
  https://github.com/shengliu66/ELR (`ELR/model/loss.py`, `elr_loss`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxlearn import registry
from jaxlearn._checks import check_range
from jaxlearn.losses._common import check_reduction, check_weights, float_array, nan_unless
from jaxlearn.losses._common import labels_or_targets, probability_rows, reduce_loss
from jaxlearn.losses.buffers import _check_state, _state_dtype

__all__ = ["elr_loss"]

CLIP = 1e-4  # the official clamp of the probabilities to [1e-4, 1 - 1e-4]


def elr_loss(
    logits: jax.Array, labels: jax.Array, target_rows: jax.Array, *, beta: Any = 0.7,
    lam: Any = 3.0, weights: jax.Array | None = None, reduction: str = "none",
) -> tuple[jax.Array, jax.Array]:
  r"""ELR's loss for a batch and the batch's updated running targets.

  Per example, with p = clip(softmax(z), 1e-4, 1 - 1e-4):

  .. math::

     t' = \beta t + (1 - \beta)\, \mathrm{sg}(p) / \textstyle\sum_c \mathrm{sg}(p_c), \qquad
     \ell = \mathrm{CE}(z, y) + \lambda \log(1 - \langle t', p \rangle).

  Keep the buffer of all training examples' rows (initially zeros, shape (n, num_classes)) and
  pass this batch's rows; write the returned rows back (`jaxlearn.losses.buffered_classifier`
  does both inside `jaxlearn.train.fit`). The new rows carry no gradient.

  Args:
    logits: floating-point array of shape (..., num_classes).
    labels: integer class indices of shape (...), or probability targets (one-hot, smoothed or
      soft) of the shape of `logits`, for the cross-entropy term.
    target_rows: the batch's running targets t, shape of `logits`, entries >= 0 (zeros for an
      example not seen yet); float32 or wider is recommended (the update runs in at least
      float32 and the result is returned in this dtype).
    beta: the running-average momentum, in [0, 1) (official: 0.7 for CIFAR-10, 0.9 for
      CIFAR-100). Traceable.
    lam: the regularization weight lambda, >= 0 (official: 3 for CIFAR-10, 7 for CIFAR-100).
      Traceable.
    weights: optional per-example weights or boolean mask of shape (...), finite and >= 0. They
      weight the losses only: every example's row is updated.
    reduction: "none" (default; per-example losses, times the weights), "sum" or "mean" (the
      official batch mean; weighted: sum(w * loss) / sum(w)).

  Returns:
    `(losses, new_target_rows)`: losses of shape (...) for "none", else a scalar, in the dtype of
    `logits` (computed in at least float32); the new rows in the dtype of `target_rows`.

  Raises:
    ValueError: for non-float logits, mismatched shapes, concrete labels out of range, concrete
      targets that are not probability rows, target_rows of another shape or with negative or
      non-finite concrete entries, beta outside [0, 1), lam < 0, invalid concrete weights, or
      an unknown reduction. Under `jit` an invalid label or target row makes that example's
      loss and gradient NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import elr_loss
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> rows = jnp.zeros((2, 3))  # nothing seen yet
    >>> losses, rows = elr_loss(logits, jnp.array([0, 2]), rows, beta=0.7, lam=3.0)
    >>> losses.shape, [round(float(total), 4) for total in rows.sum(-1)]  # (1 - beta) each
    ((2,), [0.3, 0.3])
  """
  logits = float_array(logits, "logits")
  labels, is_labels, tolerance = labels_or_targets(labels, logits)
  target_rows = _check_state(target_rows, logits.shape, "target_rows", non_negative=True)
  check_range("beta", beta, 0.0, 1.0, high_inclusive=False)
  check_range("lam", lam, 0.0, None)
  weights = check_weights(weights, logits.shape[:-1])
  return _elr_kernel(logits, labels, target_rows, beta, lam, weights, is_labels, tolerance,
                     check_reduction(reduction))


def _one_minus_softmax(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(softmax(z), 1 - softmax(z)) along the last axis, the latter accurate for the top class."""
  z_max = jnp.max(z, axis=-1, keepdims=True)
  is_max = jnp.arange(z.shape[-1]) == jnp.argmax(z, axis=-1)[..., None]
  e = jnp.exp(z - jax.lax.stop_gradient(z_max))
  total = jnp.sum(e, axis=-1, keepdims=True)
  p = e / total
  # For the top class: the sum of the other classes (no cancellation); p <= 1/2 elsewhere.
  others = jnp.sum(jnp.where(is_max, 0, e), axis=-1, keepdims=True)
  return p, jnp.where(is_max, others / total, 1 - p)


@functools.partial(jax.jit, static_argnames=("is_labels", "tolerance", "reduction"))
def _elr_kernel(logits, labels, target_rows, beta, lam, weights, is_labels, tolerance, reduction):
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  state_dtype = jnp.promote_types(_state_dtype(target_rows), compute)
  z = logits.astype(compute)
  y, valid = probability_rows(labels, is_labels, tolerance, z.shape[-1], compute)
  cross_entropy = -jnp.sum(y * jax.nn.log_softmax(z), axis=-1)

  p, one_minus_p = _one_minus_softmax(z)
  p = jnp.clip(p, CLIP, 1 - CLIP)
  one_minus_p = jnp.clip(one_minus_p, CLIP, 1 - CLIP)  # = 1 - clip(p), the clip is symmetric
  detached = jax.lax.stop_gradient(p).astype(state_dtype)
  beta = jnp.asarray(beta, state_dtype)
  t = beta * target_rows.astype(state_dtype) + (1 - beta) * detached / jnp.sum(
      detached, axis=-1, keepdims=True)
  t_used = jax.lax.stop_gradient(t).astype(compute)
  # 1 - <t, p> = (1 - sum t) + sum t (1 - p), and 1 - sum t = beta (1 - sum t_old) exactly, as
  # the added row sums to 1: no cancellation when t and p both concentrate on one class.
  unfilled = beta * (1 - jnp.sum(target_rows.astype(state_dtype), axis=-1))
  gap = unfilled.astype(compute) + jnp.sum(t_used * one_minus_p, axis=-1)
  losses = cross_entropy + jnp.asarray(lam, compute) * jnp.log(gap)
  losses = losses * nan_unless(valid, compute)
  reduced = reduce_loss(losses, weights, reduction).astype(logits.dtype)
  return reduced, t.astype(target_rows.dtype)


RECORD = registry.record(
    slug="elr",
    kind="loss",
    title="Early-Learning Regularization Prevents Memorization of Noisy Labels",
    reference="arXiv:2007.00151",
    experiment="elr_noisy_digits",
    also=("jaxlearn.losses.buffered_classifier",),
    notes=(
        "ELR, not ELR+ (two networks, mixup and weight averaging are out of scope). Follows the "
        "official elr_loss: probabilities clamped to [1e-4, 1 - 1e-4] (which zeroes the "
        "regularizer's gradient there), targets updated before use from the detached clamped "
        "probabilities, buffer initialised to zeros. The buffer is the caller's: the pure "
        "function takes and returns the batch's rows; buffered_classifier keeps it in fit's "
        "model state (use sampling='without_replacement' so no row is written twice per step). "
        "Default reduction 'none' (per example, as every jaxlearn loss); the official value is "
        "the batch mean. Also accepts probability targets for the cross-entropy term (the "
        "official code takes integer labels). 1 - <t', p> is evaluated as beta (1 - sum t) "
        "+ sum t' (1 - p) with 1 - p of the top class summed from the others (the same value "
        "in exact arithmetic, without the float32 cancellation of the official form). Weights "
        "weight the losses only; every row is updated."
    ),
)
