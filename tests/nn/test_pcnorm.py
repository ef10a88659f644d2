"""PCNorm / SCNorm (DAC) against a NumPy transcription of the third-party copy's equations.

The reference works in the copy's layout (NCHW), with the full `fft2`, the copy's guards
(`replace_denormals` at 1e-5 on the squared amplitude and on the real part inside atan2) and its
composition (divide by sqrt(H W), then the half-spectrum inverse `irfft2(norm="ortho")`). Running
statistics follow our flax convention (momentum on the old value, biased variance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn.nn import linen as jnn_linen

RNG = np.random.default_rng(0)
N, H, W, C = 4, 5, 6, 3  # odd H, even W: both half-spectrum cases
X_NHWC = (2.0 * RNG.normal(size=(N, H, W, C)) + 0.7).astype(np.float32)


def replace_denormals(v, threshold=1e-5):
  v = v.copy()
  v[(v < threshold) & (v > -threshold)] = threshold
  return v


def decompose(x):  # x: NCHW
  f = np.fft.fft2(x, axes=(2, 3))
  amplitude = np.sqrt(replace_denormals(f.real ** 2 + f.imag ** 2))
  phase = np.arctan2(f.imag, replace_denormals(f.real))
  return phase, amplitude


def compose(phase, amplitude):
  z = (np.cos(phase) * amplitude + 1j * np.sin(phase) * amplitude) / np.sqrt(H * W)
  return np.fft.irfft2(z, s=(H, W), axes=(2, 3), norm="ortho")


def reference_pcnorm(x_nhwc, mean, var, gamma, beta, train, momentum=0.9, eps=1e-5):
  x = np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64)
  if train:
    batch_mean, batch_var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    new_mean = momentum * mean + (1 - momentum) * batch_mean
    new_var = momentum * var + (1 - momentum) * batch_var
    mean, var = batch_mean, batch_var
  else:
    new_mean, new_var = mean, var
  normed = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps)
  phase, _ = decompose(x)
  _, amplitude = decompose(normed)
  y = compose(phase, amplitude) * gamma[:, None, None] + beta[:, None, None]
  return np.transpose(y, (0, 2, 3, 1)), new_mean, new_var


def reference_scnorm(x_nhwc, gamma, beta, h, temperature=0.1, eps=1e-5):
  x = np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64)
  normed = (x - x.mean(axis=(2, 3), keepdims=True)) / np.sqrt(
      x.var(axis=(2, 3), keepdims=True) + eps)
  w = np.exp(h / temperature) / np.exp(h / temperature).sum()
  phase, amplitude = decompose(x)
  _, normed_amplitude = decompose(normed)
  y = compose(phase, normed_amplitude * w[0] + amplitude * w[1])
  y = y * gamma[:, None, None] + beta[:, None, None]
  return np.transpose(y, (0, 2, 3, 1))


def test_pcnorm_train_then_eval_matches_reference_in_nnx_and_linen():
  gamma = RNG.uniform(0.5, 1.5, C).astype(np.float32)
  beta = RNG.normal(size=C).astype(np.float32)
  norm = jnn.PCNorm(C, momentum=0.9, rngs=nnx.Rngs(0))
  norm.scale[...], norm.bias[...] = jnp.asarray(gamma), jnp.asarray(beta)
  y_train = norm(jnp.asarray(X_NHWC))
  expected, mean, var = reference_pcnorm(X_NHWC, np.zeros(C), np.ones(C), gamma, beta, True)
  np.testing.assert_allclose(y_train, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(norm.mean[...], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.var[...], var, rtol=1e-5, atol=1e-6)

  x_eval = X_NHWC[::-1].copy()
  expected_eval, _, _ = reference_pcnorm(x_eval, mean, var, gamma, beta, False)
  np.testing.assert_allclose(norm(jnp.asarray(x_eval), use_running_average=True), expected_eval,
                             rtol=1e-4, atol=1e-4)

  variables = {"params": {"scale": gamma, "bias": beta},
               "batch_stats": {"mean": np.zeros(C, np.float32), "var": np.ones(C, np.float32)}}
  y_linen, updates = jnn_linen.PCNorm(momentum=0.9).apply(
      variables, jnp.asarray(X_NHWC), use_running_average=False, mutable=["batch_stats"])
  np.testing.assert_allclose(y_linen, y_train, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], norm.var[...], rtol=1e-6)


def test_pcnorm_keeps_the_phase_of_the_input_and_the_amplitude_of_batch_norm():
  """The defining property, independent of the transcription: phase(y) = phase(x) and
  |F(y)| = |F(BN(x))| (γ = 1, β = 0), on the bins that the guards leave alone."""
  y = np.asarray(jnn.pc_normalize(jnp.asarray(X_NHWC), running_mean=jnp.zeros(C),
                                  running_var=jnp.ones(C), scale=jnp.ones(C), bias=jnp.zeros(C),
                                  use_running_average=False)[0], np.float64)
  x = X_NHWC.astype(np.float64)
  bn = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)
  fx, fy, fbn = (np.fft.rfft2(v, axes=(1, 2)) for v in (x, y, bn))
  keep = (np.abs(fx.real) > 1e-3) & (np.abs(fbn) > 1e-3)
  np.testing.assert_allclose(np.abs(fy)[keep], np.abs(fbn)[keep], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.angle(fy)[keep], np.angle(fx)[keep], rtol=0, atol=1e-3)
  assert not np.allclose(y, bn, atol=1e-2)  # not simply batch normalization


def test_scnorm_matches_reference_in_nnx_and_linen():
  gamma = RNG.uniform(0.5, 1.5, C).astype(np.float32)
  beta = RNG.normal(size=C).astype(np.float32)
  h = np.array([0.05, -0.02], np.float32)
  norm = jnn.SCNorm(C, rngs=nnx.Rngs(0))
  norm.scale[...], norm.bias[...], norm.mix_logits[...] = map(jnp.asarray, (gamma, beta, h))
  y = norm(jnp.asarray(X_NHWC))
  np.testing.assert_allclose(y, reference_scnorm(X_NHWC, gamma, beta, h), rtol=1e-4, atol=1e-4)
  params = {"scale": gamma, "bias": beta, "mix_logits": h}
  np.testing.assert_allclose(jnn_linen.SCNorm().apply({"params": params}, jnp.asarray(X_NHWC)),
                             y, rtol=1e-6, atol=1e-6)


def test_guards_keep_gradients_finite_on_a_constant_map():
  """A spatially constant map has zero amplitude away from DC: atan2 and sqrt at 0 without the
  guards would give NaN gradients."""
  x = jnp.asarray(np.tile(RNG.normal(size=(N, 1, 1, C)), (1, H, W, 1)).astype(np.float32))
  loss = lambda x, s: jnp.sum(jnn.pc_normalize(
      x, running_mean=jnp.zeros(C), running_var=jnp.ones(C), scale=s, bias=jnp.zeros(C),
      use_running_average=False)[0] ** 2)
  grads = jax.grad(loss, (0, 1))(x, jnp.ones(C))
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="momentum"):
    jnn.PCNorm(3, momentum=1.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="epsilon"):
    jnn.PCNorm(3, epsilon=float("nan"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="temperature"):
    jnn.SCNorm(3, temperature=0.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="expects inputs of rank 4"):
    jnn.SCNorm(3, rngs=nnx.Rngs(0))(jnp.ones((2, 4, 3)))
