"""Half Fine-Tuning: the mask's counts, redraws, categories and determinism, by hand."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn import optim


def _params(n=6):
  return {f"w{i}": jnp.full((2, 2), float(i + 1)) for i in range(n)}


def _trained(transform, params, steps):
  """For each step, the set of leaves whose update is non-zero."""
  state = transform.init(params)
  ones = jax.tree.map(jnp.ones_like, params)
  update = jax.jit(transform.update)
  out = []
  for _ in range(steps):
    updates, state = update(ones, state, params)
    out.append(frozenset(k for k, u in updates.items() if bool(jnp.any(u != 0))))
  return out


def test_exactly_half_of_the_leaves_are_updated_and_frozen_ones_get_exact_zeros():
  params = _params(6)
  t = optim.half_fine_tuning()
  state = t.init(params)
  grads = jax.tree.map(lambda p: 2.0 * p, params)
  updates, state = t.update(grads, state, params)
  trained = [k for k in params if bool(jnp.any(updates[k] != 0))]
  assert len(trained) == 3
  for k in params:
    np.testing.assert_array_equal(updates[k], grads[k] if k in trained else 0.0)
  assert int(state.count) == 1


def test_the_mask_is_fixed_within_a_stage_and_redrawn_across_stages():
  sets = _trained(optim.half_fine_tuning(stage_length=3, seed=1), _params(8), 30)
  stages = [sets[i:i + 3] for i in range(0, 30, 3)]
  assert all(len(set(stage)) == 1 for stage in stages)
  assert len({stage[0] for stage in stages}) > 1  # redrawn
  assert all(len(s) == 4 for s in sets)
  assert set().union(*sets) == set(_params(8))  # every leaf trains in some stage
  # Same seed: same draws; no stage_length: one draw forever.
  assert sets == _trained(optim.half_fine_tuning(stage_length=3, seed=1), _params(8), 30)
  assert len(set(_trained(optim.half_fine_tuning(seed=1), _params(8), 10))) == 1


def test_half_of_every_category_is_trained():
  params = _params(8)
  categories = {k: ("attention" if i < 4 else "mlp") for i, k in enumerate(params)}
  for trained in _trained(optim.half_fine_tuning(stage_length=1, categories=categories),
                          params, 10):
    assert len([k for k in trained if categories[k] == "attention"]) == 2
    assert len([k for k in trained if categories[k] == "mlp"]) == 2


def test_fraction_rounds_half_up_and_works_under_inject_hyperparams():
  params = _params(5)
  assert all(len(s) == 3 for s in _trained(optim.half_fine_tuning(), params, 3))  # 2.5 -> 3
  assert all(len(s) == 1 for s in _trained(optim.half_fine_tuning(0.2), params, 3))
  injected = optim.inject_hyperparams(optim.half_fine_tuning, static_args=("seed",))(0.2)
  assert all(len(s) == 1 for s in _trained(injected, params, 3))
