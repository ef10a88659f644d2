"""Batch Normalization (flax's BatchNorm, registered by `jaxlearn.nn.batch_norm`).

References: a NumPy transcription of the paper's equations (arXiv:1502.03167, Algorithm 1 and the
backward pass of section 3) and PyTorch's `BatchNorm1d/2d` / `InstanceNorm2d` (parity tests). Each
flax-vs-PyTorch convention of the module's table is tested here: momentum, the unbiased running
variance, epsilon, `use_fast_variance`, and InstanceNorm's affine default.
"""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn
from jaxlearn.nn import linen as jnn_linen


def numpy_bn_train(x, gamma, beta, running_mean, running_var, momentum, unbiased_running):
  """The paper's training transform over every axis but the last, and an EMA of the statistics.

  `momentum` is flax's (weight of the old value); `unbiased_running` multiplies the batch
  variance by n/(n-1) in the running average (PyTorch).
  """
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  n = np.prod([x.shape[a] for a in axes])
  mu = x.mean(axes)
  var = ((x - mu) ** 2).mean(axes)
  y = gamma * (x - mu) / np.sqrt(var + 1e-5) + beta
  stat_var = var * n / (n - 1) if unbiased_running else var
  return (y, momentum * running_mean + (1 - momentum) * mu,
          momentum * running_var + (1 - momentum) * stat_var)


def _data(shape, seed=0):
  return (2.0 * np.random.default_rng(seed).normal(size=shape) + 0.7).astype(np.float32)


@pytest.mark.parity
@pytest.mark.parametrize("image", [False, True], ids=["1d", "2d"])
def test_train_and_eval_match_the_paper_and_torch_with_explicit_conventions(image):
  torch = pytest.importorskip("torch")
  c = 3
  shape = (4, 2, 2, c) if image else (6, c)
  gamma = np.array([1.5, 0.5, 2.0], np.float32)
  beta = np.array([0.1, -0.2, 0.3], np.float32)
  xs = [_data(shape, seed) for seed in range(3)]

  # flax (jaxlearn's subclass) with PyTorch's momentum converted and the two-pass variance.
  bn = jnn_linen.BatchNorm(momentum=jnn.momentum_from_torch(0.1), use_fast_variance=False)
  variables = {"params": {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)},
               "batch_stats": {"mean": jnp.zeros(c), "var": jnp.ones(c)}}
  step = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=False, mutable=["batch_stats"]))
  evaluate = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=True))

  module = (torch.nn.BatchNorm2d if image else torch.nn.BatchNorm1d)(c)  # momentum 0.1, eps 1e-5
  with torch.no_grad():
    module.weight.copy_(torch.from_numpy(gamma))
    module.bias.copy_(torch.from_numpy(beta))
  to_torch = lambda x: torch.from_numpy(np.moveaxis(x, -1, 1).copy())  # NHWC -> NCHW
  from_torch = lambda t: np.moveaxis(t.detach().numpy(), 1, -1)

  ref_flax = ref_torch = (np.zeros(c), np.ones(c))
  for x in xs[:2]:  # two training steps
    y, updates = step(variables, jnp.asarray(x))
    variables = {**variables, **updates}
    y_ref, *ref_flax = numpy_bn_train(x, gamma, beta, *ref_flax, 0.9, unbiased_running=False)
    _, *ref_torch = numpy_bn_train(x, gamma, beta, *ref_torch, 0.9, unbiased_running=True)
    module.train()
    y_torch = from_torch(module(to_torch(x)))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)  # the paper's transform
    np.testing.assert_allclose(y, y_torch, rtol=1e-5, atol=1e-5)
  stats = variables["batch_stats"]
  np.testing.assert_allclose(stats["mean"], ref_flax[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(module.running_mean.numpy(), ref_flax[0], rtol=1e-5, atol=1e-6)
  # flax: EMA of the biased variance; PyTorch: of the unbiased one (n / (n - 1)).
  np.testing.assert_allclose(stats["var"], ref_flax[1], rtol=1e-5)
  np.testing.assert_allclose(module.running_var.numpy(), ref_torch[1], rtol=1e-5)
  assert not np.allclose(stats["var"], module.running_var.numpy(), rtol=1e-3)

  # Evaluation uses the stored running variance as is, in both: loading PyTorch's state into flax
  # gives PyTorch's evaluation outputs.
  module.eval()
  loaded = jax.tree.map(jnp.asarray, jnn.variables_from_torch(module))
  y_eval = evaluate(loaded, jnp.asarray(xs[2]))
  np.testing.assert_allclose(y_eval, from_torch(module(to_torch(xs[2]))), rtol=1e-5, atol=1e-5)


def test_gradient_flows_through_the_batch_statistics_as_in_the_paper():
  """dL/dx of section 3: (γ/σ)(dy − mean(dy) − x̂·mean(dy·x̂)) per feature."""
  x = _data((8, 3))
  dy = np.random.default_rng(1).normal(size=x.shape)
  gamma = np.array([1.5, 0.5, 2.0])
  bn = jnn_linen.BatchNorm(use_fast_variance=False)
  variables = {"params": {"scale": jnp.asarray(gamma, jnp.float32), "bias": jnp.zeros(3)},
               "batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
  forward = lambda x: bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  grad = jax.grad(lambda x: jnp.sum(forward(x)[0] * dy))(jnp.asarray(x))

  x64 = x.astype(np.float64)
  mu, var = x64.mean(0), x64.var(0)
  sigma = np.sqrt(var + 1e-5)
  x_hat = (x64 - mu) / sigma
  expected = gamma / sigma * (dy - dy.mean(0) - x_hat * (dy * x_hat).mean(0))
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_fast_variance_loses_precision_on_offset_inputs():
  """`use_fast_variance=True` (flax's default) computes E[x²] − E[x]² in float32."""
  x = (1000.0 + 0.01 * np.random.default_rng(2).normal(size=(64, 2))).astype(np.float32)
  true_var = x.astype(np.float64).var(0)
  errors = {}
  for fast in (True, False):
    bn = linen.BatchNorm(momentum=0.0, use_fast_variance=fast)  # running var = the batch var
    variables = bn.init(jax.random.key(0), x, use_running_average=True)
    _, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    errors[fast] = np.max(np.abs(updates["batch_stats"]["var"] - true_var) / true_var)
  assert errors[False] < 1e-3
  assert errors[True] > 100 * errors[False]


@pytest.mark.parity
def test_instance_norm_affine_and_epsilon_defaults_differ_from_torch():
  torch = pytest.importorskip("torch")
  x = (0.01 * _data((2, 4, 4, 3))).astype(np.float32)  # small variance: epsilon matters
  flax_default = nnx.InstanceNorm(3, rngs=nnx.Rngs(0))
  assert flax_default.scale is not None and flax_default.bias is not None  # affine on
  torch_default = torch.nn.InstanceNorm2d(3)
  assert torch_default.weight is None and torch_default.eps == 1e-5  # affine off
  y_torch = torch_default(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
  y_torch = np.moveaxis(y_torch, 1, -1)
  matched = nnx.InstanceNorm(3, epsilon=1e-5, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(matched(jnp.asarray(x)), y_torch, rtol=1e-4, atol=1e-4)
  assert flax_default.epsilon == 1e-6
  assert not np.allclose(flax_default(jnp.asarray(x)), y_torch, rtol=1e-4, atol=1e-4)


def test_hyperparameter_checks_and_momentum_conversion():
  assert jnn.momentum_from_torch(0.1) == pytest.approx(0.9)
  assert jnn.momentum_from_torch(1.0) == 0.0
  for bad in (None, -0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="momentum"):
      jnn.momentum_from_torch(bad)
  for kwargs, name in (({"momentum": 1.5}, "momentum"), ({"momentum": float("nan")}, "momentum"),
                       ({"epsilon": 0.0}, "epsilon"), ({"epsilon": float("inf")}, "epsilon")):
    with pytest.raises(ValueError, match=name):
      jnn.BatchNorm(3, rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match=name):
      jax.eval_shape(lambda: jnn_linen.BatchNorm(**kwargs).init(
          jax.random.key(0), jnp.ones((2, 3)), use_running_average=True))
  with pytest.raises(ValueError, match="num_features"):
    jnn.BatchNorm(0, rngs=nnx.Rngs(0))
  # The subclasses are flax's layers: the same numbers.
  assert issubclass(jnn.BatchNorm, nnx.BatchNorm)
  assert issubclass(jnn_linen.BatchNorm, linen.BatchNorm)
