"""`scale_by_per_leaf`: u_l * m_l with static Python floats, as PyTorch parameter groups' lr."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import scale_by_per_leaf

PARAMS = {"a": {"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)},
          "c": np.ones(4, np.float32)}


def test_full_tree_prefix_tree_and_function_of_the_shapes():
  grads = jax.tree.map(lambda p: np.arange(p.size, dtype=np.float32).reshape(p.shape) - 1.0,
                       PARAMS)
  full = {"a": {"w": 0.5, "b": 2.0}, "c": 0.0}
  prefix = {"a": 3.0, "c": 0.25}
  by_shape = lambda tree: jax.tree.map(lambda p: 1.0 / p.shape[0], tree)
  for multipliers, expected in ((full, full), (prefix, {"a": {"w": 3.0, "b": 3.0}, "c": 0.25}),
                                (by_shape, {"a": {"w": 1 / 3, "b": 0.5}, "c": 0.25})):
    opt = scale_by_per_leaf(multipliers=multipliers)
    updates, _ = opt.update(grads, opt.init(PARAMS))
    for u, g, m in zip(jax.tree.leaves(updates), jax.tree.leaves(grads),
                       jax.tree.leaves(expected)):
      np.testing.assert_allclose(u, m * g, rtol=1e-7)


def test_equals_separate_parameter_group_learning_rates():
  """SGD with lr 0.1 and multipliers == plain SGD with lr 0.1 * m per leaf (a PyTorch group)."""
  grads = jax.tree.map(lambda p: np.full(p.shape, 2.0, np.float32), PARAMS)
  multipliers = {"a": {"w": 0.5, "b": 4.0}, "c": 1.0}
  opt = optax.chain(scale_by_per_leaf(multipliers=multipliers), optax.sgd(0.1, momentum=0.9))
  state = opt.init(PARAMS)
  for _ in range(2):
    updates, state = opt.update(grads, state)
  for u, m in zip(jax.tree.leaves(updates), jax.tree.leaves(multipliers)):
    np.testing.assert_allclose(u, -0.1 * m * 2.0 * 1.9, rtol=1e-6)  # second momentum step


def test_dtype_is_kept_and_bad_multipliers_raise():
  opt = scale_by_per_leaf(multipliers={"x": 0.5})
  updates, _ = opt.update({"x": jnp.ones(3, jnp.bfloat16)}, optax.EmptyState())
  assert updates["x"].dtype == jnp.bfloat16
  for bad in ({"x": -1.0}, {"x": float("nan")}, {"x": "1"}, {"x": True}, {}):
    with pytest.raises(ValueError, match="multipliers"):
      scale_by_per_leaf(multipliers=bad)
  with pytest.raises(ValueError, match="multipliers"):
    scale_by_per_leaf(multipliers={"y": 1.0}).init({"x": jnp.ones(2)})
  with pytest.raises(ValueError, match="multipliers"):
    scale_by_per_leaf(multipliers=lambda tree: {"x": float("inf")}).init({"x": jnp.ones(2)})
