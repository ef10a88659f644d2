r"""EnsLoss: random calibrated loss-derivatives for binary classification (a surrogate, not a loss).

Paper: Ben Dai, "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in
Classification", arXiv:2409.00908 (ICML 2025). Official code: github.com/statmlben/ensLoss
(`losses.py`, `ensLoss.forward`; `train.py`).

A convex, classification-calibrated margin loss :math:`\phi(s)` has a derivative
:math:`\phi'(s)` that is non-decreasing with :math:`\phi'(0) < 0`. EnsLoss never writes
:math:`\phi`: every minibatch it draws random derivative values, makes them "calibrated" and
"convex" by sorting, and trains on a surrogate whose gradient in each margin is that value. With
margins :math:`s_i = (2 y_i - 1) f(x_i)` for labels :math:`y_i \in \{0, 1\}` (official
`ensLoss.forward`):

.. math::

    z_j \sim \mathcal{N}(0, 1), \qquad g_j = -\mathrm{BC}^{-1}_\lambda(z_j), \qquad
    \mathrm{BC}^{-1}_\lambda(z) = \begin{cases} e^z & \lambda = 0 \\
      \max(1 + \lambda z, 0)^{1/\lambda} & \lambda \ne 0, \end{cases}

then :math:`g` is sorted ascending and clipped below at :math:`-1`, and the sorted values are
assigned to the examples in increasing order of margin (the most negative derivative to the
smallest margin: a non-decreasing derivative, i.e. a convex loss). Examples with
:math:`s_i > 1` get :math:`g_i / s_i` (a vanishing, "superlinear" tail), and
:math:`g \leftarrow \mathrm{sg}(g) - 10^{-6}` (strictly negative: calibrated). The surrogate is

.. math::

    \tilde\ell_i = g_i\, s_i, \qquad \frac{\partial \tilde\ell_i}{\partial s_i} = g_i,

and its batch mean is what the official code minimizes (SGD with momentum 0.9; the README's
configurations keep :math:`\lambda = 0` throughout, `ensLoss_per_epochs: -1`).

**The value is not a loss to report**: it is a random number whose gradient is the randomized
calibrated derivative; report the binary cross-entropy or the accuracy instead.

Conventions here (the official code uses CUDA and `torch.sort` over the whole batch): ties in
the margin are broken by the example's position (a stable sort); `weights` (or a boolean mask)
multiply each example's surrogate, and every example of the batch, whatever its weight, takes
part in the ranking and receives a draw, as in the official code: a weight-0 example has no
surrogate and no gradient, but the other examples' coefficients are those of the whole batch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn import _checks, registry
from jaxlearn.losses._common import (
    check_reduction,
    check_weights,
    float_array,
    nan_unless,
    reduce_loss,
)

__all__ = ["ensloss", "ensloss_derivatives"]

#: The official code subtracts this from every derivative (strictly negative: calibrated).
CALIBRATION_SHIFT = 1e-6


def _check_inputs(logits: Any, labels: Any, key: Any):
  logits = float_array(logits, "logits")
  if logits.ndim != 1:
    raise ValueError(
        f"logits must be a 1-D array of scores, one per example (batch,), got shape "
        f"{logits.shape}")
  labels_array = labels if hasattr(labels, "dtype") else np.asarray(labels)
  if not jnp.issubdtype(labels_array.dtype, jnp.integer):
    raise ValueError(f"labels must be integer 0/1 labels, got dtype {labels_array.dtype}")
  if labels_array.shape != logits.shape:
    raise ValueError(
        f"labels must have the shape of logits {logits.shape}, got {labels_array.shape}")
  if not isinstance(labels_array, jax.core.Tracer) and labels_array.size:
    values = np.asarray(labels_array)
    if values.min() < 0 or values.max() > 1:
      raise ValueError(
          f"labels must be in [0, 2) (binary 0/1 labels), got values in "
          f"[{values.min()}, {values.max()}]")
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (
      key.dtype == jnp.uint32 and key.shape == (2,))):
    raise ValueError(f"key must be a PRNG key (jax.random.key or PRNGKey), got {key!r}")
  return logits, jnp.asarray(labels_array), key


def ensloss_derivatives(
    margins: jax.Array,
    key: jax.Array,
    *,
    lam: float = 0.0,
) -> jax.Array:
  r"""The random calibrated derivatives :math:`g_i` EnsLoss assigns to the margins :math:`s_i`.

  Draws :math:`z \sim \mathcal{N}(0, 1)`, :math:`g = \max(\mathrm{sort}(-\mathrm{BC}^{-1}_\lambda
  (z)), -1)` assigned in increasing order of margin (stable for ties), :math:`g_i / s_i` where
  :math:`s_i > 1`, minus 1e-6 (see the module docstring). The result carries no gradient.

  Args:
    margins: 1-D float array of margins :math:`s_i = (2 y_i - 1) f(x_i)`.
    key: the PRNG key of the normal draws.
    lam: the Box-Cox parameter :math:`\lambda`, a real number (default 0: :math:`e^z`); may be
      traced.

  Returns:
    The derivatives, float32 or wider, shape of `margins`; each in :math:`[-1 - 10^{-6},
    -10^{-6}]`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.losses import ensloss_derivatives
    >>> g = ensloss_derivatives(jnp.array([-1.0, 0.5, 0.2]), jax.random.key(0))
    >>> bool(jnp.all(g < 0)), bool(g[0] <= g[2] <= g[1])  # smaller margin, steeper loss
    (True, True)
  """
  margins = float_array(margins, "margins")
  if margins.ndim != 1:
    raise ValueError(f"margins must be 1-D (batch,), got shape {margins.shape}")
  _checks.check_range("lam", lam)
  return _derivatives(margins, key, lam)


@jax.jit
def _derivatives(margins, key, lam):
  compute = jnp.promote_types(margins.dtype, jnp.float32)
  s = jax.lax.stop_gradient(margins.astype(compute))
  # Drawn in float32 whatever the dtype, so float64 and float32 calls share their draws.
  z = jax.random.normal(key, s.shape, jnp.float32).astype(compute)
  lam = jnp.asarray(lam, compute)
  safe_lam = jnp.where(lam == 0, 1.0, lam)
  # For lam < 0, 0 ** (1 / lam) = inf: -inf, clipped to -1 below (as in the official code).
  box_cox_inverse = jnp.where(
      lam == 0, jnp.exp(z), jnp.maximum(1 + safe_lam * z, 0.0) ** (1 / safe_lam))
  draws = jnp.maximum(jnp.sort(-box_cox_inverse), -1.0)
  order = jnp.argsort(s, stable=True)  # increasing margin, ties by position
  g = jnp.zeros_like(s).at[order].set(draws)
  tail = s > 1
  return jnp.where(tail, g / jnp.where(tail, s, 1.0), g) - CALIBRATION_SHIFT


def ensloss(
    logits: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    lam: float = 0.0,
    weights: jax.Array | None = None,
    reduction: str = "none",
) -> jax.Array:
  r"""The EnsLoss surrogate :math:`\mathrm{sg}(g_i)\, s_i` with random calibrated :math:`g_i`.

  .. math::

      s_i = (2 y_i - 1) f_i, \qquad \tilde\ell_i = \mathrm{sg}(g_i)\, s_i, \qquad
      \nabla_{f_i} \tilde\ell_i = (2 y_i - 1)\, g_i,

  with :math:`g` from `ensloss_derivatives` (a fresh draw per call: pass a new `key` every
  step). The official code returns the batch mean (``reduction="mean"``). **The value is a
  surrogate whose gradient is the randomized loss-derivative, not a loss to report or
  compare**: report the binary cross-entropy or accuracy. The superlinear tail divides by the
  stopped margin, so the surrogate of a confident example (:math:`s_i > 1`) is the constant
  :math:`g_i s_i` with gradient :math:`g_i`. Inside `jit`, a label outside {0, 1} makes that
  example's value NaN.

  Args:
    logits: 1-D float array of scores :math:`f(x_i)`, shape (batch,).
    labels: integer 0/1 labels of the shape of `logits`.
    key: the PRNG key of this call's normal draws.
    lam: the Box-Cox parameter (default 0, every published configuration); may be traced.
    weights: optional per-example weights or boolean mask of shape (batch,), finite and >= 0;
      they multiply the surrogate (every example takes part in the ranking: module docstring).
    reduction: "none" (default: per-example surrogates, times the weights), "sum" or "mean"
      (the weighted mean; the official code's choice); see
      `jaxlearn.losses._common.reduce_loss`.

  Returns:
    The surrogate, shape (batch,) for "none", else a scalar, in the dtype of `logits`.

  Raises:
    ValueError: for non-float or non-1-D logits, labels that are not integer 0/1 of the same
      shape, a key that is not a PRNG key, invalid concrete weights, an unknown reduction or a
      non-finite lam.

  References:
    Ben Dai, "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in
    Classification", `arXiv:2409.00908 <https://arxiv.org/abs/2409.00908>`_, ICML 2025.
    Official code: github.com/statmlben/ensLoss.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.losses import ensloss
    >>> f, y = jnp.array([2.0, -0.5, 0.3]), jnp.array([1, 1, 0])
    >>> grad = jax.grad(lambda f: ensloss(f, y, jax.random.key(0), reduction="sum"))(f)
    >>> bool(grad[0] < 0 and grad[1] < 0 and grad[2] > 0)  # every margin pushed up
    True
  """
  logits, labels, key = _check_inputs(logits, labels, key)
  _checks.check_range("lam", lam)
  weights = check_weights(weights, logits.shape)
  return _ensloss_kernel(logits, labels, key, lam, weights, check_reduction(reduction))


@functools.partial(jax.jit, static_argnames=("reduction",))
def _ensloss_kernel(logits, labels, key, lam, weights, reduction):
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  valid_label = (labels == 0) | (labels == 1)
  sign = jnp.where(labels == 1, 1.0, -1.0).astype(compute)
  margins = sign * logits.astype(compute)
  g = _derivatives(margins, key, lam)
  surrogate = jax.lax.stop_gradient(g) * margins * nan_unless(valid_label, compute)
  return reduce_loss(surrogate, weights, reduction).astype(logits.dtype)


RECORD = registry.record(
    slug="ensloss",
    kind="loss",
    title=(
        "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in "
        "Classification"
    ),
    reference="arXiv:2409.00908",
    experiment="ensloss_binary_pairs",
    notes=(
        "Follows the official ensLoss.forward (losses.py): margins (2y - 1) f, z ~ N(0, 1), "
        "g = -BC^{-1}_lambda(z) sorted ascending, clipped at -1, assigned in increasing margin "
        "order, g / s for s > 1 (s stopped), g <- sg(g) - 1e-6, surrogate g * s. The value is a "
        "SURROGATE, not a loss to report. Binary only (1-D scores, 0/1 integer labels); a key "
        "per call. Our conventions: a stable sort (ties by position); weights multiply the "
        "surrogate while every example keeps its rank and draw (the official code ranks the "
        "whole batch); default reduction 'none' (the official code returns the mean). The "
        "official train.py can redraw lambda every `period` epochs, but every published config "
        "keeps lambda = 0; no redraw helper here (pass a traced lam). Traced labels outside "
        "{0, 1} give NaN. Finite at +-1e4 (|g| <= 1 + 1e-6): not exempt. The official forward "
        "hard-codes CUDA; parity is a NumPy transcription with the same normal draws."
    ),
)
