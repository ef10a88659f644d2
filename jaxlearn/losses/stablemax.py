"""StableMax and its cross-entropy: a softmax replacement that does not collapse in float32.

Paper: Lucas Prieto, Melih Barsbey, Pedro A. M. Mediano and Tolga Birdal, "Grokking at the Edge
of Numerical Stability", ICLR 2025, arXiv:2501.04697. Official code:
github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability (`utils.py`: `s`,
`log_stablemax`, `stablemax_cross_entropy`; `logger.py`: the Softmax Collapse metric).

StableMax replaces the exponential of the softmax by a function that grows only linearly:

    s(x) = x + 1            for x >= 0,
    s(x) = 1 / (1 - x)      for x < 0,
    StableMax(x)_i = s(x_i) / sum_j s(x_j),
    loss(x, y) = -log StableMax(x)_y.

s is positive, increasing and continuously differentiable (s(0) = s'(0) = 1). Because
`log s(x) = sign(x) log(1 + |x|)`, StableMax is exactly the softmax of log s(x), which is how
`log_stablemax` evaluates it: every intermediate stays finite for any finite logits.

Softmax Collapse (SC): in float32 the sum of exponentials in the softmax absorbs the small
terms once the correct logit leads the others by about 17 (e^-17 < 2^-24); the loss of that
example is then exactly 0 and so is its gradient on the correct logit, and past a lead of about
87 (104 where subnormals are kept) the whole gradient underflows to zero. With StableMax the same absorption in the official
formula needs s(x_y) / s(x_j) > 2^24, i.e. logits of order 10^7. Here the non-maximal terms are
summed apart and added with `log1p`, so nothing is absorbed until they underflow
(s(x_y) / s(x_j) > e^87, logits of order 10^37).

Precision. The official code casts the logits to float64 before the loss. We cannot require
`jax_enable_x64`, so the computation runs in the logits' dtype promoted to at least float32
(float64 when the logits are float64), and results are returned in the logits' dtype.
The official s adds eps = 1e-30 to 1 - x; for x < 0, 1 - x > 1, so that eps is below the
resolution of float32 and float64 alike and changes nothing; it is omitted here.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn import registry
from jaxlearn.losses._common import (
    check_class_axis,
    check_labels,
    check_reduction,
    check_targets,
    check_weights,
    float_array,
    label_validity,
    nan_unless,
    reduce_loss,
    target_validity,
)

__all__ = [
    "stablemax",
    "log_stablemax",
    "stablemax_cross_entropy",
    "stablemax_cross_entropy_with_probs",
    "zero_gradient_fraction",
    "softmax_collapse_fraction",
]

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_axis(axis: int, ndim: int) -> int:
  """`axis` as a non-negative index (one compiled kernel for -1 and ndim - 1)."""
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
    raise ValueError(f"axis must be an integer in [{-ndim}, {ndim}), got {axis!r}")
  return int(axis) % ndim


def _compute_dtype(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def _s(x: jax.Array) -> jax.Array:
  """s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0."""
  nonneg = x >= 0
  # Each branch only sees inputs from its own half-line: the unused branch of a `where` still
  # gets differentiated, and 1 / (1 - x) at x = 1 would turn its zero cotangent into NaN.
  positive = jnp.where(nonneg, x, 0)
  negative = jnp.where(nonneg, 0, x)
  return jnp.where(nonneg, positive + 1, 1 / (1 - negative))


def _log_s(x: jax.Array) -> jax.Array:
  """log s(x) = log1p(x) for x >= 0 and -log1p(-x) for x < 0 (no division, no overflow)."""
  nonneg = x >= 0
  positive = jnp.where(nonneg, x, 0)
  negative = jnp.where(nonneg, 0, x)
  return jnp.where(nonneg, jnp.log1p(positive), -jnp.log1p(-negative))


def _log_softmax_log1p(logits: jax.Array, axis: int) -> jax.Array:
  """log_softmax that keeps full relative precision for the largest entry.

  With k the argmax and S = sum_{j != k} exp(l_j - l_k), log p = (l - l_k) - log1p(S). This is an
  identity for any fixed k, so l_k carries its gradient. Unlike log(1 + S), log1p(S) does not
  absorb a small S: log p_k and its gradient (1 - p_k = S / (1 + S)) stay non-zero however
  confident the prediction, where the usual log-sum-exp returns exactly 0 once S < 2^-24.
  """
  l = jnp.moveaxis(logits, axis, -1)
  k = jnp.argmax(l, axis=-1, keepdims=True)
  is_max = jnp.arange(l.shape[-1]) == k
  # l_k - l_k is written as a constant 0: differentiated, it would make the backward pass
  # compute 1 - p_k as 1 - (1 - S / (1 + S)), which rounds to 0 for a confident prediction.
  shifted = jnp.where(is_max, 0, l - jnp.take_along_axis(l, k, axis=-1))
  others = jnp.sum(jnp.where(is_max, 0, jnp.exp(shifted)), axis=-1, keepdims=True)
  return jnp.moveaxis(shifted - jnp.log1p(others), -1, axis)


def stablemax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """StableMax probabilities, s(x_i) / sum_j s(x_j) along `axis`.

  The ratio is formed after dividing by s(max x) (s is increasing, so that is the largest term):
  the sum then lies in [1, n] and cannot overflow, and every probability carries only a few
  roundings, as in the paper's direct formula.

  Args:
    logits: floating-point array.
    axis: the class axis.

  Returns:
    Non-negative probabilities summing to 1 along `axis`, in the dtype of `logits` (computed in at
    least float32).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import stablemax
    >>> print(stablemax(jnp.array([1.0, 0.0, -1.0])))  # s = (2, 1, 1/2), normalized
    [0.5714... 0.2857... 0.1428...]
  """
  logits = float_array(logits, "logits")
  return _stablemax_kernel(logits, _check_axis(axis, logits.ndim))


@functools.partial(jax.jit, static_argnames="axis")
def _stablemax_kernel(logits: jax.Array, axis: int) -> jax.Array:
  x = logits.astype(_compute_dtype(logits.dtype))
  # s(max x) only rescales numerator and denominator alike, so it carries no gradient.
  scale = jax.lax.stop_gradient(_s(jnp.max(x, axis=axis, keepdims=True)))
  ratios = _s(x) / scale
  return (ratios / jnp.sum(ratios, axis=axis, keepdims=True)).astype(logits.dtype)


def log_stablemax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """log StableMax(x)_i = log s(x_i) - log sum_j s(x_j), along `axis`.

  Evaluated as the log-softmax of log s(x), which is the same function: log s never overflows
  (`|log s(x)| = log(1 + |x|)`), so values and gradients stay finite for all finite logits. The
  log-softmax sums the non-maximal terms with `log1p`, so the largest entry keeps full relative
  precision: in float32 the loss of a confident example stays positive (log StableMax_y is
  exactly 0 in the official formula `log(s / sum s)` once s_y exceeds the other terms by about
  2^24). The gradient is `d/dx_j log StableMax(x)_i = (1[i = j] - StableMax(x)_j) / (1 + |x_j|)`.

  Args:
    logits: floating-point array.
    axis: the class axis.

  Returns:
    Log-probabilities in the dtype of `logits` (computed in at least float32).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import log_stablemax
    >>> log_probs = log_stablemax(jnp.array([1e4, 0.0, -1e4]))
    >>> bool(jnp.all(jnp.isfinite(log_probs)))
    True
  """
  logits = float_array(logits, "logits")
  return _log_stablemax_kernel(logits, _check_axis(axis, logits.ndim))


@functools.partial(jax.jit, static_argnames="axis")
def _log_stablemax_kernel(logits: jax.Array, axis: int) -> jax.Array:
  x = logits.astype(_compute_dtype(logits.dtype))
  return _log_softmax_log1p(_log_s(x), axis).astype(logits.dtype)


def stablemax_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, weights: jax.Array | None = None,
    reduction: str = "none",
) -> jax.Array:
  """StableMax cross-entropy with integer labels, -log StableMax(logits)_label per example.

  The counterpart of `optax.losses.softmax_cross_entropy_with_integer_labels`; the class axis is
  the last one. `reduction="mean"` gives the paper's (mean-reduced) loss.

  Label range: concrete labels outside [0, num_classes) raise a ValueError. Under `jit`/`vmap`
  the labels are traced and cannot be inspected, so an out-of-range (or negative) label makes
  that example's loss and its gradient NaN instead of being clamped or wrapped to a valid class.

  Args:
    logits: floating-point array of shape (..., num_classes).
    labels: integer array of shape (...), values in [0, num_classes).
    weights: optional per-example weights or boolean mask of shape (...), finite and >= 0.
    reduction: "none" (per-example losses, times the weights), "sum" or "mean" (the weighted
      mean sum(w * loss) / sum(w)); see `jaxlearn.losses._common.reduce_loss`.

  Returns:
    Losses of shape (...) for "none", else a scalar; in the dtype of `logits` (computed in at
    least float32).

  Raises:
    ValueError: for non-float logits, non-integer labels, mismatched shapes, concrete labels out
      of range, invalid concrete weights or an unknown reduction.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import stablemax_cross_entropy
    >>> logits = jnp.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    >>> stablemax_cross_entropy(logits, jnp.array([0, 1]), reduction="mean").shape
    ()
  """
  logits = float_array(logits, "logits")
  labels = check_labels(labels, logits)
  weights = check_weights(weights, logits.shape[:-1])
  return _cross_entropy_kernel(logits, labels, weights, check_reduction(reduction))


@functools.partial(jax.jit, static_argnames="reduction")
def _cross_entropy_kernel(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None, reduction: str
) -> jax.Array:
  compute = _compute_dtype(logits.dtype)
  log_probs = _log_stablemax_kernel(logits.astype(compute), logits.ndim - 1)
  valid = label_validity(labels, logits.shape[-1])
  safe_labels = jnp.where(valid, labels, 0)
  picked = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  losses = -picked * nan_unless(valid, compute)
  return reduce_loss(losses, weights, reduction).astype(logits.dtype)


def stablemax_cross_entropy_with_probs(
    logits: jax.Array, targets: jax.Array, *, weights: jax.Array | None = None,
    reduction: str = "none",
) -> jax.Array:
  """StableMax cross-entropy with probability targets, -sum_i t_i log StableMax_i per example.

  For one-hot, label-smoothed or soft targets; the counterpart of
  `optax.losses.softmax_cross_entropy`. With one-hot targets it equals `stablemax_cross_entropy`.

  Target validity: each row must be a probability distribution (entries >= 0, summing to 1 up to
  rounding). Concrete targets that are not raise a ValueError; under `jit`/`vmap` an invalid row
  makes that example's loss and gradient NaN.

  Args:
    logits: floating-point array of shape (..., num_classes).
    targets: array of the same shape, each row a probability distribution.
    weights: optional per-example weights or boolean mask of shape (...), finite and >= 0.
    reduction: "none" (per-example losses, times the weights), "sum" or "mean" (the weighted
      mean sum(w * loss) / sum(w)); see `jaxlearn.losses._common.reduce_loss`.

  Returns:
    Losses of shape (...) for "none", else a scalar; in the dtype of `logits` (computed in at
    least float32).

  Raises:
    ValueError: for non-float logits, mismatched shapes, concrete targets that are not
      probability distributions, invalid concrete weights or an unknown reduction.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import stablemax_cross_entropy_with_probs
    >>> logits = jnp.array([[1.0, 0.0, -1.0]])
    >>> targets = jnp.array([[0.9, 0.05, 0.05]])  # soft targets (label smoothing)
    >>> stablemax_cross_entropy_with_probs(logits, targets).shape
    (1,)
  """
  logits = float_array(logits, "logits")
  targets, tolerance = check_targets(targets, logits)
  weights = check_weights(weights, logits.shape[:-1])
  return _cross_entropy_probs_kernel(
      logits, targets, weights, tolerance, check_reduction(reduction)
  )


@functools.partial(jax.jit, static_argnames=("tolerance", "reduction"))
def _cross_entropy_probs_kernel(
    logits: jax.Array, targets: jax.Array, weights: jax.Array | None, tolerance: float,
    reduction: str,
) -> jax.Array:
  compute = _compute_dtype(logits.dtype)
  t = targets.astype(compute)
  valid = target_validity(t, tolerance)
  log_probs = _log_stablemax_kernel(logits.astype(compute), logits.ndim - 1)
  # t * log p with t = 0 and log p = -inf cannot occur: log p is finite for finite logits.
  losses = -jnp.sum(t * log_probs, axis=-1) * nan_unless(valid, compute)
  return reduce_loss(losses, weights, reduction).astype(logits.dtype)


def zero_gradient_fraction(loss_fn: LossFn, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The fraction of examples whose loss gradient w.r.t. their own logits is exactly zero.

  Such an example no longer contributes anything to training (its parameter gradient is zero
  too). For float32 softmax cross-entropy this happens once the correct logit leads by about 87
  (104 where subnormals are kept) and every other exponential underflows: the end stage of
  Softmax Collapse.

  Args:
    loss_fn: `loss_fn(logits, labels) -> per-example losses of shape logits.shape[:-1]`, where an
      example's loss depends only on its own row of logits (true of every cross-entropy).
    logits: floating-point array of shape (..., num_classes).
    labels: whatever `loss_fn` takes as labels.

  Returns:
    A float32 scalar in [0, 1].

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.losses import zero_gradient_fraction
    >>> logits = jnp.array([[200.0, 0.0], [1.0, 0.0]])  # the first example's softmax collapsed
    >>> loss_fn = optax.losses.softmax_cross_entropy_with_integer_labels
    >>> zero_gradient_fraction(loss_fn, logits, jnp.array([0, 0]))
    Array(0.5, dtype=float32)
  """
  logits = float_array(logits, "logits")
  check_class_axis(logits)
  losses = jax.eval_shape(loss_fn, logits, labels)
  if losses.shape != logits.shape[:-1]:
    raise ValueError(
        f"loss_fn must return per-example losses of shape {logits.shape[:-1]}, "
        f"got {losses.shape}"
    )
  return _zero_gradient_kernel(loss_fn, logits, labels)


@functools.partial(jax.jit, static_argnums=0)
def _zero_gradient_kernel(loss_fn: LossFn, logits: jax.Array, labels: jax.Array) -> jax.Array:
  # Examples are independent, so the gradient of the summed loss holds each example's gradient.
  grads = jax.grad(lambda z: jnp.sum(loss_fn(z, labels)))(logits)
  return jnp.mean(jnp.all(grads == 0, axis=-1).astype(jnp.float32))


def softmax_collapse_fraction(logits: jax.Array) -> jax.Array:
  """The paper's Softmax Collapse metric: the fraction of rows with sum_j exp(z_j - max z) == 1.

  That sum equals 1 exactly when rounding absorbed every non-maximal term, so the softmax of that
  example is exactly one-hot and its softmax cross-entropy (for the argmax label) exactly 0. It is
  evaluated in the logits' dtype promoted to at least float32, the precision in which jaxlearn's
  losses run (the official `logger.py` uses the cross-entropy dtype of the run).

  Args:
    logits: floating-point array of shape (..., num_classes); the class axis is the last one.

  Returns:
    A float32 scalar in [0, 1].

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import softmax_collapse_fraction
    >>> softmax_collapse_fraction(jnp.array([[40.0, 0.0], [1.0, 0.0]]))
    Array(0.5, dtype=float32)
  """
  logits = float_array(logits, "logits")
  check_class_axis(logits)
  return _softmax_collapse_kernel(logits)


@jax.jit
def _softmax_collapse_kernel(logits: jax.Array) -> jax.Array:
  z = logits.astype(_compute_dtype(logits.dtype))
  total = jnp.sum(jnp.exp(z - jnp.max(z, axis=-1, keepdims=True)), axis=-1)
  return jnp.mean((total == 1).astype(jnp.float32))


RECORD = registry.record(
    slug="stablemax",
    kind="loss",
    title="Grokking at the Edge of Numerical Stability",
    reference="arXiv:2501.04697",
    experiment="stablemax_softmax_collapse",
    notes=(
        "The loss half of the paper; perpGrad (slug `perpgrad`) is an optimizer transform. The "
        "official code computes the loss in float64; here it runs in float32 (or the logits' "
        "dtype if wider) as log_softmax(log s(x)), with the non-maximal terms summed apart and "
        "added by log1p, so a confident example's loss and gradient do not round to 0 (the "
        "official float32 formula log(s / sum s) does at logits ~1e8). The official eps = "
        "1e-30 in 1 / (1 - x + eps) is below float resolution (1 - x > 1) and omitted. Traced "
        "out-of-range labels give NaN; the official torch.gather would raise."
    ),
)
