"""The backward-statistics helpers (`jaxlearn.nn.backward_stats`) on a tiny toy layer.

The toy layer y = w * x has one backward statistic s per feature. Its backward returns
dx = g * w - s (a correction that uses the statistic) and the increment mean(g * x) over the batch
(averaged over `axis_name`). Every expected value below is computed with NumPy.
"""

from __future__ import annotations

import functools

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlearn import nn as jnn


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _toy(x, w, s, axis_name):
  del s, axis_name
  return x * w


def _toy_fwd(x, w, s, axis_name):
  del axis_name
  return x * w, (x, w, s)


def _toy_bwd(axis_name, residuals, g):
  x, w, s = residuals
  increment = jnn.sync_increment(jnp.mean(g * x, axis=0), axis_name)
  return g * w - s, jnp.sum(g * x, axis=0), increment


_toy.defvjp(_toy_fwd, _toy_bwd)


class Toy(nnx.Module):
  def __init__(self, features, axis_name=None):
    self.w = nnx.Param(jnp.asarray(np.linspace(0.5, 1.5, features), jnp.float32))
    self.s = jnn.BackwardStat(jnp.asarray(np.linspace(-0.2, 0.3, features), jnp.float32))
    self.axis_name = axis_name

  def __call__(self, x):
    return _toy(x, self.w[...], self.s[...], self.axis_name)


class LinenToy(linen.Module):
  @linen.compact
  def __call__(self, x):
    f = x.shape[-1]
    w = self.param("w", lambda _: jnp.asarray(np.linspace(0.5, 1.5, f), jnp.float32))
    s = self.variable(jnn.BACKWARD_STATS, "s",
                      lambda: jnp.asarray(np.linspace(-0.2, 0.3, f), jnp.float32))
    return _toy(x, w, s.value, None)


X = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
T = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)  # loss = sum(T * y)
W0 = np.linspace(0.5, 1.5, 3).astype(np.float32)
S0 = np.linspace(-0.2, 0.3, 3).astype(np.float32)
WRT = nnx.DiffState(0, jnn.PARAMS_AND_BACKWARD_STATS)


def _loss(model, x, t):
  return jnp.sum(t * model(x))


def test_apply_adds_the_increment_once_and_returns_the_parameter_gradients():
  model = Toy(3)
  grads = nnx.grad(_loss, argnums=WRT)(model, X, T)
  np.testing.assert_allclose(model.s[...], S0)  # differentiating changes nothing
  param_grads = jnn.apply_backward_stats(model, grads)
  np.testing.assert_allclose(model.s[...], S0 + np.mean(T * X, axis=0), rtol=1e-6)
  assert [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      nnx.to_pure_dict(param_grads))] == ["['w']"]
  np.testing.assert_allclose(param_grads["w"][...], np.sum(T * X, axis=0), rtol=1e-6)
  # The parameter gradients go to an optimizer over nnx.Param; it never holds the statistic.
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  optimizer.update(model, param_grads)
  np.testing.assert_allclose(model.s[...], S0 + np.mean(T * X, axis=0), rtol=1e-6)
  assert not jax.tree.leaves(nnx.filter_state(nnx.state(optimizer), jnn.BackwardStat))


def test_two_calls_add_two_increments_and_plain_grad_changes_nothing():
  model = Toy(3)
  x2 = 2.0 * X
  twice = lambda m: jnp.sum(T * m(X)) + jnp.sum(T * m(x2))
  jnn.apply_backward_stats(model, nnx.grad(twice, argnums=WRT)(model))
  expected = S0 + np.mean(T * X, axis=0) + np.mean(T * x2, axis=0)
  np.testing.assert_allclose(model.s[...], expected, rtol=1e-6)

  model = Toy(3)
  grads = nnx.grad(_loss)(model, X, T)  # parameters only
  np.testing.assert_allclose(model.s[...], S0)
  with pytest.raises(ValueError, match="expects"):  # the statistics would never move
    jnn.apply_backward_stats(model, grads)


def test_custom_input_gradient_uses_the_statistic():
  grad_x = jax.grad(lambda x: jnp.sum(T * Toy(3)(x)))(jnp.asarray(X))
  np.testing.assert_allclose(grad_x, T * W0 - S0, rtol=1e-6)


def test_linen_helper_is_pure_and_matches_nnx():
  module = LinenToy()
  variables = module.init(jax.random.key(0), X)
  assert set(variables) == {"params", jnn.BACKWARD_STATS}
  loss = lambda diff, x: jnp.sum(T * module.apply(diff, x))
  grads = jax.grad(loss)(variables, X)
  new, param_grads = jnn.apply_backward_stats_to_variables(variables, grads)
  np.testing.assert_allclose(new[jnn.BACKWARD_STATS]["s"], S0 + np.mean(T * X, 0), rtol=1e-6)
  np.testing.assert_allclose(variables[jnn.BACKWARD_STATS]["s"], S0)  # input not mutated
  assert set(param_grads) == {"params"}
  with pytest.raises(ValueError, match="expects"):
    jnn.apply_backward_stats_to_variables({"params": variables["params"]}, grads)


def test_multisteps_statistics_move_every_micro_step_parameters_every_k():
  # The documented semantics: apply the increments after every micro-step (as the PyTorch layers
  # do in every backward); optax.MultiSteps accumulates only the parameter gradients.
  module = LinenToy()
  variables = module.init(jax.random.key(0), X)
  tx = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2)
  opt_state = tx.init(variables["params"])

  @jax.jit
  def step(variables, opt_state, x):
    grads = jax.grad(lambda d: jnp.sum(T * module.apply(d, x)))(variables)
    variables, param_grads = jnn.apply_backward_stats_to_variables(variables, grads)
    updates, opt_state = tx.update(param_grads["params"], opt_state, variables["params"])
    return {**variables, "params": optax.apply_updates(variables["params"], updates)}, opt_state

  xs = [X, 0.5 * X + 1.0]
  s, grads_w = S0.copy(), []
  for micro_step, x in enumerate(xs):
    variables, opt_state = step(variables, opt_state, jnp.asarray(x))
    s = s + np.mean(T * x, axis=0)
    grads_w.append(np.sum(T * x, axis=0))
    np.testing.assert_allclose(variables[jnn.BACKWARD_STATS]["s"], s, rtol=1e-6)
    expected_w = W0 if micro_step == 0 else W0 - 0.1 * (grads_w[0] + grads_w[1]) / 2
    np.testing.assert_allclose(variables["params"]["w"], expected_w, rtol=1e-6)


def test_axis_name_every_device_holds_the_full_batch_increment():
  shards = jnp.asarray(X.reshape(2, 2, 3))
  targets = jnp.asarray(T.reshape(2, 2, 3))

  def per_device(x, t):
    model = Toy(3, axis_name="batch")
    jnn.apply_backward_stats(model, nnx.grad(_loss, argnums=WRT)(model, x, t))
    return model.s[...]

  s = jax.jit(jax.vmap(per_device, axis_name="batch"))(shards, targets)
  full = S0 + np.mean(T * X, axis=0)  # equal shards: the mean of the shard means
  np.testing.assert_allclose(s, np.stack([full, full]), rtol=1e-6)

  # Differentiating OUTSIDE the vmap (the statistic broadcast to the devices) is not supported:
  # the backward's collective has no bound axis there, and JAX says so.
  def outside(s):
    run = lambda x, t: jnp.sum(t * _toy(x, jnp.asarray(W0), s, "batch"))
    return jnp.sum(jax.vmap(run, axis_name="batch")(shards, targets))

  with pytest.raises(NameError, match="unbound axis name"):
    jax.grad(outside)(jnp.asarray(S0))
