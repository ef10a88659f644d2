r"""Nested dropout on a feature layer, as a compression regularizer against noisy labels.

Paper: Yingyi Chen, Shell Xu Hu, Xi Shen, Chunrong Ai and Johan A. K. Suykens, "Compressing
Features for Learning with Noisy Labels", IEEE TNNLS 2022, arXiv:2206.13140. Official code:
github.com/yingyichen-cyy/Nested-Co-teaching (`nested/train_resnet.py`: `GaussianDist`,
`Train`, `TestNested`; `nested/run_cifar.sh`).

Nested dropout keeps only the first :math:`k` of the :math:`K` features of a representation
(here the last axis) and zeroes the others, with :math:`k` drawn once per minibatch (the same
:math:`k` for every example of the batch) from

.. math::

    p(k) \propto \exp\Big(-\Big(\frac{k - \mu}{\sigma}\Big)^2\Big), \qquad k = 1, \dots, K,

the official `GaussianDist` (:math:`\mu = 0`; :math:`\sigma` is the ``--nested`` option: 10 on
CIFAR-10, 100 on CIFAR-100). Kept features are **not rescaled** (unlike dropout). Early features
are kept most often, so the network learns features ordered by importance, and a small
:math:`\sigma` compresses the representation into its first few coordinates, which the paper
argues keeps it from fitting the noisy labels. At evaluation the official code tries every
truncation :math:`k` on the validation set and keeps the best; here the evaluation mode keeps the
first `keep` features (default: all of them, the identity), and `truncate_features` gives any
other :math:`k`. The Co-teaching stage of the paper is a separate training procedure, not
implemented here.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive, check_positive_int, check_range
from jaxlearn.nn._modes import DeterministicMode
from jaxlearn.nn._random import layer_stream, training_key

__all__ = [
    "NestedDropout",
    "LinenNestedDropout",
    "nested_dropout",
    "nested_dropout_distribution",
    "sample_truncation",
    "truncate_features",
]


def _check_hyperparameters(sigma: Any, mu: Any) -> None:
  check_positive("sigma", sigma)
  check_range("mu", mu)


def _check_keep(keep: Any, num_features: int) -> None:
  if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) \
      or not 0 <= keep <= num_features:
    raise ValueError(f"keep must be an integer in [0, {num_features}], got {keep!r}")


def nested_dropout_distribution(num_features: int, sigma: float, mu: float = 0.0) -> jax.Array:
  r"""The truncation distribution :math:`p(k) \propto e^{-((k - \mu)/\sigma)^2}`, k = 1..K.

  Args:
    num_features: K, the number of features (static).
    sigma: the width, > 0; may be traced.
    mu: the centre (default 0, the official code); may be traced.

  Returns:
    float32 probabilities of shape (K,); entry i is the probability of keeping i + 1 features.

  Example:
    >>> from jaxlearn.nn import nested_dropout_distribution
    >>> p = nested_dropout_distribution(4, sigma=1.0)
    >>> [round(float(v), 4) for v in p]  # e^-1, e^-4, e^-9, e^-16, normalized
    [0.9523, 0.0474, 0.0003, 0.0]
  """
  check_positive_int("num_features", num_features)
  _check_hyperparameters(sigma, mu)
  return _distribution(num_features, sigma, mu)


@functools.partial(jax.jit, static_argnums=0)
def _distribution(num_features, sigma, mu):
  return jax.nn.softmax(_log_weights(num_features, sigma, mu))


def _log_weights(num_features: int, sigma, mu) -> jax.Array:
  k = jnp.arange(1, num_features + 1, dtype=jnp.float32)
  return -jnp.square((k - jnp.asarray(mu, jnp.float32)) / jnp.asarray(sigma, jnp.float32))


def sample_truncation(key: jax.Array, num_features: int, sigma: float,
                      mu: float = 0.0) -> jax.Array:
  r"""One draw of the number of kept features :math:`k \in \{1, \dots, K\}` (int32 scalar).

  Args:
    key: the PRNG key.
    num_features: K (static).
    sigma: the width of :math:`p(k)`, > 0; may be traced.
    mu: its centre (default 0); may be traced.

  Returns:
    An int32 scalar in [1, K].

  Example:
    >>> import jax
    >>> from jaxlearn.nn import sample_truncation
    >>> k = sample_truncation(jax.random.key(0), 64, sigma=16.0)
    >>> 1 <= int(k) <= 64
    True
  """
  check_positive_int("num_features", num_features)
  _check_hyperparameters(sigma, mu)
  return _sample(key, num_features, sigma, mu)


@functools.partial(jax.jit, static_argnums=1)
def _sample(key, num_features, sigma, mu):
  return jax.random.categorical(key, _log_weights(num_features, sigma, mu)).astype(jnp.int32) + 1


def truncate_features(x: jax.Array, keep: Any) -> jax.Array:
  """Keeps the first `keep` features (last axis) of `x` and zeroes the rest, without rescaling.

  Args:
    x: the features, shape (..., K).
    keep: the number of features kept, an integer in [0, K]; may be traced (a value outside is
      not clamped: every feature is kept for keep >= K, none for keep <= 0).

  Returns:
    The truncated features, shape and dtype of `x`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import truncate_features
    >>> truncate_features(jnp.arange(1.0, 6.0), 2)
    Array([1., 2., 0., 0., 0.], dtype=float32)
  """
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"x must have a feature axis (..., features), got shape {x.shape}")
  if not isinstance(keep, jax.Array):
    _check_keep(keep, x.shape[-1])
  return _truncate(x, keep)


@jax.jit
def _truncate(x, keep):
  return jnp.where(jnp.arange(x.shape[-1]) < keep, x, jnp.zeros((), x.dtype))


def nested_dropout(
    x: jax.Array,
    sigma: float,
    key: jax.Array | None,
    *,
    mu: float = 0.0,
    deterministic: bool = False,
    keep: Any = None,
    dtype: Any = None,
) -> jax.Array:
  r"""Nested dropout: keep the first :math:`k \sim p(k)` features of the whole batch.

  .. math::

      y = x \odot [\,1, \dots, 1, 0, \dots, 0\,] \ (k \text{ ones}), \qquad
      p(k) \propto e^{-((k - \mu)/\sigma)^2},\ k = 1..K,

  one :math:`k` per call (per minibatch), no rescaling (official `Train`).

  Args:
    x: the features, shape (..., K): the truncation runs over the last axis.
    sigma: the width of :math:`p(k)`, > 0; may be traced.
    key: the PRNG key of the draw (unused when deterministic).
    mu: the centre of :math:`p(k)` (default 0, the official code); may be traced.
    deterministic: evaluation: keep the first `keep` features instead of drawing.
    keep: the number of features kept in evaluation (default None: all, the identity).
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    The truncated features, shape of `x`.

  References:
    Yingyi Chen, Shell Xu Hu, Xi Shen, Chunrong Ai and Johan A. K. Suykens, "Compressing
    Features for Learning with Noisy Labels",
    `arXiv:2206.13140 <https://arxiv.org/abs/2206.13140>`_, IEEE TNNLS 2022. Official code:
    github.com/yingyichen-cyy/Nested-Co-teaching.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import nested_dropout
    >>> y = nested_dropout(jnp.ones((3, 8)), 2.0, jax.random.key(0))
    >>> bool(jnp.all(y == y[0]))  # one truncation for the whole batch
    True
    >>> nested_dropout(jnp.ones((1, 4)), 2.0, None, deterministic=True, keep=3)
    Array([[1., 1., 1., 0.]], dtype=float32)
  """
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"x must have a feature axis (..., features), got shape {x.shape}")
  _check_hyperparameters(sigma, mu)
  dtype = x.dtype if dtype is None else jnp.dtype(dtype)
  if deterministic:
    return (x if keep is None else truncate_features(x, keep)).astype(dtype)
  if key is None:
    raise ValueError("nested_dropout expects a PRNG key in training (deterministic=False)")
  return _nested_dropout(x, key, sigma, mu).astype(dtype)


@jax.jit
def _nested_dropout(x, key, sigma, mu):
  return _truncate(x, _sample(key, x.shape[-1], sigma, mu))


def _check_input(layer: str, x: jax.Array, num_features: int) -> None:
  if x.ndim < 1 or x.shape[-1] != num_features:
    raise ValueError(
        f"{layer} expects inputs (..., {num_features}) with {num_features} features on the last "
        f"axis, got shape {x.shape}")


class NestedDropout(DeterministicMode):
  r"""Nested dropout over the last axis (conventions of `nnx.Dropout`).

  Training: keep the first :math:`k \sim p(k) \propto e^{-((k - \mu)/\sigma)^2}` features of
  the batch, zero the rest, no rescaling (one draw per call); evaluation: keep the first `keep`
  (default: all). See `nested_dropout`.

  Args:
    num_features: K, the size of the last axis of the input.
    sigma: the width of :math:`p(k)`, > 0.
    mu: its centre (default 0).
    keep: the number of features kept in evaluation (default None: all).
    deterministic: evaluation mode; `model.eval()` / `model.train()` set it.
    rng_collection: the name of the noise stream (default ``"dropout"``).
    dtype: the output dtype (default: the input's dtype).
    rngs: an `nnx.Rngs` (its ``rng_collection`` stream is kept, if present), an `nnx.RngStream`
      or None (then pass ``rngs=`` at call time).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.NestedDropout(6, sigma=2.0, keep=4, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.ones((2, 6)))  # a random prefix of ones
    >>> layer.eval()
    >>> layer(jnp.ones((2, 6)))[0]
    Array([1., 1., 1., 1., 0., 0.], dtype=float32)
  """

  def __init__(
      self,
      num_features: int,
      sigma: float,
      *,
      mu: float = 0.0,
      keep: int | None = None,
      deterministic: bool = False,
      rng_collection: str = "dropout",
      dtype: Any = None,
      rngs: nnx.Rngs | nnx.RngStream | None = None,
  ):
    check_positive_int("num_features", num_features)
    _check_hyperparameters(sigma, mu)
    if keep is not None:
      _check_keep(keep, num_features)
    self.num_features = num_features
    self.sigma = sigma
    self.mu = mu
    self.keep = keep
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
    """Truncates at a random k in training, at `keep` in evaluation."""
    x = jnp.asarray(x)
    _check_input("NestedDropout", x, self.num_features)
    deterministic = self.deterministic_mode(deterministic)
    key = None
    if not deterministic:
      key = training_key(self.rngs if rngs is None else rngs, self.rng_collection,
                         "NestedDropout draws its truncation in training")
    return nested_dropout(x, self.sigma, key, mu=self.mu, deterministic=deterministic,
                          keep=self.keep, dtype=self.dtype)


class LinenNestedDropout(linen.Module):
  r"""The Linen twin of `NestedDropout` (exported as `jaxlearn.nn.linen.NestedDropout`).

  Same numbers given the same key. ``deterministic`` at call time wins over the attribute (None
  means training); the key is ``rng`` if given, else ``make_rng(rng_collection)``.

  Attributes:
    num_features: K, the size of the last axis of the input.
    sigma: the width of :math:`p(k)`, > 0.
    mu: its centre (default 0).
    keep: the number of features kept in evaluation (default None: all).
    deterministic: evaluation mode.
    rng_collection: the name of the noise stream (default ``"dropout"``).
    dtype: the output dtype (default: the input's dtype).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.NestedDropout(4, sigma=1.0)
    >>> y = layer.apply({}, jnp.ones((2, 4)), rngs={"dropout": jax.random.key(0)})
    >>> layer.apply({}, jnp.ones((2, 4)), deterministic=True).sum()
    Array(8., dtype=float32)
  """

  num_features: int
  sigma: float
  mu: float = 0.0
  keep: int | None = None
  deterministic: bool | None = None
  rng_collection: str = "dropout"
  dtype: Any = None

  @linen.compact
  def __call__(self, x: jax.Array, *, deterministic: bool | None = None,
               rng: jax.Array | None = None) -> jax.Array:
    """Truncates at a random k in training, at `keep` in evaluation."""
    check_positive_int("num_features", self.num_features)
    x = jnp.asarray(x)
    _check_input("NestedDropout", x, self.num_features)
    deterministic = bool(self.deterministic) if deterministic is None else deterministic
    key = None
    if not deterministic:
      key = self.make_rng(self.rng_collection) if rng is None else rng
    return nested_dropout(x, self.sigma, key, mu=self.mu, deterministic=deterministic,
                          keep=self.keep, dtype=self.dtype)


RECORD = registry.record(
    slug="nested_dropout_noisy_labels",
    kind="layer",
    title="Compressing Features for Learning with Noisy Labels",
    reference="arXiv:2206.13140",
    experiment="noisy_labels_comparison",
    notes=(
        "Nested dropout as in the official nested/train_resnet.py: one truncation k per "
        "minibatch (shared by its examples) from GaussianDist, p(k) ~ exp(-((k - mu)/sigma)^2) "
        "for k = 1..K, mu = 0; the first k features kept, the rest zeroed, no rescaling. The "
        "official evaluation tries every k on the validation set and keeps the best (TestNested, "
        "ties to the smaller k); here evaluation keeps `keep` features (default all) and "
        "truncate_features gives any k, so the experiment does that selection. Plain dropout "
        "(the paper's other compression) is flax's. The Co-teaching stage (two networks "
        "exchanging small-loss examples) is not implemented."
    ),
)
