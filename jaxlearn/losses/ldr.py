r"""Label-distributionally robust losses: LDR-KL and its adaptive per-example form ALDR-KL.

The LDR-KL loss is the worst case, over label distributions q penalized by lambda times their
KL divergence to the uniform distribution u, of the q-weighted margin differences d:
max_q sum_k q_k d_k - lambda KL(q || u), whose value is the scaled log-mean-exp below. With
scores s (the logits after the official preprocessing below), label distribution y (one-hot for
a label), margin c and temperature lambda, per example

.. math::

   d_k = c\,(1 - y_k) + s_k - \sum_j y_j s_j, \qquad
   \ell_{\mathrm{LDR}} = \lambda \log \frac{1}{K} \sum_{k=1}^K e^{d_k / \lambda}.

Preprocessing (official): LDR-KL (`LDRLoss_V1`) uses s = K softplus(f) / sum_j softplus(f_j);
ALDR-KL (`ALDRLoss_V1`) uses s = K f / ||f||_1 by default and the softplus form for CIFAR-100.
Both are `softplus` and `normalize` options here; without either, c = 0 and lambda = 1 give
the cross-entropy minus log K.

ALDR-KL gives every training example its own lambda_i, set from the example's current
predictions (as the official code computes it):

.. math::

   p &= \operatorname{normalize}_1\bigl(\operatorname{softmax}(s / \lambda_i^{\text{old}})
        + 10^{-5}\bigr), \qquad
   \mathrm{KL}_i = \sum_k p_k \log(K p_k), \\
   \lambda_i &= \lambda_0 - \lambda_0\, \mathrm{KL}_i / (\alpha \log K) \quad
        (\text{stored detached}), \\
   \ell_{\mathrm{ALDR}} &= \lambda_i \log \frac{1}{K} \sum_k e^{d_k / \lambda_i}
        - \frac{\alpha \log K}{2 \lambda_0} (\lambda_i - \lambda_0)^2 .

Since 0 <= KL_i < log K, lambda_i lies in (lambda_0 (1 - 1/alpha), lambda_0]. lambda_i carries
no gradient, so the last term is a constant offset of the reported loss.

Evaluation: the log-mean-exp is max-shifted (as in the official code) and formed as
m + log1p(mean(expm1(x - m))), which keeps small losses precise; the softplus
normalisation is evaluated in log space (s = K softmax(log softplus(f))), which is the same
number but stays finite where the official softplus(f) / mean(softplus(f)) is 0 / 0 (every
logit of a row below about -88 in float32, -745 in float64).

References:
  Dixian Zhu, Yiming Ying and Tianbao Yang, "Label Distributionally Robust Losses for
  Multi-class Classification: Consistency, Robustness and Adaptivity"
  (https://arxiv.org/abs/2112.14869), ICML 2023. Official code:
  https://github.com/Optimization-AI/ICML2023_LDR (`loss.py`: `LDRLoss_V1`, `ALDRLoss_V1`;
  `experiment.py`: margin 0.1, lambda 10, alpha 2).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxlearn import registry
from jaxlearn._checks import check_bool, check_range
from jaxlearn.losses._common import check_reduction, check_weights, float_array, nan_unless
from jaxlearn.losses._common import labels_or_targets, probability_rows, reduce_loss
from jaxlearn.losses.buffers import _check_state, _state_dtype

__all__ = ["ldr_kl_loss", "aldr_kl_loss", "ldr_scores"]

SMOOTHING = 1e-5  # added to ALDR-KL's softmax before the KL (official)


def _log_softplus(x: jax.Array) -> jax.Array:
  """log(softplus(x)), finite for every finite x (x itself below -30, where they agree)."""
  low = x < -30
  safe = jnp.where(low, 0.0, x)
  return jnp.where(low, x, jnp.log(jax.nn.softplus(safe)))


def _scores(f: jax.Array, softplus: bool, normalize: bool) -> jax.Array:
  """The official preprocessing of the logits f (class axis last)."""
  num_classes = f.shape[-1]
  if softplus and normalize:  # K softplus(f) / sum softplus(f), in log space
    return num_classes * jax.nn.softmax(_log_softplus(f), axis=-1)
  s = jax.nn.softplus(f) if softplus else f
  if normalize:  # divided by ||s||_1 / K
    s = s / (jnp.sum(jnp.abs(s), axis=-1, keepdims=True) / num_classes)
  return s


def _log_mean_exp_margin(s, y, margin, lam):
  """lambda log mean_k exp(d_k / lambda), with d_k = c (1 - y_k) + s_k - <y, s>.

  `lam` is a scalar or has the batch shape (one lambda per example).
  """
  d = margin * (1 - y) + s - jnp.sum(y * s, axis=-1, keepdims=True)
  x = d / lam[..., None]
  # log mean exp(x) = m + log1p(mean(expm1(x - m))), m = max x: the same max shift as the
  # official code, but with no log K subtracted from a log-sum-exp near log K, so the loss
  # keeps its relative precision when it is small (margins small against lambda).
  top = jax.lax.stop_gradient(jnp.max(x, axis=-1))
  return lam * (top + jnp.log1p(jnp.mean(jnp.expm1(x - top[..., None]), axis=-1)))


def ldr_scores(logits: jax.Array, *, softplus: bool = True, normalize: bool = True) -> jax.Array:
  r"""The scores s the LDR losses compare: the official preprocessing of the logits.

  .. math::

     g = \operatorname{softplus}(f) \text{ (if softplus, else } f), \qquad
     s = g / (\lVert g \rVert_1 / K) \text{ (if normalize, else } g).

  With both options this is `LDRLoss_V1`'s softplus(f) / mean(softplus(f)), evaluated as
  K softmax(log softplus(f)) (finite for all finite logits). Without softplus, a row of logits
  that are all 0 has no normalisation (NaN, as in the official code).

  Args:
    logits: floating-point array of shape (..., num_classes).
    softplus: apply softplus first (static).
    normalize: divide by the mean absolute score (static).

  Returns:
    Scores of the shape of `logits`, in its dtype (computed in at least float32).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import ldr_scores
    >>> ldr_scores(jnp.array([[1.0, -3.0, 2.0]]), softplus=False)  # mean |s| = 1
    Array([[ 0.5, -1.5,  1. ]], dtype=float32)
  """
  logits = float_array(logits, "logits")
  check_bool("softplus", softplus)
  check_bool("normalize", normalize)
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  return _scores(logits.astype(compute), bool(softplus), bool(normalize)).astype(logits.dtype)


def ldr_kl_loss(
    logits: jax.Array, labels: jax.Array, *, margin: Any = 0.1, lam: Any = 10.0,
    softplus: bool = True, normalize: bool = True, weights: jax.Array | None = None,
    reduction: str = "none",
) -> jax.Array:
  r"""The LDR-KL loss (official `LDRLoss_V1`), per example.

  .. math::

     \ell = \lambda \log \frac{1}{K} \sum_k \exp\Bigl(\frac{c\,(1 - y_k) + s_k
        - \sum_j y_j s_j}{\lambda}\Bigr), \qquad s = \mathrm{ldr\_scores}(f).

  With `softplus=False, normalize=False, margin=0, lam=1` it is the softmax cross-entropy minus
  log K.

  Args:
    logits: floating-point array of shape (..., num_classes).
    labels: integer class indices of shape (...), or probability targets (one-hot, smoothed or
      soft) of the shape of `logits` (the official code takes one-hot rows).
    margin: the margin c, >= 0 (official experiments: 0.1; class default 2.0). Traceable.
    lam: the temperature lambda, > 0 (official experiments: 10). Traceable.
    softplus: apply softplus to the logits (official: yes). Static.
    normalize: divide the scores by their mean absolute value (official: yes). Static.
    weights: optional per-example weights or boolean mask of shape (...), finite and >= 0.
    reduction: "none" (default), "sum" or "mean" (the official batch mean; weighted:
      sum(w * loss) / sum(w)).

  Returns:
    Losses of shape (...) for "none", else a scalar, in the dtype of `logits` (computed in at
    least float32).

  Raises:
    ValueError: for non-float logits, mismatched shapes, concrete labels out of range, concrete
      targets that are not probability rows, margin < 0, lam <= 0, invalid concrete weights or
      an unknown reduction. Under `jit` an invalid label or target row makes that example's loss
      and gradient NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import ldr_kl_loss
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> ldr_kl_loss(logits, jnp.array([0, 2]), margin=0.1, lam=10.0).shape
    (2,)
  """
  logits = float_array(logits, "logits")
  labels, is_labels, tolerance = labels_or_targets(labels, logits)
  check_range("margin", margin, 0.0, None)
  check_range("lam", lam, 0.0, None, low_inclusive=False)
  check_bool("softplus", softplus)
  check_bool("normalize", normalize)
  weights = check_weights(weights, logits.shape[:-1])
  return _ldr_kernel(logits, labels, margin, lam, weights, bool(softplus), bool(normalize),
                     is_labels, tolerance, check_reduction(reduction))


@functools.partial(jax.jit, static_argnames=(
    "softplus", "normalize", "is_labels", "tolerance", "reduction"))
def _ldr_kernel(logits, labels, margin, lam, weights, softplus, normalize, is_labels, tolerance,
                reduction):
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  y, valid = probability_rows(labels, is_labels, tolerance, logits.shape[-1], compute)
  s = _scores(logits.astype(compute), softplus, normalize)
  losses = _log_mean_exp_margin(s, y, jnp.asarray(margin, compute), jnp.asarray(lam, compute))
  losses = losses * nan_unless(valid, compute)
  return reduce_loss(losses, weights, reduction).astype(logits.dtype)


def aldr_kl_loss(
    logits: jax.Array, labels: jax.Array, lambdas: jax.Array, *, margin: Any = 0.1,
    lam0: Any = 10.0, alpha: Any = 2.0, softplus: bool = False, normalize: bool = True,
    weights: jax.Array | None = None, reduction: str = "none",
) -> tuple[jax.Array, jax.Array]:
  r"""The ALDR-KL loss (official `ALDRLoss_V1`) and the batch's new per-example lambdas.

  .. math::

     p = \operatorname{normalize}_1(\operatorname{softmax}(s / \lambda^{\text{old}})
        + 10^{-5}), \quad
     \lambda = \lambda_0 \Bigl(1 - \frac{\sum_k p_k \log(K p_k)}{\alpha \log K}\Bigr), \quad
     \ell = \lambda \log \frac{1}{K} \sum_k e^{d_k / \lambda}
        - \frac{\alpha \log K}{2 \lambda_0} (\lambda - \lambda_0)^2,

  with d_k as in `ldr_kl_loss`. Keep a buffer of every training example's lambda, initialised
  to `lam0`, pass the batch's entries and write the returned ones back
  (`jaxlearn.losses.buffered_classifier`). The new lambdas are detached, as in the official
  code: the gradient flows through the scores only.

  Args:
    logits: floating-point array of shape (..., num_classes).
    labels: integer class indices of shape (...), or probability targets of the shape of
      `logits`.
    lambdas: the batch's previous lambdas, shape (...), > 0 (initially `lam0`); float32 or
      wider recommended (updated in at least float32, returned in this dtype).
    margin: the margin c, >= 0 (official experiments: 0.1). Traceable.
    lam0: the reference lambda_0, > 0 (official experiments: 10). Traceable.
    alpha: the strength alpha of the KL constraint, > 1 (official experiments: 2), which keeps
      every lambda in (lam0 (1 - 1/alpha), lam0]. Traceable.
    softplus: apply softplus to the logits (official: only for CIFAR-100). Static.
    normalize: divide the scores by their mean absolute value (official: yes). Static.
    weights: optional per-example weights or boolean mask of shape (...), finite and >= 0. They
      weight the losses only: every lambda is updated.
    reduction: "none" (default), "sum" or "mean" (the official batch mean).

  Returns:
    `(losses, new_lambdas)`: losses of shape (...) for "none", else a scalar, in the dtype of
    `logits`; the new lambdas in the dtype of `lambdas`.

  Raises:
    ValueError: as `ldr_kl_loss`, and for lambdas of another shape or not finite and > 0
      (concrete), lam0 <= 0 or alpha <= 1.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import aldr_kl_loss
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> losses, lambdas = aldr_kl_loss(logits, jnp.array([0, 2]), jnp.full(2, 10.0))
    >>> bool(jnp.all((lambdas > 5.0) & (lambdas <= 10.0)))  # in (lam0 (1 - 1/alpha), lam0]
    True
  """
  logits = float_array(logits, "logits")
  labels, is_labels, tolerance = labels_or_targets(labels, logits)
  lambdas = _check_state(lambdas, logits.shape[:-1], "lambdas", positive=True)
  check_range("margin", margin, 0.0, None)
  check_range("lam0", lam0, 0.0, None, low_inclusive=False)
  check_range("alpha", alpha, 1.0, None, low_inclusive=False)
  check_bool("softplus", softplus)
  check_bool("normalize", normalize)
  weights = check_weights(weights, logits.shape[:-1])
  return _aldr_kernel(logits, labels, lambdas, margin, lam0, alpha, weights, bool(softplus),
                      bool(normalize), is_labels, tolerance, check_reduction(reduction))


@functools.partial(jax.jit, static_argnames=(
    "softplus", "normalize", "is_labels", "tolerance", "reduction"))
def _aldr_kernel(logits, labels, lambdas, margin, lam0, alpha, weights, softplus, normalize,
                 is_labels, tolerance, reduction):
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  state_dtype = jnp.promote_types(_state_dtype(lambdas), compute)
  num_classes = logits.shape[-1]
  y, valid = probability_rows(labels, is_labels, tolerance, num_classes, compute)
  s = _scores(logits.astype(compute), softplus, normalize)

  # The new lambdas, from the detached scores and the old lambdas.
  lam0 = jnp.asarray(lam0, state_dtype)
  log_k = math.log(num_classes)
  old = lambdas.astype(state_dtype)[..., None]
  p = jax.nn.softmax(jax.lax.stop_gradient(s).astype(state_dtype) / old, axis=-1) + SMOOTHING
  p = p / jnp.sum(p, axis=-1, keepdims=True)
  kl = jnp.sum(p * jnp.log(num_classes * p), axis=-1)
  new = lam0 - lam0 * kl / (jnp.asarray(alpha, state_dtype) * log_k)
  extra = -0.5 * alpha * log_k / lam0 * (new - lam0) ** 2

  lam = jax.lax.stop_gradient(new).astype(compute)
  losses = _log_mean_exp_margin(s, y, jnp.asarray(margin, compute), lam) \
      + jax.lax.stop_gradient(extra).astype(compute)
  losses = losses * nan_unless(valid, compute)
  reduced = reduce_loss(losses, weights, reduction).astype(logits.dtype)
  return reduced, jax.lax.stop_gradient(new).astype(lambdas.dtype)


RECORD = registry.record(
    slug="ldr_losses",
    kind="loss",
    title=("Label Distributionally Robust Losses for Multi-class Classification: Consistency, "
           "Robustness and Adaptivity"),
    reference="arXiv:2112.14869",
    experiment="ldr_label_noise",
    also=("jaxlearn.losses.buffered_classifier",),
    notes=(
        "Follows the official LDRLoss_V1 (softplus, then divided by the mean; defaults margin "
        "0.1 and lambda 10 of experiment.py, the class defaults are 2.0 and 1.0) and "
        "ALDRLoss_V1 (no softplus by default, divided by ||f||_1 / K; per-example lambdas "
        "stored detached, the extra term a constant). softplus(f) / mean(softplus(f)) is "
        "evaluated as K softmax(log softplus(f)): the same value, finite where the official "
        "form is 0 / 0 (every logit of a row below ~-88 in float32); no eps is added. Without "
        "softplus, a row of all-zero logits has no normalisation and gives NaN, as officially. "
        "alpha must be > 1 (the official comment; the class default 1 allows lambda -> 0). "
        "Default reduction 'none'; the official value is the batch mean. The per-example "
        "lambdas live in the caller's buffer (buffered_classifier with fit). Also accepts "
        "integer labels and soft targets (the official code takes one-hot rows)."
    ),
)
