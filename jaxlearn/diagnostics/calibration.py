r"""Calibration: the expected calibration error (ECE) of a classifier's predicted probabilities.

A classifier is calibrated when, among the examples it predicts with confidence c, a fraction c
is correct. The ECE bins the examples by confidence (the largest predicted probability) into
`num_bins` equal-width bins (i/B, (i+1)/B] and averages the gap between accuracy and mean
confidence over the bins, weighted by their share of the examples:

.. math::

   \mathrm{ECE} = \sum_{b=1}^{B} \frac{|S_b|}{N}\,
      \bigl|\operatorname{acc}(S_b) - \operatorname{conf}(S_b)\bigr|.

References:
  Chuan Guo, Geoff Pleiss, Yu Sun and Kilian Q. Weinberger, "On Calibration of Modern Neural
  Networks" (https://arxiv.org/abs/1706.04599), ICML 2017: the metric with 15 bins.
  Kyungyul Kim et al., "Self-Knowledge Distillation with Progressive Refinement of Targets"
  (https://arxiv.org/abs/2006.12000), ICCV 2021; official code github.com/lgcnsai/PS-KD-Pytorch
  (`utils/metric.py`): the same bins (lower, upper], 10 of them, reported in percent.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlearn._checks import check_positive_int

__all__ = ["expected_calibration_error"]


def expected_calibration_error(
    probabilities: jax.Array, labels: jax.Array, *, num_bins: int = 15
) -> jax.Array:
  r"""The ECE of predicted class probabilities, with equal-width confidence bins.

  Confidence is the largest probability of a row and the prediction its argmax; a bin is
  (i / num_bins, (i + 1) / num_bins], as in the PS-KD official metric. Empty bins contribute
  nothing. Traceable (jit, vmap over runs); for logits pass `jax.nn.softmax(logits)`.

  Args:
    probabilities: floating-point array of shape (n, num_classes), rows of probabilities.
    labels: integer class indices of shape (n,).
    num_bins: the number of bins, >= 1 (static; 15 as in Guo et al.; the PS-KD code uses 10).

  Returns:
    A float32 scalar in [0, 1] (multiply by 100 for the percent the papers report).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.diagnostics import expected_calibration_error
    >>> probs = jnp.array([[0.85, 0.15], [0.85, 0.15], [0.55, 0.45], [0.25, 0.75]])
    >>> labels = jnp.array([0, 1, 0, 1])
    >>> # (0.8, 0.9]: conf 0.85, acc 0.5 (2 examples); (0.5, 0.6]: 0.55 vs 1; (0.7, 0.8]: 0.75 vs 1
    >>> round(float(expected_calibration_error(probs, labels, num_bins=10)), 4)
    0.35
  """
  check_positive_int("num_bins", num_bins)
  probabilities = jnp.asarray(probabilities)
  labels = jnp.asarray(labels)
  if probabilities.ndim != 2 or not jnp.issubdtype(probabilities.dtype, jnp.floating):
    raise ValueError(
        "probabilities must be a floating-point array of shape (n, num_classes), got "
        f"{probabilities.dtype} {probabilities.shape}"
    )
  if labels.shape != probabilities.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
        f"labels must be integer class indices of shape {probabilities.shape[:1]}, got "
        f"{labels.dtype} {labels.shape}"
    )
  return _ece_kernel(probabilities, labels, int(num_bins))


@functools.partial(jax.jit, static_argnames="num_bins")
def _ece_kernel(probabilities, labels, num_bins):
  p = probabilities.astype(jnp.promote_types(probabilities.dtype, jnp.float32))
  confidence = jnp.max(p, axis=-1)
  correct = (jnp.argmax(p, axis=-1) == labels).astype(p.dtype)
  # Bin i holds (i / B, (i + 1) / B]: the upper edge is inclusive.
  index = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  conf_sum = jax.ops.segment_sum(confidence, index, num_segments=num_bins)
  correct_sum = jax.ops.segment_sum(correct, index, num_segments=num_bins)
  # Per bin |acc - conf| * count = |correct_sum - conf_sum|; divided by N.
  n = max(p.shape[0], 1)  # no examples: 0
  return (jnp.sum(jnp.abs(correct_sum - conf_sum)) / n).astype(jnp.float32)
