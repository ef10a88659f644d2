"""Unified Normalization against a NumPy transcription of the official `UN1d` / `UN2dFunction`.

The reference runs the official per-step bookkeeping (github.com/hikvision-research/
Unified-Normalization, `image_classification/models/unified_normalization/
unified_normalization.py`) in NumPy, float64, over a sequence of training steps that reaches every
branch: the warm-up (the batch's own statistic), the window's geometric mean, the clipped gradient
compensation r, and an outlier batch (outlier filtration on).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn import nn as jnn

C, WINDOW, WARMUP, COMPENSATION, M, EPS = 3, 2, 3, 4, 0.9, 1e-5


class ReferenceUN:
  """The official training step, transcribed (t counts from 1; True in the mask = padding)."""

  def __init__(self, c, window, warmup, compensation, momentum, eps):
    self.running_var, self.ema_gz = np.ones(c), np.zeros(c)
    self.buffer_x2, self.buffer_gz = np.zeros((window, c)), np.zeros((window, c))
    self.t, self.skipped = 0, 0
    self.w, self.warmup, self.compensation, self.m, self.eps = (
        window, warmup, compensation, momentum, eps)

  def step(self, x, pad, gamma, beta, dy):
    self.t += 1
    t, w = self.t, self.w
    tokens = x[~pad]  # (tokens, C)
    x2 = (tokens * tokens).mean(axis=0)
    recorded = np.var(np.sqrt(self.buffer_x2), ddof=1)
    self.buffer_x2[t % w] = x2
    skip = w <= 1
    if t >= self.warmup:
      am = self.buffer_x2.mean(axis=0)
      gm = np.exp(np.log(self.buffer_x2).mean(axis=0))
      if np.any(am - gm > recorded * w):
        self.buffer_x2[t % w] = self.running_var
        skip, self.skipped = True, self.skipped + 1
    if t <= w or t < self.warmup or skip:
      var = x2
    else:
      var = np.exp(np.log(self.buffer_x2).mean(axis=0))
    r = np.sqrt(var + self.eps) / np.sqrt(self.running_var + self.eps)
    r = np.ones_like(r) if (t <= max(self.compensation, self.warmup) or skip) else np.clip(
        r, 0.2, 5.0)
    z = x / np.sqrt(var + self.eps)
    self.running_var = self.m * self.running_var + (1 - self.m) * var
    y = gamma * z + beta
    # backward
    g = dy * gamma * r
    gz = (g * z).reshape(-1, x.shape[-1]).mean(axis=0)
    self.buffer_gz[t % w] = self.ema_gz if skip else gz
    mean_gz = gz if (t <= w or t < self.warmup or skip) else self.buffer_gz.mean(axis=0)
    self.ema_gz = self.m * self.ema_gz + (1 - self.m) * mean_gz
    dx = (g - (mean_gz if skip else self.ema_gz) * z) / np.sqrt(var + self.eps)
    d_gamma = (dy * r * z).reshape(-1, x.shape[-1]).sum(axis=0)
    d_beta = dy.reshape(-1, x.shape[-1]).sum(axis=0)
    return y, dx, d_gamma, d_beta, dict(skip=skip, r=r, window=not (t <= w or t < self.warmup))


def _steps(n, seed=0):
  rng = np.random.default_rng(seed)
  pad = np.zeros((2, 4), bool)
  pad[0, 3] = pad[1, 2:] = True
  for t in range(n):
    scale = 30.0 if t == 7 else 1.0 + 0.05 * t  # step 8 is an outlier; the others drift upward
    x = (scale * rng.normal(size=(2, 4, C))).astype(np.float32)
    yield x, pad, rng.normal(size=(2, 4, C)).astype(np.float32)


@jax.jit
def _jax_step(x, pad, dy, params, stats, back):
  """One training step: y, the gradients (x, gamma, beta), the new state and statistics."""
  def f(x, params, back):
    return jnn.unified_normalize(
        x, scale=params[0], bias=params[1], running_var=stats[0], buffer_x2=stats[1],
        counts=stats[2], ema_gz=back[0], buffer_gz=back[1], mask=~pad, momentum=M,
        epsilon=EPS, warmup_iters=WARMUP, compensation_start=COMPENSATION,
        outlier_filtration=True)

  (y, *new_stats), vjp = jax.vjp(f, x, params, back)
  dx, d_params, d_back = vjp((dy, *map(jnp.zeros_like, new_stats)))
  return y, dx, d_params, tuple(new_stats), tuple(b + d for b, d in zip(back, d_back))


def test_training_steps_match_the_numpy_transcription_in_every_branch():
  rng = np.random.default_rng(1)
  gamma, beta = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.normal(size=C).astype(np.float32)
  ref = ReferenceUN(C, WINDOW, WARMUP, COMPENSATION, M, EPS)
  stats = (jnp.ones(C), jnp.zeros((WINDOW, C)), jnp.zeros(2))
  back = (jnp.zeros(C), jnp.zeros((WINDOW, C)))
  params = (jnp.asarray(gamma), jnp.asarray(beta))
  branches = []
  for x, pad, dy in _steps(10):
    y_ref, dx_ref, dg_ref, db_ref, info = ref.step(x.astype(np.float64), pad, gamma, beta, dy)
    branches.append(info)

    y, dx, (dg, db), stats, back = _jax_step(x, pad, dy, params, stats, back)
    tol = dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(dg, dg_ref, **tol)
    np.testing.assert_allclose(db, db_ref, **tol)
    np.testing.assert_allclose(stats[0], ref.running_var, **tol)
    np.testing.assert_allclose(stats[1], ref.buffer_x2, **tol)
    np.testing.assert_array_equal(stats[2], [ref.t, ref.skipped])
    np.testing.assert_allclose(back[0], ref.ema_gz, **tol)
    np.testing.assert_allclose(back[1], ref.buffer_gz, **tol)
  # The sequence exercised every branch of the official code.
  assert any(b["skip"] for b in branches) and ref.skipped >= 1
  assert any(b["window"] and not b["skip"] for b in branches)
  assert any(np.any(b["r"] != 1.0) for b in branches)


@pytest.mark.parametrize("norm_first", [True, False], ids=["norm_then_dense", "dense_then_norm"])
def test_evaluation_mode_folds_into_the_adjacent_dense(norm_first):
  rng = np.random.default_rng(3)
  d_in, d_out = 4, 3
  norm = jnn.UnifiedNorm(d_in if norm_first else d_out, warmup_iters=2)
  kernel, bias = rng.normal(size=(d_in, d_out)), rng.normal(size=d_out)
  dense = lambda x: np.asarray(x, np.float64) @ kernel + bias
  norm.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, norm.num_features), jnp.float32)
  norm.bias[...] = jnp.asarray(rng.normal(size=norm.num_features), jnp.float32)
  norm.var[...] = jnp.asarray(rng.uniform(0.2, 3.0, norm.num_features), jnp.float32)
  norm.eval()
  x = rng.normal(size=(2, 5, d_in)).astype(np.float32)
  norm_input = x if norm_first else dense(x).astype(np.float32)
  normalized = np.asarray(norm(jnp.asarray(norm_input)))
  # Evaluation is gamma * x / sqrt(running_var + eps) + beta ...
  expected = (norm_input * np.asarray(norm.scale[...]) / np.sqrt(np.asarray(norm.var[...]) + EPS)
              + np.asarray(norm.bias[...]))
  np.testing.assert_allclose(normalized, expected, rtol=1e-5, atol=1e-5)
  # ... and one Dense with the folded kernel and bias gives the unfused composition.
  unfused = dense(normalized) if norm_first else normalized
  fused_kernel, fused_bias = jnn.fold_unified_norm(
      kernel.astype(np.float32), bias.astype(np.float32), scale=norm.scale[...],
      bias=norm.bias[...], running_var=norm.var[...], epsilon=norm.epsilon, norm_first=norm_first)
  np.testing.assert_allclose(x @ np.asarray(fused_kernel) + np.asarray(fused_bias), unfused,
                             rtol=1e-4, atol=1e-4)


def test_bad_arguments_raise():
  norm = jnn.UnifiedNorm(C)
  with pytest.raises(ValueError, match="mask"):
    norm(np.ones((2, 4, C), np.float32), np.ones((2, 3), bool))
  with pytest.raises(ValueError, match="boolean"):
    norm(np.ones((2, 4, C), np.float32), np.ones((2, 4), np.float32))
  with pytest.raises(ValueError, match="window_size"):
    jnn.UnifiedNorm(C, window_size=0)
  with pytest.raises(ValueError, match="momentum"):
    jnn.UnifiedNorm(C, momentum=1.5)
  with pytest.raises(ValueError, match="warmup_iters"):
    jnn.UnifiedNorm(C, warmup_iters=-1)
  with pytest.raises(ValueError, match="epsilon"):
    jnn.UnifiedNorm(C, epsilon=float("nan"))
