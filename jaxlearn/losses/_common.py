r"""What jaxlearn's losses share: argument checks and one reduction.

Loss modules import these from here, not from each other. A classification loss takes
`(logits, labels_or_targets, *, weights=None, reduction=...)` and:

- checks its arguments outside `jit` with a ValueError naming the argument (`float_array`,
  `check_labels`, `check_targets`, `check_weights`, `check_reduction`; `labels_or_targets` for a
  loss that takes either integer labels or probability rows, with `probability_rows` turning
  both into rows inside the kernel);
- inside `jit`, where values are tracers and cannot be inspected, makes the loss of an example
  with an invalid label, target row or weight NaN (`label_validity`, `target_validity`,
  `weight_validity` with `nan_unless`), never a clamped or wrapped value;
- reduces with `reduce_loss`, inside its jitted kernel, in at least float32.

Weights are per example (the batch shape, `logits.shape[:-1]`): non-negative, finite reals, or
booleans as a mask. The weighted mean is

    mean = sum_i w_i l_i / sum_i w_i,

the normalization of PyTorch's class-weighted `cross_entropy(reduction="mean")` and of optax's
`where=` masks: a mask of zeros and ones averages over the kept examples, and scaling every
weight by c > 0 leaves the mean unchanged (`sum` and `none` scale by c). If every weight is 0 the
mean is 0 (an empty batch contributes nothing, with a zero gradient), not 0 / 0. A zero weight removes a valid example; it
does not hide an invalid one (an out-of-range label stays an error, or NaN under `jit`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn._checks import check_choice

REDUCTIONS = ("mean", "sum", "none")


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _as_array(value: Any) -> Any:
  """Tracers and arrays as they are; anything else (lists, scalars) as a NumPy array."""
  return value if _is_traced(value) or hasattr(value, "dtype") else np.asarray(value)


def float_array(value: Any, name: str) -> jax.Array:
  """`value` as a floating-point array; a ValueError naming `name` otherwise."""
  array = jnp.asarray(value)
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array, got dtype {array.dtype}")
  return array


def check_class_axis(logits: jax.Array) -> int:
  """The number of classes (last axis of `logits`), which must exist and be non-empty."""
  if logits.ndim < 1 or logits.shape[-1] < 1:
    raise ValueError(
        f"logits must have a non-empty class axis (the last one), got shape {logits.shape}"
    )
  return logits.shape[-1]


def check_labels(labels: Any, logits: jax.Array, name: str = "labels") -> jax.Array:
  """Integer class indices of shape `logits.shape[:-1]`.

  The dtype and shape are always checked, the range [0, num_classes) when `labels` is concrete.
  Traced labels are not inspected: use `label_validity` in the kernel.

  Returns:
    `labels` as a JAX array.
  """
  num_classes = check_class_axis(logits)
  labels = _as_array(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f"{name} must have shape logits.shape[:-1] = {logits.shape[:-1]}, got {labels.shape}"
    )
  if not _is_traced(labels) and labels.size:
    values = np.asarray(labels)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_classes:
      raise ValueError(
          f"{name} must be in [0, {num_classes}) (the size of the class axis of logits), "
          f"got values in [{low}, {high}]"
      )
  return jnp.asarray(labels)


def label_validity(labels: jax.Array, num_classes: int) -> jax.Array:
  """Per example: whether the label lies in [0, num_classes) (traceable)."""
  return (labels >= 0) & (labels < num_classes)


def probability_tolerance(num_classes: int, dtype: Any) -> float:
  """How far a row of targets may sum from 1: rounding of `num_classes` entries in `dtype`."""
  eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else 0.0
  return max(1e-4, num_classes * eps)


def check_targets(
    targets: Any, logits: jax.Array, name: str = "targets"
) -> tuple[jax.Array, float]:
  """Probability targets (one-hot, label-smoothed or soft) of the shape of `logits`.

  The shape is always checked; concrete targets must have entries >= 0 and rows (last axis)
  summing to 1 within `probability_tolerance`. Traced targets are not inspected: use
  `target_validity` in the kernel.

  Returns:
    `(targets as a JAX array, the tolerance)`; pass the tolerance on to `target_validity`.
  """
  num_classes = check_class_axis(logits)
  targets = _as_array(targets)
  if targets.shape != logits.shape:
    raise ValueError(f"{name} must have the shape of logits {logits.shape}, got {targets.shape}")
  tolerance = probability_tolerance(num_classes, targets.dtype)
  if not _is_traced(targets) and targets.size:
    values = np.asarray(targets, np.float64)
    row_sums = values.sum(axis=-1)
    if not (np.all(values >= 0) and np.all(np.abs(row_sums - 1) <= tolerance)):
      raise ValueError(
          f"{name} must be probability distributions along the last axis (entries in [0, 1], "
          f"rows summing to 1 within {tolerance:g}); got entries in "
          f"[{values.min():g}, {values.max():g}] and row sums in "
          f"[{row_sums.min():g}, {row_sums.max():g}]"
      )
  return jnp.asarray(targets), tolerance


def target_validity(targets: jax.Array, tolerance: float) -> jax.Array:
  """Per example: whether its row of targets is a probability distribution (traceable)."""
  return jnp.all(targets >= 0, axis=-1) & (jnp.abs(jnp.sum(targets, axis=-1) - 1) <= tolerance)


def labels_or_targets(labels: Any, logits: jax.Array) -> tuple[jax.Array, bool, float]:
  """Integer class indices (shape logits.shape[:-1]) or probability rows (shape of logits).

  An integer array, or one with fewer dimensions than `logits`, is checked as labels (so float
  class indices raise "labels must be integer"); anything else as probability targets.

  Returns:
    `(array, is_labels, tolerance)`; the tolerance of the targets' row sums (0 for labels).
  """
  check_class_axis(logits)
  array = _as_array(labels)
  if jnp.issubdtype(array.dtype, jnp.integer) or array.ndim < logits.ndim:
    return check_labels(array, logits), True, 0.0
  targets, tolerance = check_targets(array, logits)
  return targets, False, tolerance


def probability_rows(
    labels: jax.Array, is_labels: bool, tolerance: float, num_classes: int, dtype: Any
) -> tuple[jax.Array, jax.Array]:
  """(probability rows in `dtype`, per-example validity); traceable."""
  if is_labels:
    valid = label_validity(labels, num_classes)
    return jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes, dtype=dtype), valid
  targets = labels.astype(dtype)
  return targets, target_validity(targets, tolerance)


def check_weights(
    weights: Any, batch_shape: tuple[int, ...], name: str = "weights"
) -> jax.Array | None:
  """Per-example weights or a boolean mask, of shape `batch_shape`; None passes through.

  The dtype (real or boolean) and shape (exactly `batch_shape`, no broadcasting) are always
  checked; concrete weights must be finite and >= 0. Traced weights are not inspected:
  `reduce_loss` makes the loss of an example with an invalid weight NaN.
  """
  if weights is None:
    return None
  weights = _as_array(weights)
  if not (jnp.issubdtype(weights.dtype, jnp.floating) or jnp.issubdtype(weights.dtype, jnp.integer)
          or weights.dtype == jnp.bool_):
    raise ValueError(f"{name} must be real numbers or booleans, got dtype {weights.dtype}")
  if weights.shape != tuple(batch_shape):
    raise ValueError(
        f"{name} must have the batch shape {tuple(batch_shape)} (one weight per example), "
        f"got {weights.shape}"
    )
  if not _is_traced(weights) and weights.size:
    values = np.asarray(weights, np.float64)
    if not (np.all(np.isfinite(values)) and np.all(values >= 0)):
      raise ValueError(
          f"{name} must be finite and >= 0, got values in [{values.min():g}, {values.max():g}]"
      )
  return jnp.asarray(weights)


def weight_validity(weights: jax.Array) -> jax.Array:
  """Per example: whether its weight is finite and >= 0 (traceable)."""
  return jnp.isfinite(weights) & (weights >= 0)


def check_reduction(reduction: Any) -> str:
  """`reduction`, which must be one of `REDUCTIONS`."""
  check_choice("reduction", reduction, REDUCTIONS)
  return reduction


def nan_unless(valid: jax.Array, dtype: Any) -> jax.Array:
  """1 where `valid`, NaN elsewhere: multiplying by it makes a loss and its gradient NaN."""
  return jnp.where(valid, jnp.ones((), dtype), jnp.full((), jnp.nan, dtype))


def reduce_loss(
    losses: jax.Array, weights: jax.Array | None = None, reduction: str = "mean"
) -> jax.Array:
  r"""Weights and reduces per-example losses; traceable, call it inside the loss's kernel.

  With weights w (shape of `losses`) and losses l:
    "none": w * l (l without weights), the shape of `losses`;
    "sum":  sum_i w_i l_i;
    "mean": sum_i w_i l_i / sum_i w_i (0 when every weight is 0), or mean_i l_i without weights.
  Sums run over every axis of `losses` in at least float32; the result has the dtype of `losses`.
  A negative or non-finite weight (only possible when traced: `check_weights` rejects concrete
  ones) makes that example's weighted loss NaN.

  Args:
    losses: per-example losses.
    weights: None, or per-example weights / a boolean mask of the shape of `losses`.
    reduction: "mean", "sum" or "none".

  Returns:
    A scalar for "mean" and "sum", an array of the shape of `losses` for "none".
  """
  check_reduction(reduction)
  dtype = losses.dtype
  if weights is None:
    if reduction == "none":
      return losses
    wide = losses.astype(jnp.promote_types(dtype, jnp.float32))
    return (jnp.sum(wide) if reduction == "sum" else jnp.mean(wide)).astype(dtype)
  compute = jnp.promote_types(dtype, jnp.float32)
  w = weights.astype(compute)
  w = w * nan_unless(weight_validity(w), compute)
  weighted = w * losses.astype(compute)
  if reduction == "none":
    return weighted.astype(dtype)
  total = jnp.sum(weighted)
  if reduction == "sum":
    return total.astype(dtype)
  weight_sum = jnp.sum(w)
  # Every weight 0 makes every term 0: dividing by 1 returns 0 with a zero gradient.
  return (total / jnp.where(weight_sum > 0, weight_sum, 1)).astype(dtype)
