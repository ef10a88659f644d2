"""Nested dropout against the official `GaussianDist` and `Train` (transcribed in NumPy).

The layer battery checks NNX/Linen agreement, jit, modes, dtypes and shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.nn import (
    nested_dropout,
    nested_dropout_distribution,
    sample_truncation,
    truncate_features,
)


def _gaussian_dist(mu, std, n):
  """nested/train_resnet.py GaussianDist: p(i) ~ exp(-((i - mu)/std)^2), i = 1..n."""
  dist = np.array([np.exp(-(((i - mu) / std) ** 2)) for i in range(1, n + 1)])
  return dist / dist.sum()


def test_distribution_is_the_official_gaussian_dist():
  for k, sigma, mu in ((64, 16.0, 0.0), (12, 2.5, 3.0)):
    np.testing.assert_allclose(nested_dropout_distribution(k, sigma, mu),
                               _gaussian_dist(mu, sigma, k), rtol=1e-5, atol=1e-8)


def test_draws_follow_the_distribution_and_sigma_is_traceable():
  keys = jax.random.split(jax.random.key(0), 4000)
  draw = fast_jit(jax.vmap(lambda key, sigma: sample_truncation(key, 16, sigma),
                           in_axes=(0, None)))
  for sigma in (3.0, 8.0):
    counts = np.bincount(np.asarray(draw(keys, sigma)), minlength=17)
    assert counts[0] == 0  # k >= 1: at least one feature is kept
    expected = 4000 * _gaussian_dist(0.0, sigma, 16)
    # Every frequency within 5 binomial standard deviations (+1 for the rare bins).
    np.testing.assert_array_less(np.abs(counts[1:] - expected),
                                 5 * np.sqrt(expected) + 1)


def test_one_prefix_per_batch_without_rescaling():
  x = np.random.default_rng(0).normal(size=(5, 3, 12)).astype(np.float32)
  apply = fast_jit(jax.vmap(lambda key: nested_dropout(x, 4.0, key)))
  ys = np.asarray(apply(jax.random.split(jax.random.key(1), 20)))
  kept = set()
  for y in ys:
    k = int(np.sum(np.any(y != 0, axis=(0, 1))))
    kept.add(k)
    np.testing.assert_array_equal(y[..., :k], x[..., :k])  # kept features unchanged
    assert np.all(y[..., k:] == 0)
  assert len(kept) > 2  # different minibatches, different truncations


def test_evaluation_keeps_the_chosen_prefix_and_arguments_are_checked():
  x = np.arange(1.0, 7.0, dtype=np.float32)[None]
  np.testing.assert_array_equal(nested_dropout(x, 2.0, None, deterministic=True), x)
  np.testing.assert_array_equal(
      nested_dropout(x, 2.0, None, deterministic=True, keep=2), [[1, 2, 0, 0, 0, 0]])
  np.testing.assert_array_equal(truncate_features(x, jnp.asarray(5)), [[1, 2, 3, 4, 5, 0]])
  for kwargs, name in (({"sigma": 0.0}, "sigma"), ({"sigma": np.nan}, "sigma"),
                       ({"sigma": 1.0, "mu": np.inf}, "mu")):
    with pytest.raises(ValueError, match=name):
      nested_dropout(x, key=jax.random.key(0), **kwargs)
  with pytest.raises(ValueError, match="keep"):
    truncate_features(x, 7)
  with pytest.raises(ValueError, match="PRNG key"):
    nested_dropout(x, 2.0, None)
