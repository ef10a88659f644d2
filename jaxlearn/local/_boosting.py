r"""What the gradient-boosted networks (GBNN, GB-DNN) share: the multi-class cross-entropy's
pseudo-residuals and Newton step, as in the official code of both (`multi_class_loss` in
`gbnn/GBNN.py` and in GB-CNN's `Base/_losses.py`, identical)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["boosting_residuals", "boosting_newton_step", "one_hot_targets"]  # private module


def _f32(a):
  a = jnp.asarray(a)
  return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def boosting_residuals(targets: jax.Array, raw: jax.Array) -> jax.Array:
  r"""The pseudo-residuals :math:`r = Y - \mathrm{softmax}(F)` of the softmax cross-entropy.

  Args:
    targets: one-hot targets `(n, K)`.
    raw: the current raw predictions :math:`F`, `(n, K)`.

  Returns:
    :math:`r`, `(n, K)`, in float32 or wider.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import boosting_residuals
    >>> boosting_residuals(jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)))
    Array([[ 0.5, -0.5]], dtype=float32)
  """
  return _f32(targets) - jax.nn.softmax(_f32(raw), axis=-1)


def boosting_newton_step(targets: jax.Array, residuals: jax.Array, update: jax.Array) -> jax.Array:
  r"""The Newton step :math:`\rho` of the cross-entropy along a new stage's output :math:`f`:

  .. math::

     p = Y - r, \qquad
     \rho = -\frac{\sum_{n,k} f_{nk}(Y_{nk} - p_{nk})}{\sum_{n,k} f_{nk}^2\,p_{nk}(p_{nk} - 1)} ,

  one scalar for all classes, as in the official code. 0 when the denominator is 0 (the stage
  predicts 0 everywhere), where the official code would divide 0 by 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import boosting_newton_step
    >>> y = jnp.array([[1.0, 0.0]])
    >>> r = jnp.array([[0.5, -0.5]])
    >>> boosting_newton_step(y, r, r)
    Array(4., dtype=float32)
  """
  y, r, f = _f32(targets), _f32(residuals), _f32(update)
  p = y - r
  numerator = -jnp.sum(f * (y - p))
  denominator = jnp.sum(f * f * p * (p - 1))
  safe = jnp.where(denominator == 0, 1.0, denominator)
  return jnp.where(denominator == 0, 0.0, numerator / safe)


def one_hot_targets(labels, num_classes: int) -> jax.Array:
  """Integer labels in [0, num_classes) as float32 one-hot rows; a ValueError naming `labels`
  for labels out of range or not integers (checked eagerly: the boosting procedures run outside
  `jit`).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got dtype {labels.dtype} and shape "
                     f"{labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must be in [0, {num_classes}), got values in "
                     f"[{labels.min()}, {labels.max()}]")
  return jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=jnp.float32)
