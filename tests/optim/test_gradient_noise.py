"""Annealed gradient noise: the paper's variance schedule, measured on the noise optax draws."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim

N = 200_000  # coordinates per leaf: the sample variance is then within ~0.3% (1 sigma)
FACTORIES = {
    "jaxlearn": lambda eta, gamma, key: optim.add_gradient_noise(eta, gamma, key),
    "optax": lambda eta, gamma, key: optax.add_noise(eta, gamma, key),
}


def _noise_per_step(transform, steps, grads=None):
  grads = grads if grads is not None else {"a": jnp.zeros(N), "b": jnp.zeros(N)}
  state = transform.init(grads)
  update = transform.update
  draws = []
  for _ in range(steps):
    updates, state = update(grads, state)
    draws.append(jax.tree.map(lambda u, g: np.asarray(u - g, np.float64), updates, grads))
  return draws


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_variance_is_eta_over_one_plus_t_to_the_gamma_with_t_from_zero(factory):
  eta, gamma = 0.3, 0.55
  draws = _noise_per_step(factory(eta, gamma, 0), steps=10)
  for t, noise in enumerate(draws):
    expected = eta / (1.0 + t) ** gamma  # paper: sigma_t^2 = eta / (1 + t)^gamma
    for leaf in noise.values():
      assert abs(leaf.var() / expected - 1.0) < 0.02, (t, leaf.var(), expected)
      assert abs(leaf.mean()) < 5 * np.sqrt(expected / N)
      # Gaussian: about 68.27% of the draws within one standard deviation.
      assert abs(np.mean(np.abs(leaf) < np.sqrt(expected)) - 0.6827) < 0.005
  # t counted from 1 would give eta / 2^gamma = 0.68 eta at the first step: clearly excluded.
  assert abs(draws[0]["a"].var() / eta - 1.0) < 0.02


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_noise_is_independent_across_leaves_and_steps(factory):
  draws = _noise_per_step(factory(1.0, 0.55, 3), steps=2)
  corr = lambda x, y: np.corrcoef(x, y)[0, 1]
  limit = 5 / np.sqrt(N)  # five standard errors of a zero correlation
  assert abs(corr(draws[0]["a"], draws[0]["b"])) < limit
  assert abs(corr(draws[0]["a"], draws[1]["a"])) < limit
  assert abs(corr(draws[0]["b"], draws[1]["b"])) < limit


def test_noise_is_added_to_the_gradient_and_is_reproducible_per_key():
  grads = {"a": jnp.linspace(-1.0, 1.0, N)}
  first = _noise_per_step(optim.add_gradient_noise(0.01, 0.55, 7), 1, grads)[0]["a"]
  again = _noise_per_step(optim.add_gradient_noise(0.01, 0.55, 7), 1, grads)[0]["a"]
  other = _noise_per_step(optim.add_gradient_noise(0.01, 0.55, 8), 1, grads)[0]["a"]
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)
  assert abs(first.var() / 0.01 - 1.0) < 0.02  # the gradient itself passed through unchanged
  zero = _noise_per_step(optim.add_gradient_noise(0.0, 0.55, 7), 1, grads)[0]["a"]
  np.testing.assert_array_equal(zero, 0.0)


def test_bfloat16_gradients_stay_bfloat16_also_under_inject_hyperparams():
  # A mixed-precision tree: inject_hyperparams then keeps its hyperparameters in float32.
  grads = {"w": jnp.ones(8, jnp.bfloat16), "scale": jnp.ones(2, jnp.float32)}
  ours = optim.inject_hyperparams(optim.add_gradient_noise)(eta=0.01, gamma=0.55, key=0)
  updates, _ = ours.update(grads, ours.init(grads))
  assert updates["w"].dtype == jnp.bfloat16
  theirs = optax.inject_hyperparams(optax.add_noise)(eta=0.01, gamma=0.55, key=0)
  assert theirs.update(grads, theirs.init(grads))[0]["w"].dtype == jnp.float32  # optax differs


def test_bad_arguments_raise_where_optax_returns_nan():
  grads = {"w": jnp.ones(3)}
  theirs = optax.add_noise(-1.0, 0.55, 0)
  assert np.isnan(theirs.update(grads, theirs.init(grads))[0]["w"]).all()
  with pytest.raises(ValueError, match="eta"):
    optim.add_gradient_noise(-1.0)
  with pytest.raises(ValueError, match="gamma"):
    optim.add_gradient_noise(0.01, gamma=-0.5)
  with pytest.raises(ValueError, match="key"):
    optim.add_gradient_noise(0.01, key=1.5)
