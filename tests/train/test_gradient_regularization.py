"""F-GR, B-GR and DB-GR (arXiv:2210.02720) against the penalised loss and each other.

The reference is the definition: the gradient of L + (gamma/2)|grad L|^2, taken by reverse-over-
reverse `jax.grad` of that loss as written here, independently of the module's jvp-of-grad.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import finite_difference_grad_reg, gradient_regularized_grad

RNG = np.random.default_rng(0)
X = RNG.normal(size=(12, 3)).astype(np.float32)
Y = RNG.normal(size=12).astype(np.float32)
PARAMS = {
    "w1": (0.7 * RNG.normal(size=(3, 4))).astype(np.float32),
    "w2": (0.7 * RNG.normal(size=4)).astype(np.float32),
}


def loss_fn(params, x, y):
  """A tanh network: non-quadratic, so finite differences have a truncation error."""
  return jnp.mean((jnp.tanh(x @ params["w1"]) @ params["w2"] - y) ** 2)


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])


def test_exact_equals_grad_of_the_penalised_loss_and_finite_differences_converge_at_order_one():
  gamma = 0.3
  epsilons = np.array([0.08, 0.04, 0.02], np.float32)

  def penalised(params, x, y):
    g = jax.grad(loss_fn)(params, x, y)
    return loss_fn(params, x, y) + 0.5 * gamma * sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g))

  def all_at_once(params, x, y, eps):
    _, _, exact = gradient_regularized_grad(loss_fn, params, x, y, gamma=gamma, method="exact")
    forward = jax.vmap(lambda e: gradient_regularized_grad(
        loss_fn, params, x, y, gamma=gamma, epsilon=e, method="forward")[2])(eps)
    backward = jax.vmap(lambda e: gradient_regularized_grad(
        loss_fn, params, x, y, gamma=gamma, epsilon=e, method="backward")[2])(eps)
    return jax.grad(penalised)(params, x, y), exact, forward, backward

  reference, exact, forward, backward = fast_jit(all_at_once)(PARAMS, X, Y, epsilons)
  reference, exact = _flat(reference), _flat(exact)
  np.testing.assert_allclose(exact, reference, rtol=2e-5, atol=1e-6)
  # The penalty actually changes the gradient (else the comparisons below are vacuous).
  plain = _flat(jax.grad(loss_fn)(PARAMS, X, Y))
  assert np.linalg.norm(exact - plain) > 0.05 * np.linalg.norm(plain)

  errors = {}
  for name, stacked in (("forward", forward), ("backward", backward)):
    rows = [_flat(jax.tree.map(lambda v, i=i: v[i], stacked)) for i in range(len(epsilons))]
    errors[name] = np.array([np.linalg.norm(r - exact) for r in rows])
    # O(epsilon): halving epsilon halves the error.
    np.testing.assert_allclose(errors[name][:-1] / errors[name][1:], 2.0, rtol=0.1)
    errors[name + "_rows"] = rows
  # The leading errors are opposite (+- gamma eps/2 D^3L[g, g]): the average is O(epsilon^2).
  central = [np.linalg.norm((f + b) / 2 - exact)
             for f, b in zip(errors["forward_rows"], errors["backward_rows"])]
  assert central[-1] < 0.1 * errors["forward"][-1]
  assert central[0] / central[1] > 3.0


def test_gamma_equal_epsilon_is_the_gradient_at_the_ascended_point_and_normalized_ascent():
  eps = 0.05

  def run(params, x, y):
    _, g, fgr = gradient_regularized_grad(loss_fn, params, x, y, gamma=eps, epsilon=eps)
    _, _, normalized = gradient_regularized_grad(
        loss_fn, params, x, y, gamma=0.2, epsilon=eps, normalize_ascent=True)
    return g, fgr, normalized

  g, fgr, normalized = fast_jit(run)(PARAMS, X, Y)
  g_flat = _flat(g)
  # gamma = epsilon: (1 - 1) g + grad L(theta + eps g), the unnormalised SAM gradient.
  ascended = jax.tree.map(lambda p, d: p + eps * d, PARAMS, g)
  np.testing.assert_allclose(_flat(fgr), _flat(jax.grad(loss_fn)(ascended, X, Y)), rtol=1e-5,
                             atol=1e-6)
  # normalize_ascent: step h = eps/|g|, coefficient gamma/h, by hand.
  h = eps / np.linalg.norm(g_flat)
  moved = _flat(jax.grad(loss_fn)(jax.tree.map(lambda p, d: p + h * d, PARAMS, g), X, Y))
  by_hand = (1 - 0.2 / h) * g_flat + (0.2 / h) * moved
  np.testing.assert_allclose(_flat(normalized), by_hand, rtol=1e-4, atol=1e-5)


def test_the_step_applies_the_regularized_gradient():
  training = finite_difference_grad_reg(loss_fn, optax.sgd(0.5), gamma=0.1, epsilon=0.1,
                                        method="backward")
  state = training.init(PARAMS, jax.random.key(0))
  new, metrics = fast_jit(training.step)(state, (X, Y), jax.random.key(1))
  value, g, reg = gradient_regularized_grad(loss_fn, PARAMS, X, Y, gamma=0.1, epsilon=0.1,
                                            method="backward")
  np.testing.assert_allclose(_flat(new.params), _flat(PARAMS) - 0.5 * _flat(reg), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(_flat(g)), rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"gamma": -0.1, "epsilon": 0.1}, "gamma"),
    ({"gamma": float("nan"), "epsilon": 0.1}, "gamma"),
    ({"gamma": 0.1}, "epsilon"),
    ({"gamma": 0.1, "epsilon": 0.0}, "epsilon"),
    ({"gamma": 0.1, "epsilon": 0.1, "method": "exact"}, "epsilon"),
    ({"gamma": 0.1, "method": "exact", "normalize_ascent": True}, "normalize_ascent"),
    ({"gamma": 0.1, "epsilon": 0.1, "method": "central"}, "method"),
    ({"gamma": 0.1, "epsilon": 0.1, "normalize_ascent": 1}, "normalize_ascent"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    finite_difference_grad_reg(loss_fn, optax.sgd(0.1), **kwargs)
