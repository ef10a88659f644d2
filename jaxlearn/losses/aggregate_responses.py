r"""Learning from aggregate responses: the bag-level and the instance-level squared losses.

Paper: Adel Javanmard, Lin Chen, Vahab Mirrokni, Ashwinkumar Badanidiyuru and Gang Fu, "Learning
from Aggregate responses: Instance Level versus Bag Level Loss Functions", ICLR 2024,
arXiv:2401.11081. No official code.

The training set is split into bags; each bag B comes with one aggregate response, the mean
:math:`\bar y_B` of its members' responses, and the individual responses are never seen. With a
model's predictions :math:`f_i` the two natural squared losses are

.. math::

    \ell_{\mathrm{bag}}(B) = \Big(\bar y_B - \frac{1}{|B|}\sum_{i \in B} f_i\Big)^2,
    \qquad
    \ell_{\mathrm{inst}}(i) = \big(\bar y_{B(i)} - f_i\big)^2 .

Summed over a bag, the instance loss is the bag loss plus the spread of the predictions inside
the bag (the paper's "instance-level loss is a regularized bag-level loss"):

.. math::

    \sum_{i \in B} \ell_{\mathrm{inst}}(i) = |B|\,\ell_{\mathrm{bag}}(B)
      + \sum_{i \in B} \big(f_i - \bar f_B\big)^2 .

Bags are given as one integer bag id per instance, and the number of bags is the length of the
aggregate responses: a static shape, so everything runs under `jit` with `jax.ops.segment_sum`.

Not implemented: the paper's interpolating estimator. Its form could not be read (only the
abstract and summaries were available); "bag loss + rho * within-bag variance" would be a guess.
With this module a user can build any such combination from `bag_level_loss` and
`within_bag_variance`, but jaxlearn does not call it the paper's estimator.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn import registry
from jaxlearn.losses._common import (
    check_reduction,
    check_weights,
    float_array,
    nan_unless,
    reduce_loss,
)

__all__ = ["bag_level_loss", "instance_level_loss", "within_bag_variance"]


def _check_bags(predictions: Any, bag_ids: Any, bag_responses: Any):
  """The three inputs as arrays; ValueErrors naming the argument (ranges only when concrete)."""
  predictions = float_array(predictions, "predictions")
  if predictions.ndim != 1:
    raise ValueError(f"predictions must be 1-D (one per instance), got shape {predictions.shape}")
  bag_responses = float_array(bag_responses, "bag_responses")
  if bag_responses.ndim != 1 or bag_responses.shape[0] < 1:
    raise ValueError(
        f"bag_responses must be 1-D and non-empty (one per bag), got shape {bag_responses.shape}"
    )
  ids = bag_ids if isinstance(bag_ids, jax.core.Tracer) or hasattr(bag_ids, "dtype") else (
      np.asarray(bag_ids))
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"bag_ids must be integer bag indices, got dtype {ids.dtype}")
  if ids.shape != predictions.shape:
    raise ValueError(
        f"bag_ids must have the shape of predictions {predictions.shape}, got {ids.shape}"
    )
  num_bags = bag_responses.shape[0]
  if not isinstance(ids, jax.core.Tracer) and ids.size:
    values = np.asarray(ids)
    if values.min() < 0 or values.max() >= num_bags:
      raise ValueError(
          f"bag_ids must be in [0, {num_bags}) (the length of bag_responses), got values in "
          f"[{values.min()}, {values.max()}]"
      )
    missing = np.setdiff1d(np.arange(num_bags), values)
    if missing.size:
      raise ValueError(f"bag_ids must give every bag at least one instance; empty: {missing[:5]}")
  return predictions, jnp.asarray(ids), bag_responses


def _bag_statistics(predictions, bag_ids, num_bags):
  """Per bag: the count, the mean prediction and the sum of squared deviations (centred, so
  predictions of 1e4 lose no precision); whether every id is valid (traceable)."""
  compute = jnp.promote_types(predictions.dtype, jnp.float32)
  f = predictions.astype(compute)
  valid_ids = jnp.all((bag_ids >= 0) & (bag_ids < num_bags))
  ones = jnp.ones_like(f)
  counts = jax.ops.segment_sum(ones, bag_ids, num_segments=num_bags)
  nonempty = counts > 0
  safe = jnp.where(nonempty, counts, 1)
  means = jax.ops.segment_sum(f, bag_ids, num_segments=num_bags) / safe
  deviations = f - means[jnp.clip(bag_ids, 0, num_bags - 1)]
  squares = jax.ops.segment_sum(deviations**2, bag_ids, num_segments=num_bags)
  # An empty bag has no mean, an out-of-range id no bag: NaN, never a silent 0.
  invalid = nan_unless(nonempty & valid_ids, compute)
  return counts, means * invalid, squares * invalid, f, compute


def bag_level_loss(
    predictions: jax.Array,
    bag_ids: jax.Array,
    bag_responses: jax.Array,
    *,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""The bag-level squared loss: each bag's aggregate response against its mean prediction.

  .. math::

      \ell_{\mathrm{bag}}(B) = \Big(\bar y_B - \frac{1}{|B|}\sum_{i \in B} f_i\Big)^2 .

  Args:
    predictions: the model's predictions :math:`f_i`, shape (n,).
    bag_ids: integer bag index of each instance, shape (n,), in ``[0, num_bags)``.
    bag_responses: the aggregate (mean) response :math:`\bar y_B` of each bag, shape
      (num_bags,); its length fixes the number of bags (a static shape).
    weights: None, or per-bag weights / a boolean mask, shape (num_bags,).
    reduction: "mean" (default: the weighted mean over bags), "sum" or "none" (per bag).

  Returns:
    The loss in the dtype of `predictions`. Concrete out-of-range bag ids or empty bags raise a
    ValueError; under `jit` an empty bag's loss is NaN, and an out-of-range id makes every bag's
    loss NaN (its instance cannot be attributed to a bag).

  References:
    Adel Javanmard, Lin Chen, Vahab Mirrokni, Ashwinkumar Badanidiyuru and Gang Fu, "Learning
    from Aggregate responses: Instance Level versus Bag Level Loss Functions"
    (https://arxiv.org/abs/2401.11081), ICLR 2024.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import bag_level_loss
    >>> predictions = jnp.array([1.0, 3.0, 0.0, 2.0, 4.0])
    >>> bag_ids = jnp.array([0, 0, 1, 1, 1])
    >>> bag_level_loss(predictions, bag_ids, jnp.array([2.0, 1.0]), reduction="none")
    Array([0., 1.], dtype=float32)
  """
  predictions, bag_ids, bag_responses = _check_bags(predictions, bag_ids, bag_responses)
  check_reduction(reduction)
  weights = check_weights(weights, bag_responses.shape)
  return _bag_kernel(predictions, bag_ids, bag_responses, weights, reduction)


@functools.partial(jax.jit, static_argnames="reduction")
def _bag_kernel(predictions, bag_ids, bag_responses, weights, reduction):
  _, means, _, _, compute = _bag_statistics(predictions, bag_ids, bag_responses.shape[0])
  losses = (bag_responses.astype(compute) - means) ** 2
  return reduce_loss(losses.astype(predictions.dtype), weights, reduction)


def instance_level_loss(
    predictions: jax.Array,
    bag_ids: jax.Array,
    bag_responses: jax.Array,
    *,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""The instance-level squared loss: every prediction against its bag's aggregate response.

  .. math::

      \ell_{\mathrm{inst}}(i) = \big(\bar y_{B(i)} - f_i\big)^2 .

  Its mean over instances is the bag-size weighted mean of the bag-level loss plus the
  within-bag variance of the predictions (`within_bag_variance`); with bags of equal size,
  ``mean(instance) = mean(bag) + mean(variance)``.

  Args:
    predictions: the model's predictions, shape (n,).
    bag_ids: integer bag index of each instance, shape (n,).
    bag_responses: the aggregate response of each bag, shape (num_bags,).
    weights: None, or per-instance weights / a boolean mask, shape (n,).
    reduction: "mean" (default, over instances), "sum" or "none" (per instance).

  Returns:
    The loss in the dtype of `predictions`; under `jit` an instance with an out-of-range bag id
    has a NaN loss.

  References:
    Adel Javanmard, Lin Chen, Vahab Mirrokni, Ashwinkumar Badanidiyuru and Gang Fu, "Learning
    from Aggregate responses: Instance Level versus Bag Level Loss Functions"
    (https://arxiv.org/abs/2401.11081), ICLR 2024.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import instance_level_loss
    >>> predictions = jnp.array([1.0, 3.0, 0.0, 2.0, 4.0])
    >>> bag_ids = jnp.array([0, 0, 1, 1, 1])
    >>> instance_level_loss(predictions, bag_ids, jnp.array([2.0, 1.0]), reduction="none")
    Array([1., 1., 1., 1., 9.], dtype=float32)
  """
  predictions, bag_ids, bag_responses = _check_bags(predictions, bag_ids, bag_responses)
  check_reduction(reduction)
  weights = check_weights(weights, predictions.shape)
  return _instance_kernel(predictions, bag_ids, bag_responses, weights, reduction)


@functools.partial(jax.jit, static_argnames="reduction")
def _instance_kernel(predictions, bag_ids, bag_responses, weights, reduction):
  num_bags = bag_responses.shape[0]
  compute = jnp.promote_types(predictions.dtype, jnp.float32)
  valid = (bag_ids >= 0) & (bag_ids < num_bags)
  targets = bag_responses.astype(compute)[jnp.clip(bag_ids, 0, num_bags - 1)]
  losses = (targets - predictions.astype(compute)) ** 2 * nan_unless(valid, compute)
  return reduce_loss(losses.astype(predictions.dtype), weights, reduction)


def within_bag_variance(predictions: jax.Array, bag_ids: jax.Array, num_bags: int) -> jax.Array:
  r"""Per bag: the (population) variance of the predictions inside it.

  .. math::

      V_B = \frac{1}{|B|}\sum_{i \in B}\big(f_i - \bar f_B\big)^2 .

  Computed from centred deviations (no cancellation for large predictions).

  Args:
    predictions: shape (n,).
    bag_ids: integer bag index of each instance, shape (n,).
    num_bags: the number of bags (static; keyword or positional).

  Returns:
    Shape (num_bags,), in the dtype of `predictions`; NaN for an empty bag under `jit`.

  References:
    Adel Javanmard, Lin Chen, Vahab Mirrokni, Ashwinkumar Badanidiyuru and Gang Fu, "Learning
    from Aggregate responses: Instance Level versus Bag Level Loss Functions"
    (https://arxiv.org/abs/2401.11081), ICLR 2024.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import within_bag_variance
    >>> within_bag_variance(jnp.array([1.0, 3.0, 0.0, 2.0, 4.0]), jnp.array([0, 0, 1, 1, 1]), 2)
    Array([1.       , 2.6666667], dtype=float32)
  """
  if isinstance(num_bags, bool) or not isinstance(num_bags, (int, np.integer)) or num_bags < 1:
    raise ValueError(f"num_bags must be an integer >= 1, got {num_bags!r}")
  predictions, bag_ids, _ = _check_bags(predictions, bag_ids, jnp.zeros((int(num_bags),)))
  return _variance_kernel(predictions, bag_ids, int(num_bags))


@functools.partial(jax.jit, static_argnames="num_bags")
def _variance_kernel(predictions, bag_ids, num_bags):
  counts, _, squares, _, _ = _bag_statistics(predictions, bag_ids, num_bags)
  return (squares / jnp.where(counts > 0, counts, 1)).astype(predictions.dtype)


RECORD = registry.record(
    slug="aggregate_response_losses",
    kind="loss",
    title="Learning from Aggregate responses: Instance Level versus Bag Level Loss Functions",
    reference="arXiv:2401.11081",
    experiment="aggregate_responses_bias_variance",
    notes=(
        "The bag-level and instance-level squared losses for mean-aggregated responses, and the "
        "within-bag variance that separates them (sum over a bag of the instance loss = |B| * "
        "bag loss + sum of squared deviations; tested). The paper's interpolating estimator is "
        "NOT implemented: its parametrization could not be read (no code; only the abstract and "
        "summaries), and 'bag + rho * variance' would be a guess. The differential-privacy "
        "mechanism is not implemented. Bag ids out of range or empty bags raise when concrete; "
        "under jit an empty bag's loss is NaN and an out-of-range id makes every bag loss NaN."
    ),
)
