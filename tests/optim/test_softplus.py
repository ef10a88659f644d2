"""The softplus denominator and Sadam against a NumPy transcription of the official Sadam code."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim
from tests.optim._helpers import assert_bfloat16_gradients_give_the_float32_state


def test_softplus_denominator_values_floor_and_no_overflow():
  x = np.array([0.0, 1e-4, 0.01, 0.3, 10.0, 1e6], np.float32)
  got = np.asarray(optim.softplus_denominator(jnp.asarray(x), 50.0))
  np.testing.assert_allclose(got, np.logaddexp(0.0, 50.0 * x.astype(np.float64)) / 50.0, rtol=1e-6)
  assert got[0] == pytest.approx(math.log(2) / 50)  # the floor that bounds the step
  assert np.all(got >= x) and np.all(np.isfinite(got))


@pytest.mark.parametrize("beta", [1.0, 3.0, 50.0])
def test_nonnegative_softplus_denominator_is_within_two_ulps_of_softplus_denominator(beta):
  """The fast form y + log(1 + exp(-y)), y = beta x >= 0, that AdaPNM, Ranger21 and Sadam use:
  within 1 float32 ulp of jax.nn.softplus(y), so within 2 of `softplus_denominator` once both
  are divided by beta; equal (both y / beta) from y = 17 on."""
  from jaxlearn.optim.softplus import nonnegative_softplus_denominator
  x = np.concatenate([np.linspace(0.0, 50.0 / beta, 100_001), np.geomspace(1e-10, 1e4, 2_001)])
  x = jnp.asarray(x, jnp.float32)
  ulps = lambda a, b: np.max(np.abs(np.float64(a) - np.float64(b))
                             / np.spacing(np.abs(np.asarray(b, np.float32))))
  y = beta * x
  assert ulps(y + jnp.log(1 + jnp.exp(-y)), jax.nn.softplus(y)) <= 1
  fast = nonnegative_softplus_denominator(x, beta)
  assert ulps(fast, optim.softplus_denominator(x, beta)) <= 2
  large = np.asarray(y) >= 17
  np.testing.assert_array_equal(np.asarray(fast)[large],
                                np.asarray(optim.softplus_denominator(x, beta))[large])


def numpy_sadam(params, grads, lr, b1, b2, beta, amsgrad):
  """neilliang90/Sadam optimizer/Sadam.py (transformer='softplus', no weight decay), float64."""
  theta = {k: v.astype(np.float64) for k, v in params.items()}
  m, v, v_max = ({k: np.zeros_like(x) for k, x in theta.items()} for _ in range(3))
  for t, g in enumerate(grads, start=1):
    for k in theta:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      v_max[k] = np.maximum(v_max[k], v[k])
      denom = np.logaddexp(0.0, beta * np.sqrt(v_max[k] if amsgrad else v[k])) / beta
      theta[k] = theta[k] - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m[k] / denom
  return theta


@pytest.mark.parametrize("amsgrad,beta", [(True, 50.0), (False, 10.0)])
def test_sadam_matches_numpy_transcription(amsgrad, beta):
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
  grads = [{k: rng.normal(size=v.shape) * 0.05 for k, v in params.items()} for _ in range(6)]
  optimizer = optax.chain(optim.scale_by_sadam(0.9, 0.999, beta, amsgrad=amsgrad),
                          optax.scale_by_learning_rate(0.01))
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = optimizer.init(p)
  step = jax.jit(optimizer.update)
  for g in grads:
    updates, state = step(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, p)
    p = optax.apply_updates(p, updates)
  want = numpy_sadam(params, grads, 0.01, 0.9, 0.999, beta, amsgrad)
  for k in want:
    np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)


def test_bfloat16_gradients_give_the_float32_state():
  """The moments cast the gradient to float32 before (1 - b) * g (`_common.update_moment`); they
  used to round (1 - b) * g and g**2 to bfloat16 first."""
  assert_bfloat16_gradients_give_the_float32_state(optim.scale_by_sadam(), ("mu", "nu", "nu_max"))


@pytest.mark.parametrize("kwargs, name", [(dict(beta=0.0), "beta"), (dict(b1=1.0), "b1")])
def test_bad_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optim.scale_by_sadam(**kwargs)
