r"""Self-normalizing neural networks: SELU, LeCun-normal initialization and alpha dropout.

Paper: Klambauer, Unterthiner, Mayr and Hochreiter, "Self-Normalizing Neural Networks",
arXiv:1706.02515. Official code: github.com/bioinf-jku/SNNs (TensorFlow `selu`, `dropout_selu`).

The scaled exponential linear unit

.. math::

  \operatorname{selu}(x) = \lambda \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0
  \end{cases},\qquad \lambda = 1.0507009873554805,\ \alpha = 1.6732632423543772,

maps activations of mean 0 and variance 1 to mean 0 and variance 1 when the weights of the
preceding dense layer have mean 0 and variance 1/fan-in (LeCun normal). The pieces are JAX's own:
`jax.nn.selu` (same λ, α; checked in `tests/nn/test_selu.py`) and
`jax.nn.initializers.lecun_normal` (a truncated normal of variance 1/fan-in, as the paper's
`tf.contrib.layers.variance_scaling_initializer(factor=1.0, mode='FAN_IN')`).

Alpha dropout keeps the mean and variance of SELU activations: a dropped unit is set to SELU's
negative saturation value :math:`\alpha' = -\lambda\alpha` rather than 0, then the result is
shifted and scaled by the affine map that restores mean 0 and variance 1. With keep probability
:math:`q = 1 - \text{rate}` and a Bernoulli(q) mask :math:`d`,

.. math::

  y = a\,(d\,x + (1 - d)\,\alpha') + b,\qquad
  a = \bigl(q\,(1 + (1 - q)\,\alpha'^2)\bigr)^{-1/2},\qquad b = -a\,(1 - q)\,\alpha'.

(Official `dropout_selu` with its defaults fixedPointMean = 0, fixedPointVar = 1.) In evaluation
mode, or with rate 0, the layer is the identity.

Randomness follows `nnx.Dropout`: the NNX layer draws its key from ``rngs=`` given at call time
(an `nnx.Rngs`, whose ``rng_collection`` stream is used, an `nnx.RngStream`, or a key used as
is), else from the stream kept at construction; ``deterministic`` (call value, else the
attribute) or ``model.eval()`` turn it off. The Linen layer uses ``rng=`` at call time or
``make_rng(rng_collection)``, like Linen's `Dropout`.

Public API: the constants `SELU_LAMBDA`, `SELU_ALPHA`, the pure functions `alpha_dropout` and
`alpha_dropout_affine` (a, b), the NNX layer `AlphaDropout` and the Linen layer
`LinenAlphaDropout` (exported as `jaxlearn.nn.linen.AlphaDropout`).

References:
  Klambauer, G., Unterthiner, T., Mayr, A. and Hochreiter, S. "Self-Normalizing Neural Networks"
  (https://arxiv.org/abs/1706.02515), NeurIPS 2017. Official code:
  https://github.com/bioinf-jku/SNNs.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive_int, check_range
from jaxlearn.nn._modes import DeterministicMode
from jaxlearn.nn._random import layer_stream, training_key

__all__ = [
    "AlphaDropout",
    "LinenAlphaDropout",
    "alpha_dropout",
    "alpha_dropout_affine",
]

SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


def _check_rate(rate: Any) -> None:
  check_range("rate", rate, 0.0, 1.0, high_inclusive=False)


def alpha_dropout_affine(rate: float) -> tuple[float, float]:
  r"""The affine correction (a, b) of alpha dropout at drop probability `rate`.

  .. math::

    a = \bigl(q\,(1 + (1 - q)\,\alpha'^2)\bigr)^{-1/2},\quad b = -a\,(1 - q)\,\alpha',\quad
    q = 1 - \text{rate},\ \alpha' = -\lambda\alpha.

  Args:
    rate: the drop probability, in [0, 1).

  Returns:
    `(a, b)` as Python floats.

  Example:
    >>> from jaxlearn.nn import alpha_dropout_affine
    >>> a, b = alpha_dropout_affine(0.1)
    >>> round(a, 4), round(b, 4)  # kept units: a·x + b; dropped units: a·α' + b = -1.4577
    (0.9213, 0.162)
  """
  _check_rate(rate)
  q = 1.0 - float(rate)
  saturation = -SELU_LAMBDA * SELU_ALPHA
  a = 1.0 / math.sqrt(q * (1.0 + (1.0 - q) * saturation**2))
  return a, -a * (1.0 - q) * saturation


def alpha_dropout(
    x: jax.Array,
    rate: float,
    key: jax.Array | None,
    *,
    deterministic: bool = False,
    dtype: Any = None,
) -> jax.Array:
  r"""Alpha dropout: dropped units go to :math:`\alpha'`, then :math:`y = a x' + b`.

  Args:
    x: the activations (any shape; statistics-free, element-wise).
    rate: the drop probability, in [0, 1).
    key: the PRNG key of the Bernoulli(1 − rate) keep mask (unused when deterministic or rate 0).
    deterministic: return `x` unchanged (evaluation).
    dtype: the output dtype (default: the dtype of `x`); the affine map runs in >= float32.

  Returns:
    The array, shape of `x`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import alpha_dropout
    >>> x = jax.random.normal(jax.random.key(0), (100_000,))
    >>> y = alpha_dropout(x, 0.2, jax.random.key(1))
    >>> bool(abs(y.mean()) < 0.02), bool(abs(y.var() - 1.0) < 0.02)
    (True, True)
  """
  x = jnp.asarray(x)
  _check_rate(rate)
  dtype = x.dtype if dtype is None else jnp.dtype(dtype)
  if deterministic or float(rate) == 0.0:
    return x.astype(dtype)
  if key is None:
    raise ValueError("alpha_dropout expects a PRNG key in training (deterministic=False)")
  a, b = alpha_dropout_affine(rate)
  return _alpha_dropout(x, key, 1.0 - float(rate), a, b, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _alpha_dropout(x, key, keep, a, b, *, dtype):
  compute = jnp.promote_types(x.dtype, jnp.float32)
  kept = jax.random.bernoulli(key, keep, x.shape)
  dropped = jnp.asarray(-SELU_LAMBDA * SELU_ALPHA, compute)
  y = jnp.where(kept, x.astype(compute), dropped) * a + b
  return y.astype(dtype)


def _check_input(layer: str, x: jax.Array, num_features: int | None) -> None:
  if x.ndim < 1:
    raise ValueError(f"{layer} expects inputs of rank >= 1 (..., features), got shape {x.shape}")
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(
        f"{layer} expects {num_features} features on the last axis, got shape {x.shape}")


class AlphaDropout(DeterministicMode):
  r"""Alpha dropout for SELU networks (arXiv:1706.02515), conventions of `nnx.Dropout`.

  Training: :math:`y = a\,(d\,x + (1 - d)\,\alpha') + b` with a Bernoulli(1 − rate) mask
  :math:`d` (see the module docstring); evaluation: the identity.

  Args:
    rate: the drop probability, in [0, 1).
    num_features: if given, the size the input's last axis must have (a shape check, like the
      other layers'); None accepts any.
    deterministic: evaluation mode; `model.eval()` / `model.train()` set it.
    rng_collection: the name of the noise stream (default ``"dropout"``).
    dtype: the output dtype (default: the input's dtype).
    rngs: an `nnx.Rngs` (its ``rng_collection`` stream is kept, if present), an `nnx.RngStream`
      or None (then pass ``rngs=`` at call time).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.AlphaDropout(0.1, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.zeros((2, 4)))  # every unit is 0·a + b or α'·a + b
    >>> layer.eval()
    >>> layer(jnp.zeros((2, 4))).sum()
    Array(0., dtype=float32)
  """

  def __init__(
      self,
      rate: float,
      *,
      num_features: int | None = None,
      deterministic: bool = False,
      rng_collection: str = "dropout",
      dtype: Any = None,
      rngs: nnx.Rngs | nnx.RngStream | None = None,
  ):
    _check_rate(rate)
    if num_features is not None:
      check_positive_int("num_features", num_features)
    self.rate = rate
    self.num_features = num_features
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    self.dtype = dtype
    self.rngs = layer_stream(rngs, rng_collection)

  def __call__(
      self,
      x: jax.Array,
      *,
      deterministic: bool | None = None,
      rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
  ) -> jax.Array:
    """Applies alpha dropout in training mode, the identity in evaluation mode."""
    x = jnp.asarray(x)
    _check_input("AlphaDropout", x, self.num_features)
    deterministic = self.deterministic_mode(deterministic)
    key = None
    if not deterministic and float(self.rate) > 0.0:
      key = training_key(self.rngs if rngs is None else rngs, self.rng_collection,
                         "AlphaDropout samples its mask in training")
    return alpha_dropout(x, self.rate, key, deterministic=deterministic, dtype=self.dtype)


class LinenAlphaDropout(linen.Module):
  r"""The Linen twin of `AlphaDropout` (exported as `jaxlearn.nn.linen.AlphaDropout`).

  Same numbers given the same key. ``deterministic`` at call time wins over the attribute (None
  means training); the key is ``rng`` if given, else ``make_rng(rng_collection)``.

  Attributes:
    rate: the drop probability, in [0, 1).
    num_features: if given, the size the input's last axis must have.
    deterministic: evaluation mode.
    rng_collection: the name of the noise stream (default ``"dropout"``).
    dtype: the output dtype (default: the input's dtype).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.AlphaDropout(0.1)
    >>> y = layer.apply({}, jnp.zeros((2, 4)), rngs={"dropout": jax.random.key(0)})
    >>> layer.apply({}, jnp.ones((2, 4)), deterministic=True).sum()
    Array(8., dtype=float32)
  """

  rate: float
  num_features: int | None = None
  deterministic: bool | None = None
  rng_collection: str = "dropout"
  dtype: Any = None

  @linen.compact
  def __call__(self, x: jax.Array, *, deterministic: bool | None = None,
               rng: jax.Array | None = None) -> jax.Array:
    """Applies alpha dropout in training mode, the identity in evaluation mode."""
    _check_rate(self.rate)
    x = jnp.asarray(x)
    _check_input("AlphaDropout", x, self.num_features)
    deterministic = bool(self.deterministic) if deterministic is None else deterministic
    key = None
    if not deterministic and float(self.rate) > 0.0:
      key = self.make_rng(self.rng_collection) if rng is None else rng
    return alpha_dropout(x, self.rate, key, deterministic=deterministic, dtype=self.dtype)


RECORD = registry.record(
    slug="selu_self_normalizing",
    kind="layer",
    title="Self-Normalizing Neural Networks",
    reference="arXiv:1706.02515",
    experiment="selu_deep_mlp",
    also=("jax.nn.selu", "jax.nn.initializers.lecun_normal"),
    notes=(
        "SELU and LeCun-normal initialization are JAX's own (jax.nn.selu: lambda, alpha checked "
        "against the paper's constants; lecun_normal is a truncated normal of variance 1/fan-in, "
        "as the official variance_scaling_initializer(factor=1, FAN_IN)). AlphaDropout follows "
        "the official dropout_selu with fixed point (0, 1): dropped units -> -lambda*alpha, then "
        "a*x + b. Eager torch.nn.functional.alpha_dropout has the same a, b (tested); the "
        "decomposition torch._refs.nn.functional.alpha_dropout (used by torch.compile) flips the "
        "sign of b (tested where present). rate 1 is rejected (a is infinite). num_features is "
        "an optional shape check only. Randomness: NNX rngs.<stream>() / Linen make_rng(stream) "
        "derive different keys from one seed (as flax's Dropout layers)."
    ),
)
