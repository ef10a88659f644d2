"""α-BN against flax's BatchNorm (training mode) and the public torch reimplementation (evaluation).

The reference for the evaluation mode is the widely copied ``AlphaBatchNorm`` (torch): a
``BatchNorm2d(affine=False, momentum=1)`` run in training mode on the test batch gives the test
mean and the unbiased test variance, mixed with the source layer's running statistics as
``(1 - alpha) * source + alpha * test`` and applied with ``F.batch_norm(training=False)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn

RNG = np.random.default_rng(0)
X = (2.0 * RNG.normal(size=(6, 3, 3, 4)) + 1.0).astype(np.float32)  # NHWC
MEAN = RNG.normal(size=4).astype(np.float32)
VAR = RNG.uniform(0.5, 2.0, size=4).astype(np.float32)
SCALE = RNG.uniform(0.5, 1.5, size=4).astype(np.float32)
BIAS = RNG.normal(size=4).astype(np.float32)


def _eval(x, alpha, axis_name=None):
  return jnn.alpha_batch_norm(
      x, running_mean=MEAN, running_var=VAR, scale=SCALE, bias=BIAS, use_running_average=True,
      alpha=alpha, epsilon=1e-5, axis_name=axis_name)[0]


def test_training_mode_is_flax_batch_norm():
  reference = nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                            rngs=nnx.Rngs(0))
  layer = jnn.AlphaBatchNorm(4, alpha=0.3, momentum=0.9, rngs=nnx.Rngs(0))
  call = nnx.jit(lambda module, x: module(x))  # one program each, not op by op
  for step in range(2):
    x = X + step
    np.testing.assert_allclose(call(layer, x), call(reference, x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layer.mean[...], reference.mean[...], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(layer.var[...], reference.var[...], rtol=1e-6, atol=1e-6)


@pytest.mark.parity
def test_evaluation_matches_the_torch_reimplementation():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  x_nchw = torch.from_numpy(np.ascontiguousarray(X.transpose(0, 3, 1, 2)))
  norm = torch.nn.BatchNorm2d(4, affine=False, momentum=1.0)
  norm.train()
  norm(x_nchw)  # running statistics := test mean and unbiased test variance
  for alpha in (0.0, 0.3, 1.0):
    mean = (1 - alpha) * torch.from_numpy(MEAN) + alpha * norm.running_mean
    var = (1 - alpha) * torch.from_numpy(VAR) + alpha * norm.running_var
    expected = F.batch_norm(x_nchw, mean, var, torch.from_numpy(SCALE), torch.from_numpy(BIAS),
                            False, 0.0, 1e-5).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(_eval(X, alpha), expected, rtol=1e-5, atol=1e-5)
  # alpha = 0 is plain evaluation with the source statistics
  np.testing.assert_allclose(_eval(X, 0.0), (X - MEAN) / np.sqrt(VAR + 1e-5) * SCALE + BIAS,
                             rtol=1e-5, atol=1e-5)


def test_test_statistics_sync_across_axis_name_and_carry_no_gradient():
  shards = X.reshape(2, 3, *X.shape[1:])
  synced = jax.vmap(lambda s: _eval(s, 0.4, "batch"), axis_name="batch")(shards)
  np.testing.assert_allclose(synced.reshape(X.shape), _eval(X, 0.4), rtol=1e-5, atol=1e-5)

  # The test statistics are constants: dy/dx is the diagonal scale / sqrt(var + eps).
  probe = RNG.normal(size=X.shape).astype(np.float32)
  grad = jax.grad(lambda x: jnp.sum(_eval(x, 0.4) * probe))(jnp.asarray(X))
  mean, var = jnn.mixed_statistics(X, MEAN, VAR, 0.4)
  np.testing.assert_allclose(grad, probe * SCALE / np.sqrt(np.asarray(var) + 1e-5),
                             rtol=1e-5, atol=1e-5)


def test_bad_hyperparameters_and_batches_raise():
  for alpha in (-0.1, 1.5, float("nan"), None):
    with pytest.raises(ValueError, match="alpha"):
      jnn.AlphaBatchNorm(4, alpha=alpha)
  with pytest.raises(ValueError, match="expects at least 2 values"):
    jnn.mixed_statistics(np.ones((1, 4), np.float32), MEAN, VAR, 0.5)
  with pytest.raises(ValueError, match="expects 4 features"):
    jnn.mixed_statistics(np.ones((3, 5), np.float32), MEAN, VAR, 0.5)
