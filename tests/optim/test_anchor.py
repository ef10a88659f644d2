"""Decay toward an anchor (L2 / EWC) against autodiff of the penalty and hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim
from jaxlearn.data import merge_tasks, split_by_class, split_digits


def _params(seed):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=3), jnp.float32)}


def test_hand_computed_l2_pull():
  anchor = {"w": jnp.asarray([1.0, -2.0])}
  t = optim.decay_to_anchor(0.5)
  state = t.init(anchor)
  params = {"w": jnp.asarray([3.0, -2.5])}
  updates, _ = t.update({"w": jnp.asarray([0.1, 0.2])}, state, params)
  np.testing.assert_allclose(updates["w"], [0.1 + 0.5 * 2.0, 0.2 + 0.5 * -0.5])


def test_update_is_the_gradient_of_the_ewc_penalty():
  anchor, params, importance = _params(0), _params(1), jax.tree.map(jnp.abs, _params(2))
  grads = _params(3)
  t = optim.decay_to_anchor(0.3, weighted=True)
  state = optim.set_anchor(t.init(params), anchor, importance)
  updates, _ = jax.jit(t.update)(grads, state, params)
  penalty_grad = jax.grad(optim.anchor_penalty)(params, anchor, 0.3, importance)
  expected = jax.tree.map(jnp.add, grads, penalty_grad)
  for name in params:
    np.testing.assert_allclose(updates[name], expected[name], rtol=1e-6)


def test_init_anchors_at_the_starting_params_and_masking_and_set_anchor_work():
  params = _params(4)
  t = optax.chain(optim.decay_to_anchor(1.0, mask={"w": True, "b": False}), optax.sgd(1.0))
  state = t.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = t.update(zeros, state, params)  # at the anchor: no pull
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_array_equal(leaf, 0.0)
  moved = jax.tree.map(lambda p: p + 1.0, params)
  updates, _ = t.update(zeros, state, moved)
  np.testing.assert_allclose(updates["w"], -1.0, rtol=1e-6)  # sgd(1.0): -(strength * (moved - anchor))
  np.testing.assert_array_equal(updates["b"], 0.0)  # masked out
  state = optim.set_anchor(state, moved)
  updates, _ = t.update(zeros, state, moved)
  np.testing.assert_array_equal(updates["w"], 0.0)


def test_chain_with_sgd_converges_to_the_penalized_minimum():
  """min 0.5 (x - 4)^2 + (lam/2)(x - 0)^2 has x* = 4 / (1 + lam)."""
  t = optax.chain(optim.decay_to_anchor(3.0), optax.sgd(0.1))
  x = {"x": jnp.zeros(())}
  state = t.init(x)
  for _ in range(200):
    updates, state = t.update({"x": x["x"] - 4.0}, state, x)
    x = optax.apply_updates(x, updates)
  np.testing.assert_allclose(x["x"], 1.0, rtol=1e-5)


def test_fisher_diagonal_matches_a_loop_over_examples():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=6))
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  nll = lambda p, xi, yi: optax.losses.softmax_cross_entropy_with_integer_labels(
      xi @ p["w"], yi)
  fisher = optim.fisher_diagonal(nll, params, x, y)
  loop = np.mean([np.square(jax.grad(nll)(params, x[i], y[i])["w"]) for i in range(6)], axis=0)
  np.testing.assert_allclose(fisher["w"], loop, rtol=1e-5)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="strength"):
    optim.decay_to_anchor(-1.0)
  with pytest.raises(ValueError, match="strength"):
    optim.decay_to_anchor(lambda step: 0.1)
  t = optim.decay_to_anchor(1.0)
  with pytest.raises(ValueError, match="params"):
    t.update(_params(0), t.init(_params(0)))
  with pytest.raises(ValueError, match="importance"):
    optim.set_anchor(t.init(_params(0)), _params(1), _params(2))
  with pytest.raises(ValueError, match="importance"):
    optim.set_anchor(optim.decay_to_anchor(1.0, weighted=True).init(_params(0)), _params(1))


def test_split_digits_tasks_hold_only_their_classes():
  tasks = split_digits(2)
  assert len(tasks) == 5
  for t, task in enumerate(tasks):
    assert set(np.unique(task.y_train)) == {2 * t, 2 * t + 1}
    assert set(np.unique(task.y_test)) == {2 * t, 2 * t + 1}
  union = merge_tasks(tasks)
  assert len(union.x_train) + len(union.x_test) == 1797
  with pytest.raises(ValueError, match="tasks"):
    split_by_class(tasks[0], [(0, 1), (1, 2)])
  with pytest.raises(ValueError, match="classes_per_task"):
    split_digits(3)
