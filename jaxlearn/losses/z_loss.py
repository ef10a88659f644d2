r"""The spherical Z-loss: a shift- and scale-invariant classification loss.

Paper: Alexandre de Brébisson and Pascal Vincent, "The Z-loss: a shift and scale invariant
classification loss belonging to the Spherical Family", arXiv:1604.08859, 2016. The authors'
Theano example: github.com/pascal20100/factored_output_layer (`example/timing_example.py`, the
"z" cost).

The D outputs :math:`o` of an example are standardized with their own mean and (population)
standard deviation over all D outputs, and the standardized score of the target class goes
through a scaled softplus:

.. math::

    \mu = \frac{1}{D}\sum_c o_c, \qquad
    \sigma = \sqrt{\frac{1}{D}\sum_c (o_c - \mu)^2 + \epsilon}, \qquad
    z_c = \frac{o_c - \mu}{\sigma}, \qquad
    \ell(o, y) = \frac{1}{a}\,\mathrm{softplus}\big(a\,(b - z_y)\big).

:math:`a > 0` is the sharpness and :math:`b` the location of the softplus. The loss depends on
:math:`o` only through :math:`z`, so :math:`\ell(\alpha o + \beta) = \ell(o)` for every
:math:`\alpha > 0` and :math:`\beta` (exactly when :math:`\epsilon = 0`, up to
:math:`\epsilon` otherwise); :math:`z_y \le \sqrt{D - 1}`, so the loss is bounded below by
:math:`\mathrm{softplus}(a(b - \sqrt{D - 1}))/a > 0` and never drives the logits to infinity. Only
the sums :math:`\sum_c o_c` and :math:`\sum_c o_c^2` and the target output are needed, which is
what places it in the spherical family of Vincent et al. (training independent of D; that
output-layer algorithm is not implemented here).

Deviation (numerics). The authors compute :math:`\sigma = \sqrt{E[o^2] - \mu^2} + 10^{-12}`:
the difference cancels catastrophically when :math:`|\mu| \gg \sigma` (logits near 1e4 with a
small spread are all noise in float32) and the square root has an infinite derivative at zero
variance. Here the variance is centred (the mean of :math:`(o - \mu)^2`) and :math:`\epsilon`
(default 1e-12) is added under the square root, which keeps the gradient finite at constant
logits. The defaults a = 1, b = 0 are those of the authors' code; the values tuned in the
paper's language-model experiments were not read.

Soft targets extend the loss linearly, :math:`\ell(o, t) = \sum_c t_c\,\ell(o, c)`, which gives
the integer-label loss for one-hot targets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlearn import _checks, registry
from jaxlearn.losses._common import (
    check_class_axis,
    check_reduction,
    check_weights,
    float_array,
    label_validity,
    labels_or_targets,
    nan_unless,
    reduce_loss,
    target_validity,
)

__all__ = ["spherical_z_loss", "z_scores"]


def z_scores(logits: jax.Array, eps: float = 1e-12) -> jax.Array:
  r"""The standardized outputs :math:`z = (o - \mu)/\sqrt{\mathrm{Var}(o) + \epsilon}` per row.

  Mean and (population, centred) variance run over the last axis, in at least float32.

  Args:
    logits: floating-point array of shape (..., num_classes).
    eps: added to the variance, >= 0.

  Returns:
    The z-scores, shape and dtype of `logits`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import z_scores
    >>> z_scores(jnp.array([[1.0, 2.0, 3.0]]), eps=0.0) * jnp.sqrt(2 / 3)
    Array([[-1.,  0.,  1.]], dtype=float32)
  """
  logits = float_array(logits, "logits")
  check_class_axis(logits)
  _checks.check_non_negative("eps", eps)
  return _z_scores_kernel(logits, eps)


@jax.jit
def _z_scores_kernel(logits, eps):
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  return _standardize(logits.astype(compute), eps).astype(logits.dtype)


def _standardize(o: jax.Array, eps) -> jax.Array:
  centred = o - jnp.mean(o, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  return centred * jax.lax.rsqrt(variance + jnp.asarray(eps, o.dtype))


def spherical_z_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    a: float = 1.0,
    b: float = 0.0,
    eps: float = 1e-12,
    weights: jax.Array | None = None,
    reduction: str = "none",
) -> jax.Array:
  r"""The Z-loss :math:`\frac{1}{a}\mathrm{softplus}(a(b - z_y))` of de Brébisson and Vincent.

  .. math::

      z_c = \frac{o_c - \mu}{\sqrt{\frac{1}{D}\sum_k (o_k - \mu)^2 + \epsilon}}, \qquad
      \ell(o, y) = \frac{1}{a}\log\big(1 + e^{a (b - z_y)}\big),
      \qquad \ell(o, t) = \sum_c t_c\,\ell(o, c).

  Not the log-partition penalty :math:`\mathrm{logsumexp}(o)^2` that some language-model codes
  call "z-loss" (that one is ``log_partition_penalty`` of the small-scale-proxies method).
  Invariant to :math:`o \to \alpha o + \beta` (:math:`\alpha > 0`), up to :math:`\epsilon`. The
  variance is centred and :math:`\epsilon` goes under the square root (the authors add
  1e-12 to :math:`\sigma` computed as :math:`\sqrt{E[o^2] - \mu^2}`: see the module docstring).
  Every numeric argument may be traced (vmapped over, injected). Inside `jit`, an out-of-range
  label or a target row that is not a distribution makes that example's loss NaN.

  Args:
    logits: floating-point array of shape (..., num_classes), num_classes >= 2.
    labels: integer class indices of shape (...), or probability targets (one-hot,
      smoothed or soft) of the shape of `logits`.
    a: the sharpness, > 0 (default 1, the authors' code).
    b: the location, a real number (default 0, the authors' code).
    eps: added to the variance, >= 0 (default 1e-12); 0 gives NaN for a row of equal logits.
    weights: optional per-example weights or boolean mask of shape (...), finite and >= 0.
    reduction: "none" (default: per-example losses, times the weights), "sum" or "mean" (the
      weighted mean sum(w * loss) / sum(w)); see `jaxlearn.losses._common.reduce_loss`.

  Returns:
    Losses of shape (...) for "none", else a scalar; in the dtype of `logits` (computed in at
    least float32).

  Raises:
    ValueError: for non-float logits, fewer than 2 classes, mismatched shapes, concrete labels
      out of range, concrete targets that are not distributions, invalid concrete weights, an
      unknown reduction, or a, b, eps out of range.

  References:
    Alexandre de Brébisson and Pascal Vincent, "The Z-loss: a shift and scale invariant
    classification loss belonging to the Spherical Family",
    `arXiv:1604.08859 <https://arxiv.org/abs/1604.08859>`_, 2016. Authors' code:
    github.com/pascal20100/factored_output_layer.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import spherical_z_loss
    >>> logits = jnp.array([[2.0, 0.0, -2.0], [0.0, 1.0, 0.0]])
    >>> loss = spherical_z_loss(logits, jnp.array([0, 1]))
    >>> bool(jnp.allclose(spherical_z_loss(10 * logits + 3, jnp.array([0, 1])), loss))
    True
  """
  logits = float_array(logits, "logits")
  labels, is_labels, tolerance = labels_or_targets(labels, logits)
  if logits.shape[-1] < 2:
    raise ValueError(f"logits must have at least 2 classes, got shape {logits.shape}")
  _checks.check_positive("a", a)
  _checks.check_range("b", b)
  _checks.check_non_negative("eps", eps)
  weights = check_weights(weights, logits.shape[:-1])
  reduction = check_reduction(reduction)
  if is_labels:
    return _labels_kernel(logits, labels, a, b, eps, weights, reduction)
  return _targets_kernel(logits, labels, a, b, eps, weights, tolerance, reduction)


def _per_class(logits: jax.Array, a, b, eps) -> jax.Array:
  """The loss for each possible class, float32 or wider, shape of `logits`."""
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  z = _standardize(logits.astype(compute), eps)
  a = jnp.asarray(a, compute)
  return jax.nn.softplus(a * (jnp.asarray(b, compute) - z)) / a


@functools.partial(jax.jit, static_argnames=("reduction",))
def _labels_kernel(logits, labels, a, b, eps, weights, reduction):
  per_class = _per_class(logits, a, b, eps)
  num_classes = logits.shape[-1]
  valid = label_validity(labels, num_classes)
  safe = jnp.where(valid, labels, 0)
  losses = jnp.take_along_axis(per_class, safe[..., None], axis=-1)[..., 0]
  losses = losses * nan_unless(valid, losses.dtype)
  return reduce_loss(losses, weights, reduction).astype(logits.dtype)


@functools.partial(jax.jit, static_argnames=("tolerance", "reduction"))
def _targets_kernel(logits, targets, a, b, eps, weights, tolerance, reduction):
  per_class = _per_class(logits, a, b, eps)
  t = targets.astype(per_class.dtype)
  losses = jnp.sum(t * per_class, axis=-1) * nan_unless(target_validity(t, tolerance),
                                                        per_class.dtype)
  return reduce_loss(losses, weights, reduction).astype(logits.dtype)


RECORD = registry.record(
    slug="z_loss",
    kind="loss",
    title=(
        "The Z-loss: a shift and scale invariant classification loss belonging to the "
        "Spherical Family"
    ),
    reference="arXiv:1604.08859",
    experiment="z_loss_digits",
    notes=(
        "Named spherical_z_loss (not the log-partition penalty logsumexp(o)^2, which is "
        "log_partition_penalty of small_scale_proxies). sigma = sqrt(mean((o - mu)^2) + eps), "
        "eps = 1e-12 under the square root; the authors' Theano example uses sqrt(E[o^2] - "
        "mu^2) + 1e-12, which cancels catastrophically when |mu| >> sigma and has an infinite "
        "derivative at zero variance. Defaults a = 1, b = 0 are the authors' example; the a, b "
        "tuned in the paper's PTB / One Billion Word runs were not read. Soft targets: "
        "sum_c t_c l(o, c) (our extension). The spherical-family training algorithm (cost "
        "independent of the number of outputs) and the 40x speed-up claim are out of scope. "
        "Traced out-of-range labels give NaN."
    ),
)
