"""ULR (likelihood-ratio) gradient estimates against closed forms and backprop, and the proof that
no derivative is taken.

References: for one linear layer with L = 1/2 ||v - t||^2 and v = W x + b + z, the expected
estimate is the exact gradient x^T (W x + b - t) / batch (Stein's identity), checked within five
closed-form standard errors; the backprop gradient of a small MLP (the estimate's cosine with it
must grow with the number of noisy copies); the sentinels of tests/local/_checks.py (the step runs
on blocks whose differentiation raises, where a jax.grad rule raises).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import local
from jaxlearn._compile import fast_jit
from tests.local._checks import Differentiated, sentinel_block

C = 3


def half_squared_error(v, t):
  return 0.5 * jnp.sum(jnp.square(v - t), axis=-1)


def test_expected_estimate_is_the_exact_gradient_on_a_linear_gaussian_toy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3)).astype(np.float32)
  t = rng.normal(size=(2, 2)).astype(np.float32)
  model = local.LocalModel((local.dense_block(2, None),))
  params = ({"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
             "bias": jnp.asarray(rng.normal(size=2), jnp.float32)},)
  n = 6000  # antithetic pairs: n / 2
  estimate = fast_jit(lambda key: local.likelihood_ratio_grads(
      model, params, x, t, key, sigma=0.3, num_samples=n, baseline=False,
      loss_fn=half_squared_error)[0][0])(jax.random.PRNGKey(0))
  w, b = np.asarray(params[0]["kernel"], np.float64), np.asarray(params[0]["bias"], np.float64)
  r = x @ w + b - t  # residual, (batch, out)
  exact_w, exact_b = x.T @ r / len(x), r.mean(0)
  # One antithetic pair of example e gives x_e z (r_e . z) / sigma^2 (quadratic loss): entry (i, j)
  # has variance x_ei^2 (|r_e|^2 + r_ej^2); the estimate averages n/2 pairs over the batch.
  var_w = sum(np.outer(x[e] ** 2, (r[e] ** 2).sum() + r[e] ** 2) for e in range(len(x)))
  var_b = sum((r[e] ** 2).sum() + r[e] ** 2 for e in range(len(x)))
  se_w = np.sqrt(var_w / (n / 2)) / len(x)
  se_b = np.sqrt(var_b / (n / 2)) / len(x)
  assert np.all(np.abs(np.asarray(estimate["kernel"]) - exact_w) < 5 * se_w)
  assert np.all(np.abs(np.asarray(estimate["bias"]) - exact_b) < 5 * se_b)
  assert se_w.max() < 0.05 * np.abs(exact_w).max()  # the check has power


def test_the_noise_free_baseline_keeps_the_estimate_unbiased():
  # Without antithetic pairs the baseline does not cancel: (L(z) - L_0) z x / sigma^2 per copy.
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 3)).astype(np.float32)
  t = rng.normal(size=(2, 2)).astype(np.float32)
  model = local.LocalModel((local.dense_block(2, None),))
  params = ({"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
             "bias": jnp.asarray(rng.normal(size=2), jnp.float32)},)
  estimate = lambda key: local.likelihood_ratio_grads(
      model, params, x, t, key, sigma=0.3, num_samples=512, antithetic=False, baseline=True,
      loss_fn=half_squared_error)[0][0]["kernel"]
  replicates = np.asarray(fast_jit(jax.vmap(estimate))(jax.random.split(jax.random.PRNGKey(1),
                                                                          32)), np.float64)
  w, b = np.asarray(params[0]["kernel"], np.float64), np.asarray(params[0]["bias"], np.float64)
  exact = x.T @ (x @ w + b - t) / len(x)
  standard_error = replicates.std(0, ddof=1) / np.sqrt(len(replicates))
  assert np.all(np.abs(replicates.mean(0) - exact) < 5 * standard_error)
  assert standard_error.max() < 0.1 * np.abs(exact).max()  # the check has power


def test_cosine_with_backprop_grows_with_the_number_of_copies():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(16, 6)).astype(np.float32)
  y = rng.integers(0, C, size=16).astype(np.int32)
  model = local.LocalModel((local.dense_block(8, jnp.tanh), local.dense_block(C, None)))
  params, _ = fast_jit(lambda k: model.init(k, local.LikelihoodRatio(), {"x": x, "y": y}))(
      jax.random.PRNGKey(0))
  blocks = params.blocks

  def bp_loss(p):
    h = model.outputs(p, local.LikelihoodRatio(), local.LocalContext({"x": x}, None, None),
                      detach=False)[-1]
    return optax.losses.softmax_cross_entropy_with_integer_labels(h, y).mean()

  true = jnp.concatenate([g.ravel() for g in jax.tree.leaves(jax.grad(bp_loss)(blocks))])

  def mean_cosine(num_samples):
    def cosine(key):
      grads = local.likelihood_ratio_grads(model, blocks, x, y, key, sigma=0.05,
                                           num_samples=num_samples)[0]
      flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
      return flat @ true / (jnp.linalg.norm(flat) * jnp.linalg.norm(true))
    return jnp.mean(jax.vmap(cosine)(jax.random.split(jax.random.PRNGKey(2), 4)))

  small, large = fast_jit(lambda: (mean_cosine(4), mean_cosine(128)))()
  assert float(small) < float(large) and float(large) > 0.6


def test_forward_only_step_runs_where_any_derivative_raises():
  model = local.LocalModel((sentinel_block(5), sentinel_block(C, activation=None)))
  batch = {"x": np.ones((4, 6), np.float32), "y": np.array([0, 1, 2, 0], np.int32)}
  rule = local.LikelihoodRatio(num_samples=4)
  optimizer = optax.sgd(0.1)
  state = fast_jit(lambda k: local.init_train_state(model, rule, optimizer, k, batch))(
      jax.random.PRNGKey(0))
  new, metrics = local.local_train_step(model, rule, optimizer)(state, batch, jax.random.PRNGKey(1))
  assert bool(metrics["grads_finite"])
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.params),
                                                    jax.tree.leaves(state.params))]
  assert all(changed)
  np.testing.assert_allclose(metrics["block_losses"][0], 0.0)  # the global loss sits on the last
  # The same model trained by jax.grad (any autodiff rule) hits the sentinel.

  class Autodiff(local.LocalRule):
    def block_loss(self, index, output, head, ctx):
      return jnp.mean(output ** 2)

  with pytest.raises(Differentiated):
    local.local_train_step(model, Autodiff(), optimizer)(state, batch, jax.random.PRNGKey(1))


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="sigma"):
    local.LikelihoodRatio(sigma=0.0)
  with pytest.raises(ValueError, match="num_samples"):
    local.LikelihoodRatio(num_samples=3)  # odd with antithetic pairs
  with pytest.raises(ValueError, match="num_samples"):
    local.LikelihoodRatio(num_samples=0, antithetic=False)
  model = local.LocalModel((local.from_nnx(lambda rngs: __import__("flax").nnx.Linear(
      2, 2, use_bias=False, rngs=rngs)),))
  params = model.blocks[0].init(jax.random.PRNGKey(0), None)
  with pytest.raises(ValueError, match="dense blocks"):
    local.likelihood_ratio_grads(model, (params,), jnp.ones((1, 2)), jnp.zeros(1, jnp.int32),
                                 jax.random.PRNGKey(0))
