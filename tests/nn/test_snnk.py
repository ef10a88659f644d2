"""SNNK against closed-form kernels and a NumPy transcription of the official `NNK_Relu` / URFs.

References: the first-order arc-cosine kernel E[relu(g.x) relu(g.w)] in closed form, the URF
expectation E[phi(x).phi(w)] = mean_r A_r^2 exp(a_r^2 x.w), and float64 NumPy transcriptions of
`phi_relu_mapping_torch` / `input_to_rfs_torch_vectorized` (arijitthegame/neural-network-kernels).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn.nn import linen as jnn_linen

D, OUT = 5, 3


def arccos_kernel(x, w):
  """E_g[relu(g.x) relu(g.w)] = |x||w| (sin t + (pi - t) cos t) / (2 pi)."""
  nx, nw = np.linalg.norm(x, axis=-1), np.linalg.norm(w, axis=-1)
  theta = np.arccos(np.clip(np.sum(x * w, -1) / (nx * nw), -1.0, 1.0))
  return nx * nw * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)


def np_relu_features(x, g):
  """Official phi_relu_mapping_torch (gs of shape (m, d) there; (d, m) here)."""
  return np.maximum(x @ g, 0.0) / np.sqrt(g.shape[1])


def np_urf_features(x, g, big_a, small_a):
  """Official input_to_rfs_torch_vectorized, 2-D branch: A/sqrt(m) exp(x (a g) - |x|^2/2 a^2)."""
  dot = x @ (small_a * g)
  correction = np.outer(np.sum(x * x, -1) / 2, small_a * small_a)
  return big_a * np.exp(dot - correction) / np.sqrt(g.shape[1])


def _pairs(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, D)) / np.sqrt(D), rng.normal(size=(n, D)) / np.sqrt(D)


def test_relu_kernel_estimate_converges_like_one_over_sqrt_m():
  x, w = _pairs()
  exact = arccos_kernel(x, w)
  errors = []
  for m in (256, 16384):
    # Average over independent projections so that the ratio is not one draw's luck.
    err = [np.mean(np.abs(np.sum(np_relu_features(x, g) * np_relu_features(w, g), -1) - exact))
           for g in (np.asarray(jnn.snnk_projection(s, D, m), np.float64) for s in range(4))]
    errors.append(np.mean(err))
  ratio = errors[0] / errors[1]  # 1/sqrt(m): sqrt(64) = 8
  assert 4.0 < ratio < 16.0, errors
  assert errors[1] < 0.01


def test_urf_estimate_converges_to_its_closed_form():
  x, w = _pairs(seed=1)
  g = np.asarray(jnn.snnk_projection(3, D, 20000), np.float64)
  rng = np.random.default_rng(2)
  big_a, small_a = rng.uniform(0.5, 1.5, 20000), rng.uniform(0.2, 1.2, 20000)
  ours = jax.jit(jnn.urf_features)(*(jnp.asarray(v, jnp.float32) for v in (x, g, big_a, small_a)))
  estimate = np.sum(np.asarray(ours) * np_urf_features(w, g, big_a, small_a), -1)
  exact = np.mean(big_a**2 * np.exp(np.outer(np.sum(x * w, -1), small_a**2)), -1)
  np.testing.assert_allclose(estimate, exact, rtol=0.05)


@pytest.mark.parametrize("features", ["relu", "urf"])
def test_numpy_float64_inputs_give_default_floats_without_a_warning(features):
  """As any jnp function does: a float64 NumPy input is taken as JAX's default float (the
  features once asked astype for float64, which warns and truncates without x64)."""
  x = np.random.default_rng(0).normal(size=(3, D))  # float64
  g = jnn.snnk_projection(0, D, 8)
  args = (x, g) if features == "relu" else (x, g, jnp.ones(8), jnp.ones(8))
  function = jnn.relu_features if features == "relu" else jnn.urf_features
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = function(*args)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, function(jnp.asarray(x, jnp.float32), *args[1:]), rtol=1e-6)


def test_relu_layer_matches_numpy_nnk_relu():
  rng = np.random.default_rng(3)
  kernel = rng.normal(size=(D, OUT)).astype(np.float32)
  x = rng.normal(size=(4, D)).astype(np.float32)
  layer = jnn.SNNKLinear(D, OUT, num_features=32, feature_seed=7, kernel=jnp.asarray(kernel),
                         rngs=nnx.Rngs(0))
  g = np.asarray(jnn.snnk_projection(7, D, 32), np.float64)
  weights = np_relu_features(kernel.T.astype(np.float64), g)  # (out, m), NNK_Relu.weights
  expected = np_relu_features(x.astype(np.float64), g) @ weights.T
  np.testing.assert_allclose(np.asarray(layer.psi[...]), weights.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), expected, rtol=1e-4, atol=1e-5)


def test_urf_layer_matches_numpy_and_linen():
  rng = np.random.default_rng(4)
  m = 16
  coefficients = (tuple(rng.uniform(0.5, 1.5, m)), tuple(rng.uniform(0.2, 1.0, m)))
  x = jnp.asarray(rng.normal(size=(4, D)), jnp.float32)
  layer = jnn.SNNKLinear(D, OUT, num_features=m, coefficients=coefficients, rngs=nnx.Rngs(0))
  g = np.asarray(jnn.snnk_projection(0, D, m), np.float64)
  big_a, small_a = (np.asarray(c) for c in coefficients)
  psi = np.asarray(layer.psi[...], np.float64)
  expected = np_urf_features(np.asarray(x, np.float64), g, big_a, small_a) @ psi
  np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-4, atol=1e-5)
  module = jnn_linen.SNNKDense(D, OUT, m, coefficients=coefficients)
  y_linen = module.apply({"params": {"psi": layer.psi[...]}}, x)
  np.testing.assert_allclose(np.asarray(y_linen), np.asarray(layer(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m", [0, -3])
def test_num_features_must_be_positive(m):
  with pytest.raises(ValueError, match="num_features"):
    jnn.SNNKLinear(D, OUT, num_features=m, rngs=nnx.Rngs(0))


def test_coefficients_must_have_length_m():
  with pytest.raises(ValueError, match="expects coefficients"):
    jnn.SNNKLinear(D, OUT, num_features=4, coefficients=((1.0,) * 4, (1.0,) * 3),
                   rngs=nnx.Rngs(0))
