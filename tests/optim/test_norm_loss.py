"""Norm loss: the term equals the gradient of factor * sum_units (||w_u|| - 1)^2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn import optim


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"dense": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
          "conv": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
          "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}


def _penalty(params, factor):
  total = 0.0
  for p in jax.tree.leaves(params):
    norms = optim.unit_norm(p)  # per output unit (last axis), whole leaf for vectors
    total = total + factor * jnp.sum((norms - 1.0) ** 2)
  return total


def test_term_is_the_gradient_of_the_unit_norm_penalty():
  params = _params()
  transform = optim.add_norm_loss(0.3, eps=1e-12)
  zeros = jax.tree.map(jnp.zeros_like, params)
  term, _ = jax.jit(transform.update)(zeros, transform.init(params), params)
  want = jax.grad(_penalty)(params, 0.3)
  for k in params:
    np.testing.assert_allclose(term[k], want[k], rtol=1e-5, atol=1e-7)


def test_unit_norm_matches_numpy_per_output_unit():
  params = _params(1)
  np.testing.assert_allclose(optim.unit_norm(params["dense"])[0],
                             np.linalg.norm(np.asarray(params["dense"]), axis=0), rtol=1e-6)
  np.testing.assert_allclose(
      optim.unit_norm(params["conv"]).ravel(),
      np.linalg.norm(np.asarray(params["conv"]).reshape(-1, 4), axis=0), rtol=1e-6)
  np.testing.assert_allclose(optim.unit_norm(params["bias"]),
                             np.linalg.norm(np.asarray(params["bias"])), rtol=1e-6)
  torch_layout = optim.unit_norm(params["dense"], channel_axis=0)
  np.testing.assert_allclose(torch_layout[:, 0], np.linalg.norm(params["dense"], axis=1), rtol=1e-6)


def test_unit_norm_weights_get_no_term_and_zero_units_stay_finite():
  unit = jnp.eye(3)  # every column has norm 1
  params = {"w": unit, "z": jnp.zeros((2, 3)), "half": jnp.full((2, 2), 0.5, jnp.bfloat16)}
  transform = optim.add_norm_loss(1e-4)
  zeros = jax.tree.map(jnp.zeros_like, params)
  term, _ = transform.update(zeros, transform.init(params), params)
  np.testing.assert_allclose(term["w"], 0.0, atol=1e-10)
  np.testing.assert_array_equal(term["z"], 0.0)
  assert term["half"].dtype == jnp.bfloat16


def test_needs_params_and_checks_arguments():
  transform = optim.add_norm_loss()
  with pytest.raises(ValueError, match="params"):
    transform.update({"w": jnp.ones(3)}, transform.init({"w": jnp.ones(3)}))
  with pytest.raises(ValueError, match="factor"):
    optim.add_norm_loss(-1.0)
  with pytest.raises(ValueError, match="eps"):
    optim.add_norm_loss(eps=0.0)
