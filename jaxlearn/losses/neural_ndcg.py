r"""NeuralNDCG: NDCG with the sort relaxed by NeuralSort and Sinkhorn scaling.

Paper: Przemysław Pobrotyn and Radosław Białobrzeski, "NeuralNDCG: Direct Optimisation of a
Ranking Metric via Differentiable Relaxation of Sorting", arXiv:2102.07831 (2021). Official code:
github.com/allegro/allRank, `allrank/models/losses/neuralNDCG.py` and `loss_utils.py`
(`deterministic_neural_sort`, `sinkhorn_scaling`); the exact metric of `allrank/models/metrics.py`.

A slate is a row of item scores :math:`s` (the model's) and relevance labels :math:`y`; label
:math:`-1` marks padding. Over the :math:`m` real items of a slate, NeuralSort (Grover et al.,
2019) relaxes the permutation matrix that sorts the scores in decreasing order into the row-wise
softmax

.. math::

    \hat P_{ij} = \operatorname{softmax}_j\Big(\frac{(m + 1 - 2i)\, s_j
        - \sum_k |s_j - s_k|}{\tau}\Big), \qquad i, j = 1..m,

and Sinkhorn scaling (columns, then rows, alternately) makes it doubly stochastic: at most
`max_iter` (50) rounds, stopping once every row and column sum is within `tol` (1e-6) of 1, sums
clamped below at 1e-10. With gains :math:`g(y) = 2^y - 1` (or :math:`y`) and discounts
:math:`d_i = 1 / \log_2(i + 1)`, truncated at rank :math:`k`,

.. math::

    \mathrm{NeuralNDCG@k} = \frac{1}{\mathrm{IDCG@k}} \sum_{i \le k} d_i\, (\hat P g(y))_i,
    \qquad
    \mathrm{NeuralNDCG^T@k} = \frac{1}{\mathrm{IDCG@k}} \sum_j g(y_j)\, (\hat P^\top d)_j ,

where IDCG@k is the DCG of the ideal order of the true labels. The loss of a slate is
:math:`-\mathrm{NeuralNDCG}` (0 for a slate whose IDCG is 0: no relevant item); the mean runs over
the slates with IDCG > 0, as in allRank.

Reverse-mode differentiation cannot go through `lax.while_loop`: the early-stopping Sinkhorn loop
is a `lax.scan` of `max_iter` rounds in which a slate's matrix stops changing once it has
converged (the same result as breaking out of the loop).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn import registry
from jaxlearn._checks import check_non_negative, check_positive, check_positive_int, check_bool
from jaxlearn.losses._common import (
    check_reduction,
    check_weights,
    float_array,
    nan_unless,
    reduce_loss,
)

__all__ = ["neural_ndcg", "neural_ndcg_transposed", "neural_sort", "ndcg"]

PADDING = -1
_CLAMP = 1e-10  # allRank's DEFAULT_EPS: the floor of Sinkhorn's sums and IDCG's guard.


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _check_slates(scores: Any, labels: Any):
  scores = float_array(scores, "scores")
  if scores.ndim != 2 or scores.shape[1] < 1:
    raise ValueError(
        f"scores must have shape (num_slates, slate_length), got {scores.shape}"
    )
  labels = labels if _is_traced(labels) or hasattr(labels, "dtype") else np.asarray(labels)
  if not (jnp.issubdtype(labels.dtype, jnp.floating) or jnp.issubdtype(labels.dtype, jnp.integer)):
    raise ValueError(f"labels must be real relevance grades, got dtype {labels.dtype}")
  if labels.shape != scores.shape:
    raise ValueError(f"labels must have the shape of scores {scores.shape}, got {labels.shape}")
  if not _is_traced(labels) and labels.size:
    values = np.asarray(labels, np.float64)
    bad = ~(np.isfinite(values) & ((values >= 0) | (values == PADDING)))
    if bad.any():
      raise ValueError(
          "labels must be relevance grades >= 0, or -1 for padding; got "
          f"{values[bad][:3].tolist()}"
      )
  return scores, jnp.asarray(labels)


def _check_k(k: Any, slate_length: int):
  if k is None:
    return slate_length
  if _is_traced(k):
    return k
  check_positive_int("k", k)
  return int(k)


def _label_validity(labels: jax.Array) -> jax.Array:
  """Per slate: whether every label is a finite grade >= 0 or the padding value (traceable)."""
  ok = jnp.isfinite(labels) & ((labels >= 0) | (labels == PADDING))
  return jnp.all(ok, axis=-1)


def _gains(labels: jax.Array, valid: jax.Array, powered: bool, dtype) -> jax.Array:
  y = jnp.where(valid, labels.astype(dtype), 0)
  return jnp.exp2(y) - 1 if powered else y


def _discounts(n: int, k, dtype) -> jax.Array:
  ranks = jnp.arange(n)
  return jnp.where(ranks < k, 1 / jnp.log2(ranks.astype(dtype) + 2), 0)


def _ideal_dcg(gains: jax.Array, discounts: jax.Array) -> jax.Array:
  return jnp.sum(-jnp.sort(-gains, axis=-1) * discounts, axis=-1)


def _neural_sort(scores, valid, temperature):
  """NeuralSort over the valid items of each slate; padded rows and columns are 0.

  Row i (rank i) of a slate with m valid items uses the scale m - 1 - 2i (0-based i); rows
  i >= m are padding whichever items are padded.
  """
  s = jnp.where(valid, scores, 0)
  n = scores.shape[-1]
  m = jnp.sum(valid, axis=-1, keepdims=True)  # (B, 1)
  spread = jnp.sum(jnp.where(valid[:, None, :], jnp.abs(s[:, :, None] - s[:, None, :]), 0), -1)
  rank = jnp.arange(n)
  scale = (m - 1 - 2 * rank).astype(s.dtype)  # (B, n)
  row_valid = rank[None, :] < m  # (B, n)
  logits = (scale[:, :, None] * s[:, None, :] - spread[:, None, :]) / temperature
  logits = jnp.where(valid[:, None, :], logits, -jnp.inf)
  logits = jnp.where(row_valid[:, :, None], logits, 0)
  p = jax.nn.softmax(logits, axis=-1)
  return jnp.where(row_valid[:, :, None] & valid[:, None, :], p, 0), row_valid


def _guarded(total, valid):
  return jnp.where(valid, jnp.maximum(total, _CLAMP), 1)


def _sinkhorn(p, row_valid, col_valid, tol, max_iter):
  """allRank's Sinkhorn scaling with its early stop, per slate, as a fixed-length scan."""

  def round_(carry, _):
    mat, done = carry
    # Padded rows and columns are 0 and divided by 1: allRank's clamp would multiply their
    # (zero) entries' gradients by 1e10 per round, overflowing to NaN.
    new = mat / _guarded(jnp.sum(mat, axis=1, keepdims=True), col_valid[:, None, :])  # columns
    new = new / _guarded(jnp.sum(new, axis=2, keepdims=True), row_valid[:, :, None])  # rows
    row_error = jnp.max(jnp.where(row_valid, jnp.abs(jnp.sum(new, 2) - 1), 0), axis=-1)
    col_error = jnp.max(jnp.where(col_valid, jnp.abs(jnp.sum(new, 1) - 1), 0), axis=-1)
    mat = jnp.where(done[:, None, None], mat, new)
    return (mat, done | ((row_error < tol) & (col_error < tol))), None

  done = jnp.zeros(p.shape[:1], bool)
  (p, _), _ = jax.lax.scan(round_, (p, done), None, length=max_iter)
  return p


def neural_sort(
    scores: jax.Array, valid: jax.Array | None = None, *, temperature: float = 1.0
) -> jax.Array:
  r"""The deterministic NeuralSort relaxation of the sorting permutation (decreasing order).

  .. math::

      \hat P_{ij} = \operatorname{softmax}_j\Big(\frac{(m + 1 - 2i)\, s_j
          - \sum_k |s_j - s_k|}{\tau}\Big),

  over the :math:`m` valid items of each slate; row :math:`i` is rank :math:`i` (1-based here),
  and padded items (columns) and ranks :math:`> m` (rows) are 0. As :math:`\tau \to 0` the rows
  become the one-hot rows of the sorting permutation.

  Args:
    scores: shape (num_slates, slate_length).
    valid: None (every item is real) or a boolean mask of the shape of `scores`.
    temperature: :math:`\tau > 0`.

  Returns:
    Shape (num_slates, slate_length, slate_length), in the dtype of `scores`: row-stochastic
    over the valid items (not yet Sinkhorn-scaled).

  References:
    Aditya Grover, Eric Wang, Aaron Zweig and Stefano Ermon, "Stochastic Optimization of Sorting
    Networks via Continuous Relaxations" (https://arxiv.org/abs/1903.08850), ICLR 2019; the
    masked form of allRank's `deterministic_neural_sort` (github.com/allegro/allRank).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import neural_sort
    >>> p = neural_sort(jnp.array([[0.0, 3.0, 1.0]]), temperature=0.01)
    >>> p[0].round(3)
    Array([[0., 1., 0.],
           [0., 0., 1.],
           [1., 0., 0.]], dtype=float32)
  """
  scores = float_array(scores, "scores")
  if scores.ndim != 2:
    raise ValueError(f"scores must have shape (num_slates, slate_length), got {scores.shape}")
  if valid is None:
    valid = np.ones(scores.shape, bool)
  valid = jnp.asarray(valid)
  if valid.dtype != jnp.bool_ or valid.shape != scores.shape:
    raise ValueError(
        f"valid must be a boolean mask of shape {scores.shape}, got {valid.dtype} {valid.shape}"
    )
  check_positive("temperature", temperature)
  return _neural_sort_kernel(scores, valid, temperature)


@jax.jit
def _neural_sort_kernel(scores, valid, temperature):
  compute = jnp.promote_types(scores.dtype, jnp.float32)
  p, _ = _neural_sort(scores.astype(compute), valid, temperature)
  return p.astype(scores.dtype)


def _check_options(temperature, tol, max_iter, powered_relevancies, weights, reduction, shape):
  check_positive("temperature", temperature)
  check_non_negative("tol", tol)
  check_positive_int("max_iter", max_iter)
  check_bool("powered_relevancies", powered_relevancies)
  check_reduction(reduction)
  return check_weights(weights, shape[:1])


def neural_ndcg(
    scores: jax.Array,
    labels: jax.Array,
    *,
    k: int | None = None,
    temperature: float = 1.0,
    powered_relevancies: bool = True,
    max_iter: int = 50,
    tol: float = 1e-6,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""The NeuralNDCG loss: minus the NDCG@k of the NeuralSort + Sinkhorn relaxed sort.

  .. math::

      \ell = -\frac{1}{\mathrm{IDCG@k}} \sum_{i \le k} \frac{(\hat P g(y))_i}{\log_2(i + 1)},

  with :math:`\hat P` the Sinkhorn-scaled NeuralSort matrix of the scores (see the module
  docstring), :math:`g(y) = 2^y - 1` (or :math:`y` without `powered_relevancies`).

  Args:
    scores: the model's scores, shape (num_slates, slate_length); padded items' scores are
      ignored (no gradient).
    labels: relevance grades >= 0 of the same shape, -1 for padding (anywhere in the slate).
    k: truncation rank (None: the slate length); an integer >= 1, traceable.
    temperature: NeuralSort's :math:`\tau > 0` (allRank's default 1).
    powered_relevancies: gains :math:`2^y - 1` (default) or :math:`y`.
    max_iter: Sinkhorn rounds (static: it fixes the loop length).
    tol: Sinkhorn's stopping tolerance on the row and column sums.
    weights: None, or per-slate weights / a boolean mask, shape (num_slates,).
    reduction: "mean" (default: over slates with IDCG > 0, weighted; 0 if there are none),
      "sum" or "none" (per slate; 0 for a slate with IDCG = 0).

  Returns:
    The loss in the dtype of `scores`, computed in at least float32. Concrete invalid labels
    raise; under `jit` a slate with an invalid label (negative other than -1, NaN) has a NaN
    loss.

  References:
    Przemysław Pobrotyn and Radosław Białobrzeski, "NeuralNDCG: Direct Optimisation of a Ranking
    Metric via Differentiable Relaxation of Sorting" (https://arxiv.org/abs/2102.07831), 2021.
    Official code: github.com/allegro/allRank (`allrank/models/losses/neuralNDCG.py`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import neural_ndcg
    >>> labels = jnp.array([[2.0, 0.0, 1.0, -1.0]])
    >>> good = neural_ndcg(jnp.array([[3.0, 0.0, 1.0, 0.0]]), labels, temperature=0.1)
    >>> bad = neural_ndcg(jnp.array([[0.0, 3.0, 1.0, 0.0]]), labels, temperature=0.1)
    >>> bool(good < bad), round(float(good), 4)
    (True, -1.0)
  """
  scores, labels = _check_slates(scores, labels)
  weights = _check_options(
      temperature, tol, max_iter, powered_relevancies, weights, reduction, scores.shape
  )
  k = _check_k(k, scores.shape[1])
  return _ndcg_loss_kernel(scores, labels, k, temperature, tol, weights, max_iter=max_iter,
                           powered=powered_relevancies, transposed=False, reduction=reduction)


def neural_ndcg_transposed(
    scores: jax.Array,
    labels: jax.Array,
    *,
    k: int | None = None,
    temperature: float = 1.0,
    powered_relevancies: bool = True,
    max_iter: int = 50,
    tol: float = 1e-6,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""The transposed NeuralNDCG loss: true gains times the expected discounts.

  .. math::

      \ell = -\frac{1}{\mathrm{IDCG@k}} \sum_j g(y_j)\, (\hat P^\top d)_j,
      \qquad d_i = \frac{[i \le k]}{\log_2(i + 1)} .

  Arguments, defaults and returns as for `neural_ndcg`. One difference from allRank's
  `neuralNDCG_transposed`: there the IDCG always uses the powered gains :math:`2^y - 1`, also
  with ``powered_relevancies=False``; here the IDCG uses the same gains as the numerator (so a
  perfectly sorted slate has NeuralNDCG 1 in both modes).

  References:
    Przemysław Pobrotyn and Radosław Białobrzeski, "NeuralNDCG: Direct Optimisation of a Ranking
    Metric via Differentiable Relaxation of Sorting" (https://arxiv.org/abs/2102.07831), 2021.
    Official code: github.com/allegro/allRank (`allrank/models/losses/neuralNDCG.py`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import neural_ndcg_transposed
    >>> labels = jnp.array([[2.0, 0.0, 1.0]])
    >>> loss = neural_ndcg_transposed(jnp.array([[3.0, 0.0, 1.0]]), labels, temperature=0.1)
    >>> round(float(loss), 4)
    -1.0
  """
  scores, labels = _check_slates(scores, labels)
  weights = _check_options(
      temperature, tol, max_iter, powered_relevancies, weights, reduction, scores.shape
  )
  k = _check_k(k, scores.shape[1])
  return _ndcg_loss_kernel(scores, labels, k, temperature, tol, weights, max_iter=max_iter,
                           powered=powered_relevancies, transposed=True, reduction=reduction)


@functools.partial(jax.jit, static_argnames=("max_iter", "powered", "transposed", "reduction"))
def _ndcg_loss_kernel(scores, labels, k, temperature, tol, weights, *, max_iter, powered,
                      transposed, reduction):
  compute = jnp.promote_types(scores.dtype, jnp.float32)
  s = scores.astype(compute)
  valid = labels != PADDING
  p, row_valid = _neural_sort(s, valid, temperature)
  p = _sinkhorn(p, row_valid, valid, tol, max_iter)
  gains = _gains(labels, valid, powered, compute)
  discounts = _discounts(s.shape[-1], k, compute)
  if transposed:
    dcg = jnp.sum(gains * jnp.einsum("bij,i->bj", p, discounts), axis=-1)
  else:
    dcg = jnp.sum(jnp.einsum("bij,bj->bi", p, gains) * discounts, axis=-1)
  idcg = _ideal_dcg(gains, discounts)
  has_relevant = idcg != 0
  value = jnp.where(has_relevant, dcg / (idcg + _CLAMP), 0)
  losses = -value * nan_unless(_label_validity(labels), compute)
  if reduction != "mean":
    return reduce_loss(losses.astype(scores.dtype), weights, reduction)
  total = reduce_loss(losses, weights, "sum")
  kept = has_relevant.astype(compute)
  count = jnp.sum(kept if weights is None else kept * weights.astype(compute))
  return (total / jnp.where(count > 0, count, 1)).astype(scores.dtype)


def ndcg(
    scores: jax.Array,
    labels: jax.Array,
    *,
    k: int | None = None,
    powered_relevancies: bool = True,
) -> jax.Array:
  r"""The exact NDCG@k of each slate (a metric: not differentiable).

  Items are ranked by decreasing score (ties by position, first first; padding last),

  .. math::

      \mathrm{NDCG@k} = \frac{\sum_{i \le k} g(y_{\pi(i)}) / \log_2(i + 1)}{\mathrm{IDCG@k}},

  :math:`g(y) = 2^y - 1` (or :math:`y`). A slate without a relevant item (IDCG = 0) gets 1, as in
  allRank's `ndcg` metric (its `filler_value`).

  Args:
    scores: shape (num_slates, slate_length).
    labels: relevance grades >= 0, -1 for padding, of the same shape.
    k: truncation rank (None: the slate length).
    powered_relevancies: gains :math:`2^y - 1` (default) or :math:`y`.

  Returns:
    Shape (num_slates,), float32 (or float64 for float64 scores).

  References:
    Kalervo Järvelin and Jaana Kekäläinen, "Cumulated Gain-Based Evaluation of IR Techniques",
    ACM TOIS 2002; as computed by allRank (`allrank/models/metrics.py`, github.com/allegro/allRank)
    for arXiv:2102.07831.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.losses import ndcg
    >>> ndcg(jnp.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), jnp.array([[1.0, 0.0, 0.0]] * 2))
    Array([1. , 0.5], dtype=float32)
  """
  scores, labels = _check_slates(scores, labels)
  check_bool("powered_relevancies", powered_relevancies)
  k = _check_k(k, scores.shape[1])
  return _ndcg_kernel(scores, labels, k, powered=powered_relevancies)


@functools.partial(jax.jit, static_argnames="powered")
def _ndcg_kernel(scores, labels, k, *, powered):
  compute = jnp.promote_types(scores.dtype, jnp.float32)
  valid = labels != PADDING
  gains = _gains(labels, valid, powered, compute)
  order = jnp.argsort(jnp.where(valid, -scores.astype(compute), jnp.inf), axis=-1, stable=True)
  discounts = _discounts(scores.shape[-1], k, compute)
  dcg = jnp.sum(jnp.take_along_axis(gains, order, axis=-1) * discounts, axis=-1)
  idcg = _ideal_dcg(gains, discounts)
  value = jnp.where(idcg > 0, dcg / jnp.where(idcg > 0, idcg, 1), 1)
  return value * nan_unless(_label_validity(labels), compute)


RECORD = registry.record(
    slug="neural_ndcg",
    kind="loss",
    title=(
        "NeuralNDCG: Direct Optimisation of a Ranking Metric via Differentiable Relaxation of "
        "Sorting"
    ),
    reference="arXiv:2102.07831",
    experiment="neural_ndcg_ranking",
    notes=(
        "Deterministic NeuralNDCG and its transposed variant, transcribed from allRank "
        "(neuralNDCG.py, loss_utils.py) and checked against allRank's numbers. Sinkhorn's early "
        "stop is a fixed-length lax.scan of max_iter rounds in which a slate freezes once its "
        "row and column sums are within tol; allRank stops every slate of the batch when the "
        "worst one has converged, so per-slate values differ by O(tol). Padding may sit "
        "anywhere in a slate (rank rows beyond the number of real items are padding); allRank "
        "masks rank row i when item i is padded, which is only right when padding comes last "
        "(its data loader's layout, where both agree; tested). The transposed variant's IDCG "
        "uses the numerator's gains, where allRank's always uses 2^y - 1 (tested). The "
        "stochastic (Gumbel-perturbed) variant is not implemented. Per-slate loss is -NDCG (0 "
        "for slates with IDCG = 0), the mean runs over slates with IDCG > 0 as in allRank."
    ),
)
