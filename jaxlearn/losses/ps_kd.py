r"""Progressive self-knowledge distillation (PS-KD): the last predictions soften the targets.

The model is its own teacher: the target of example i at epoch t mixes its label with the
model's prediction for it from the previous epoch, with a weight that grows linearly over
training,

.. math::

   \alpha_t = \alpha_T \, \frac{t + 1}{T}, \qquad
   \hat y_i = (1 - \alpha_t)\, y_i + \alpha_t\, p_i^{\text{prev}}, \qquad
   \ell_i = -\sum_c \hat y_{ic} \log \operatorname{softmax}(z_i)_c,

where t is the epoch (from 0), T the number of epochs, alpha_T = 0.8 (official default), and
p_i^prev the softmax the model gave example i when it last saw it (detached). At epoch 0 the
official code sets the buffer to the one-hot labels, so the first epoch is plain cross-entropy;
after every step the batch's rows are overwritten with the current (detached) softmax. The
official loss is the batch mean of ℓ.

References:
  Kyungyul Kim, ByeongMoon Ji, Doyoung Yoon and Sangheum Hwang, "Self-Knowledge Distillation
  with Progressive Refinement of Targets" (https://arxiv.org/abs/2006.12000), ICCV 2021.
  Official code: https://github.com/lgcnsai/PS-KD-Pytorch (`main.py`: the schedule and the
  prediction buffer; `loss/pskd_loss.py`: `Custom_CrossEntropy_PSKD`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxlearn import registry
from jaxlearn._checks import check_positive_int, check_range
from jaxlearn.losses._common import check_reduction, check_weights, float_array, nan_unless
from jaxlearn.losses._common import labels_or_targets, probability_rows, reduce_loss
from jaxlearn.losses.buffers import _check_state, _state_dtype

__all__ = ["ps_kd_loss", "ps_kd_alpha"]


def ps_kd_alpha(epoch: Any, *, num_epochs: int, alpha_T: Any = 0.8) -> jax.Array:
  r"""The official schedule alpha_t = max(0, alpha_T (epoch + 1) / num_epochs).

  Args:
    epoch: the epoch, counted from 0 (an int or a traced int32 scalar, as `jaxlearn.train.fit`
      passes it).
    num_epochs: the number of training epochs T, >= 1 (static).
    alpha_T: the final weight of the previous predictions, in [0, 1] (official: 0.8).
      Traceable.

  Returns:
    A float32 scalar; alpha_T at the last epoch (epoch = num_epochs - 1).

  Example:
    >>> from jaxlearn.losses import ps_kd_alpha
    >>> [round(float(ps_kd_alpha(t, num_epochs=4)), 2) for t in range(4)]
    [0.2, 0.4, 0.6, 0.8]
  """
  check_positive_int("num_epochs", num_epochs)
  check_range("alpha_T", alpha_T, 0.0, 1.0)
  return jnp.maximum(0.0, jnp.asarray(alpha_T, jnp.float32)
                     * (jnp.asarray(epoch, jnp.float32) + 1) / num_epochs)


def ps_kd_loss(
    logits: jax.Array, labels: jax.Array, previous: jax.Array, *, alpha: Any,
    weights: jax.Array | None = None, reduction: str = "none",
) -> tuple[jax.Array, jax.Array]:
  r"""PS-KD's loss for a batch, and the batch's new previous-prediction rows.

  .. math::

     \hat y = (1 - \alpha)\, y + \alpha\, p^{\text{prev}}, \qquad
     \ell = -\sum_c \hat y_c \log \operatorname{softmax}(z)_c, \qquad
     p^{\text{prev}} \leftarrow \mathrm{sg}(\operatorname{softmax}(z)).

  Keep a buffer of every training example's last prediction, initialised to the one-hot
  training labels (the official code's epoch-0 assignment), pass the batch's rows and write
  the returned ones back (`jaxlearn.losses.buffered_classifier`, with `alpha` from
  `ps_kd_alpha` of fit's epoch). The new rows carry no gradient.

  Args:
    logits: floating-point array of shape (..., num_classes).
    labels: integer class indices of shape (...), or probability targets of the shape of
      `logits`.
    previous: the batch's previous predictions p_prev, shape of `logits`, finite and >= 0
      (probability rows); float32 or wider recommended (returned in this dtype).
    alpha: the weight alpha_t of the previous predictions, in [0, 1]. Traceable.
    weights: optional per-example weights or boolean mask of shape (...), finite and >= 0. They
      weight the losses only: every row is updated.
    reduction: "none" (default), "sum" or "mean" (the official batch mean).

  Returns:
    `(losses, new_previous)`: losses of shape (...) for "none", else a scalar, in the dtype of
    `logits` (computed in at least float32); the new rows (the detached softmax) in the dtype
    of `previous`.

  Raises:
    ValueError: for non-float logits, mismatched shapes, concrete labels out of range, concrete
      targets that are not probability rows, `previous` of another shape or with negative or
      non-finite concrete entries, alpha outside [0, 1], invalid concrete weights or an unknown
      reduction. Under `jit` an invalid label or target row makes that example's loss and
      gradient NaN.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.losses import ps_kd_loss
    >>> logits = jnp.array([[2.0, 0.0, -1.0]])
    >>> previous = jnp.array([[0.6, 0.3, 0.1]])
    >>> losses, previous = ps_kd_loss(logits, jnp.array([0]), previous, alpha=0.5)
    >>> bool(jnp.allclose(previous, jax.nn.softmax(logits)))
    True
  """
  logits = float_array(logits, "logits")
  labels, is_labels, tolerance = labels_or_targets(labels, logits)
  previous = _check_state(previous, logits.shape, "previous", non_negative=True)
  check_range("alpha", alpha, 0.0, 1.0)
  weights = check_weights(weights, logits.shape[:-1])
  return _ps_kd_kernel(logits, labels, previous, alpha, weights, is_labels, tolerance,
                       check_reduction(reduction))


@functools.partial(jax.jit, static_argnames=("is_labels", "tolerance", "reduction"))
def _ps_kd_kernel(logits, labels, previous, alpha, weights, is_labels, tolerance, reduction):
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  z = logits.astype(compute)
  y, valid = probability_rows(labels, is_labels, tolerance, z.shape[-1], compute)
  alpha = jnp.asarray(alpha, compute)
  soft_targets = (1 - alpha) * y + alpha * previous.astype(compute)
  log_probs = jax.nn.log_softmax(z)
  losses = -jnp.sum(soft_targets * log_probs, axis=-1) * nan_unless(valid, compute)
  reduced = reduce_loss(losses, weights, reduction).astype(logits.dtype)
  new = jax.nn.softmax(jax.lax.stop_gradient(z).astype(_state_dtype(previous)), axis=-1)
  return reduced, new.astype(previous.dtype)


RECORD = registry.record(
    slug="ps_kd",
    kind="loss",
    title="Self-Knowledge Distillation with Progressive Refinement of Targets",
    reference="arXiv:2006.12000",
    experiment="ps_kd_calibration",
    also=("jaxlearn.losses.buffered_classifier", "jaxlearn.diagnostics.expected_calibration_error"),
    notes=(
        "Follows the official main.py / pskd_loss.py: alpha_t = alpha_T (epoch + 1) / T, soft "
        "target (1 - alpha_t) onehot + alpha_t p_prev, cross-entropy with it, buffer rows "
        "overwritten with the detached softmax after the step. The official code writes the "
        "one-hot labels into the buffer at epoch 0; here the buffer is initialised to them "
        "(the same targets). The buffer is the caller's (buffered_classifier keeps it in fit's "
        "model state). Default reduction 'none'; the official value is the batch mean. ECE "
        "(expected_calibration_error) uses 15 bins by default; the official metric uses 10 "
        "(bin_size 0.1) and reports percent."
    ),
)
