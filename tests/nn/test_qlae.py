"""Latent quantization against a NumPy transcription of the official JAX code.

Reference: kylehkhsu/latent_quantization, `QuantizedLatent.__call__` (per-latent argmin of
|x - values|, straight-through x + sg(q - x)) and `QuantizedAE.quantization_loss` /
`commitment_loss` (per-example means of squares, then the batch mean), transcribed in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn


def np_quantize(z, values):
  """Latent by latent, example by example, as the official list comprehension."""
  q = np.empty_like(z)
  k = np.empty(z.shape, np.int64)
  for b in range(z.shape[0]):
    for j in range(z.shape[1]):
      k[b, j] = int(np.argmin(np.abs(z[b, j] - values[j])))
      q[b, j] = values[j][k[b, j]]
  return q, k


def _data(seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(scale=0.6, size=(8, 4))
  values = np.sort(rng.uniform(-0.7, 0.7, size=(4, 6)), axis=-1)  # learned-looking codebooks
  return z, values


def test_quantization_matches_numpy_and_codebooks_start_at_linspace():
  z, values = _data()
  outs = jnn.LatentQuantizer(4, num_values=6).quantize(jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(
      np.asarray(jnn.LatentQuantizer(4, num_values=6).values[...]),
      np.tile(np.linspace(-0.5, 0.5, 6), (4, 1)), atol=1e-7)
  z_hat, z_q, k = jnn.quantize_latents(jnp.asarray(z, jnp.float32),
                                       jnp.asarray(values, jnp.float32))
  q_ref, k_ref = np_quantize(z.astype(np.float32).astype(np.float64), values)
  np.testing.assert_array_equal(np.asarray(k), k_ref)
  np.testing.assert_allclose(np.asarray(z_q), q_ref, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(z_hat), q_ref, rtol=1e-6, atol=1e-7)
  q_lin, _ = np_quantize(z, np.tile(np.linspace(-0.5, 0.5, 6), (4, 1)))
  np.testing.assert_allclose(np.asarray(outs["z_hat"]), q_lin, atol=1e-6)


def test_loss_values_and_gradients_match_the_official_stop_gradients():
  z, values = _data(1)
  q_ref, k_ref = np_quantize(z, values)
  quant = np.mean(np.mean((z - q_ref) ** 2, axis=1))  # vmapped per-example mean, then batch mean
  probe = np.random.default_rng(2).normal(size=z.shape)

  def total(z, values):
    z_hat, z_q, _ = jnn.quantize_latents(z, values)
    return jnp.sum(z_hat * probe) + jnn.qlae_latent_loss(z, z_q, quantization_weight=0.3,
                                                         commitment_weight=0.7)

  zj, vj = jnp.asarray(z, jnp.float32), jnp.asarray(values, jnp.float32)
  loss = float(jnn.qlae_latent_loss(zj, jnn.quantize_latents(zj, vj)[1], quantization_weight=0.3,
                                    commitment_weight=0.7))
  np.testing.assert_allclose(loss, (0.3 + 0.7) * quant, rtol=1e-5)
  grad_z, grad_v = jax.jit(jax.grad(total, (0, 1)))(zj, vj)
  n = z.size
  # z: identity through the straight-through estimator plus the commitment term only.
  np.testing.assert_allclose(np.asarray(grad_z), probe + 0.7 * 2 * (z - q_ref) / n, rtol=1e-4,
                             atol=1e-6)
  # values: the quantization term only (scattered to the chosen entries), nothing from z_hat.
  expected_v = np.zeros_like(values)
  for b in range(z.shape[0]):
    for j in range(z.shape[1]):
      expected_v[j, k_ref[b, j]] += 0.3 * 2 * (q_ref[b, j] - z[b, j]) / n
  np.testing.assert_allclose(np.asarray(grad_v), expected_v, rtol=1e-4, atol=1e-6)


def test_fixed_values_get_no_gradient():
  quantizer = jnn.LatentQuantizer(3, num_values=4, optimize_values=False)
  z = jnp.asarray(np.random.default_rng(3).normal(size=(5, 3)), jnp.float32)

  def loss(model):
    outs = model.quantize(z)
    return jnn.quantization_loss(outs["z_continuous"], outs["z_quantized"])

  grads = nnx.grad(loss)(quantizer)
  np.testing.assert_array_equal(np.asarray(grads["values"][...]), 0.0)


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_sizes_raise(bad):
  with pytest.raises(ValueError, match="num_values"):
    jnn.LatentQuantizer(3, num_values=bad)
