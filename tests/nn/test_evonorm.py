"""EvoNorm-B0 and EvoNorm-S0 against NumPy transcriptions of the official TensorFlow code.

Reference: tensorflow/tpu `models/official/resnet/resnet_model.py` (`evonorm`, `_batch_std`,
`_instance_std`, `_group_std`), rewritten channel by channel in float64 with the official
constants (ε 1e-5, decay 0.9). The layer battery covers NNX == Linen, jit, modes, dtypes and the
`axis_name` sync.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn

EPS, DECAY = 1e-5, 0.9


def np_evonorm_b0(x, gamma, beta, v, moving_var, *, training):
  """Returns (y, new moving variance); NHWC, float64, one channel at a time."""
  x = np.asarray(x, np.float64)
  y = np.empty_like(x)
  new_var = np.array(moving_var, np.float64)
  for c in range(x.shape[-1]):
    xc = x[..., c]
    if training:
      variance = xc.var()  # tf.nn.moments over (N, H, W): biased
      new_var[c] = moving_var[c] - (moving_var[c] - variance) * (1 - DECAY)
    else:
      variance = moving_var[c]
    left = np.sqrt(variance + EPS)
    instance_var = xc.reshape(x.shape[0], -1).var(axis=1)[:, None, None]
    right = v[c] * xc + np.sqrt(instance_var + EPS)
    y[..., c] = xc / np.maximum(left, right) * gamma[c] + beta[c]
  return y, new_var


def np_evonorm_s0(x, gamma, beta, v, groups):
  x = np.asarray(x, np.float64)
  n, channels = x.shape[0], x.shape[-1]
  size = channels // groups
  std = np.empty_like(x)
  for i in range(n):
    for g in range(groups):
      block = x[i, ..., g * size:(g + 1) * size]
      std[i, ..., g * size:(g + 1) * size] = np.sqrt(block.var() + EPS)
  return x * (1 / (1 + np.exp(-v * x))) / std * gamma + beta


def _params(channels, seed):
  rng = np.random.default_rng(seed)
  return [rng.uniform(0.5, 1.5, channels) for _ in range(3)]


def test_b0_matches_the_official_code_in_training_and_evaluation():
  rng = np.random.default_rng(0)
  x = (2.0 * rng.normal(size=(3, 4, 5, 6)) + 0.3).astype(np.float32)
  gamma, beta, v = _params(6, 1)
  beta -= 1.0
  moving = rng.uniform(0.5, 2.0, 6)
  args = dict(gamma=jnp.asarray(gamma, jnp.float32), beta=jnp.asarray(beta, jnp.float32),
              v=jnp.asarray(v, jnp.float32), running_var=jnp.asarray(moving, jnp.float32))
  for training in (True, False):
    y, new_var = jnn.evonorm_b0(jnp.asarray(x), use_running_average=not training, **args)
    y_ref, var_ref = np_evonorm_b0(x, gamma, beta, v, moving, training=training)
    np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(new_var, var_ref, rtol=1e-5)
  # Both branches of the max are taken somewhere (v·x + instance std can exceed the batch std).
  x64 = np.asarray(x, np.float64)
  right = v * x64 + np.sqrt(x64.reshape(3, -1, 6).var(axis=1)[:, None, None] + EPS)
  left = np.sqrt(x64.reshape(-1, 6).var(axis=0) + EPS)
  assert np.any(right > left) and np.any(right < left)


def test_b0_layer_default_momentum_is_the_official_decay():
  x = np.random.default_rng(2).normal(size=(3, 4, 5, 6)).astype(np.float32)  # shape reused
  layer = jnn.EvoNormB0(6)
  layer(jnp.asarray(x))
  ones = np.ones(6)
  _, expected = np_evonorm_b0(x, ones, 0 * ones, ones, ones, training=True)
  np.testing.assert_allclose(layer.var[...], expected, rtol=1e-5)


def test_s0_matches_the_official_code():
  x = (1.5 * np.random.default_rng(3).normal(size=(2, 3, 3, 8)) + 0.5).astype(np.float32)
  gamma, beta, v = _params(8, 4)
  layer = jnn.EvoNormS0(8, num_groups=4, rngs=nnx.Rngs(0))
  layer.gamma[...], layer.beta[...], layer.v[...] = (jnp.asarray(p, jnp.float32)
                                                     for p in (gamma, beta, v))
  y = layer(jnp.asarray(x))
  np.testing.assert_allclose(y, np_evonorm_s0(x, gamma, beta, v, 4), rtol=2e-5, atol=2e-5)
  # Batch independent: a sample's output ignores the other samples (B0's batch variance does not).
  other = np.concatenate([x[:1], 3.0 * x[1:] - 1.0])
  np.testing.assert_allclose(layer(jnp.asarray(other))[:1], y[:1], rtol=1e-6, atol=1e-6)
  # (N, C) inputs: groups of channels only.
  x2 = x[:, 0, 0, :]
  np.testing.assert_allclose(
      jnn.evonorm_s0(jnp.asarray(x2), gamma=layer.gamma[...], beta=layer.beta[...],
                     v=layer.v[...], num_groups=2),
      np_evonorm_s0(x2, gamma, beta, v, 2), rtol=2e-5, atol=2e-5)


def test_bad_hyperparameters_raise():
  with pytest.raises(ValueError, match="num_groups"):
    jnn.EvoNormS0(12, num_groups=8)  # the official code would silently use 6 groups
  with pytest.raises(ValueError, match="epsilon"):
    jnn.EvoNormB0(4, epsilon=0.0)
  with pytest.raises(ValueError, match="momentum"):
    jnn.EvoNormB0(4, momentum=float("nan"))
  with pytest.raises(ValueError, match="expects"):
    jnn.EvoNormB0(4)(jnp.ones((2, 4)))  # B0 needs a spatial axis
