"""Tests for `jaxlearn.optim._common`: the alias pieces and the inject_hyperparams mask trap.

References are hand-computed: an alias over `optax.identity()` performs
`update = -lr * (g + weight_decay * mask * w)`, which NumPy evaluates directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import _common, adamp, inject_hyperparams


def decayed_sgd(learning_rate, weight_decay=0.0, weight_decay_mask=None):
  """The smallest jaxlearn-style alias: identity, then masked decay, then the lr step."""
  return _common.alias(optax.identity(), learning_rate, weight_decay, weight_decay_mask)


def matrices_only(params):
  return jax.tree.map(lambda x: x.ndim > 1, params)


PARAMS = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([4.0, -1.0])}
GRADS = {"w": jnp.asarray([[0.1, 0.2], [-0.3, 0.4]]), "b": jnp.asarray([0.5, -0.5])}


def three_steps(opt):
  """Three jitted steps with constant gradients; returns the final params as NumPy."""

  @jax.jit
  def run(params):
    state = opt.init(params)
    for _ in range(3):
      updates, state = opt.update(GRADS, state, params)
      params = optax.apply_updates(params, updates)
    return params

  return jax.tree.map(np.asarray, run(PARAMS))


def expected_three_steps(lr, weight_decay, decay_w, decay_b):
  params = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
  for _ in range(3):
    params = {
        "w": params["w"] - lr * (np.asarray(GRADS["w"]) + weight_decay * decay_w * params["w"]),
        "b": params["b"] - lr * (np.asarray(GRADS["b"]) + weight_decay * decay_b * params["b"]),
    }
  return params


# ---------------------------------------------------------------------------------------------
# The inject_hyperparams mask trap.


@pytest.mark.parametrize("factory", [decayed_sgd, adamp], ids=["common_alias", "adamp"])
def test_raw_optax_inject_with_a_callable_mask_raises_instead_of_disabling_decay(factory):
  opt = optax.inject_hyperparams(factory)(
      learning_rate=0.1, weight_decay=0.5, weight_decay_mask=matrices_only
  )
  with pytest.raises(ValueError, match="weight_decay_mask.*jaxlearn.optim.inject_hyperparams"):
    opt.init(PARAMS)


def test_raw_optax_inject_with_static_args_is_fine():
  opt = optax.inject_hyperparams(decayed_sgd, static_args=("weight_decay_mask",))(
      learning_rate=0.1, weight_decay=0.5, weight_decay_mask=matrices_only
  )
  expected = expected_three_steps(0.1, 0.5, decay_w=1.0, decay_b=0.0)
  for k, v in three_steps(opt).items():
    np.testing.assert_allclose(v, expected[k], rtol=1e-6)


def test_jaxlearn_inject_applies_the_callable_mask_exactly_like_the_plain_alias():
  kwargs = dict(learning_rate=0.1, weight_decay=0.5, weight_decay_mask=matrices_only)
  plain = three_steps(decayed_sgd(**kwargs))
  injected = three_steps(inject_hyperparams(decayed_sgd)(**kwargs))
  expected = expected_three_steps(0.1, 0.5, decay_w=1.0, decay_b=0.0)
  for k in PARAMS:
    np.testing.assert_allclose(plain[k], expected[k], rtol=1e-6)
    np.testing.assert_allclose(injected[k], expected[k], rtol=1e-6)
  # The decay is really on for w (a trap would leave w where weight_decay=0 leaves it).
  undecayed = expected_three_steps(0.1, 0.0, decay_w=0.0, decay_b=0.0)
  assert np.max(np.abs(injected["w"] - undecayed["w"])) > 0.1


def test_jaxlearn_inject_keeps_user_static_args():
  opt = inject_hyperparams(adamp, static_args="channel_axis")(
      learning_rate=0.1, weight_decay=0.5, weight_decay_mask=matrices_only, channel_axis=0
  )
  state = opt.init(PARAMS)
  assert "channel_axis" not in state.hyperparams
  assert "weight_decay_mask" not in state.hyperparams
  assert float(state.hyperparams["weight_decay"]) == 0.5


@pytest.mark.parametrize(
    "mask",
    [False, True, np.bool_(False), np.asarray([True, False]), jnp.asarray(False)],
    ids=["bool", "true", "numpy_bool", "numpy_array", "jax_array"],
)
def test_check_mask_rejects_single_values(mask):
  with pytest.raises(ValueError, match="weight_decay_mask arrived as a single value"):
    _common.check_mask(mask)


@pytest.mark.parametrize(
    "mask",
    [None, matrices_only, {"w": True, "b": False}, {"w": True}],
    ids=["none", "callable", "tree", "prefix"],
)
def test_check_mask_accepts_masks(mask):
  assert _common.check_mask(mask) is mask


# ---------------------------------------------------------------------------------------------
# decayed_weights and learning_rate_step.


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), -np.inf])
def test_decayed_weights_rejects_bad_weight_decay(bad):
  with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\)"):
    _common.decayed_weights(bad)


def test_decayed_weights_rejects_a_trapped_mask():
  with pytest.raises(ValueError, match="weight_decay_mask"):
    _common.decayed_weights(0.1, jnp.asarray(True))


def test_decayed_weights_adds_masked_decay():
  tx = _common.decayed_weights(0.5, {"w": True, "b": False})
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates["w"], np.asarray(GRADS["w"]) + 0.5 * np.asarray(PARAMS["w"]),
                             rtol=1e-6)
  np.testing.assert_allclose(updates["b"], GRADS["b"], rtol=0)


@pytest.mark.parametrize("bad", [-1e-3, float("nan")])
def test_learning_rate_step_rejects_bad_learning_rates(bad):
  with pytest.raises(ValueError, match=r"learning_rate must be in \[0, inf\)"):
    _common.learning_rate_step(bad)


def test_learning_rate_step_scales_by_minus_lr_and_accepts_schedules_and_tracers():
  updates = {"w": jnp.asarray([1.0, -2.0])}
  tx = _common.learning_rate_step(0.1)
  out, _ = tx.update(updates, tx.init(updates))
  np.testing.assert_allclose(out["w"], [-0.1, 0.2], rtol=1e-6)

  schedule = _common.learning_rate_step(lambda count: 0.1 * (count + 1))
  state = schedule.init(updates)
  first, state = schedule.update(updates, state)
  second, _ = schedule.update(updates, state)
  np.testing.assert_allclose(first["w"], [-0.1, 0.2], rtol=1e-6)
  np.testing.assert_allclose(second["w"], [-0.2, 0.4], rtol=1e-6)

  # Traced values cannot be checked and are accepted (they were checked when concrete).
  traced = jax.jit(lambda lr: _common.learning_rate_step(lr).update(updates, optax.EmptyState()))
  np.testing.assert_allclose(traced(0.5)[0]["w"], [-0.5, 1.0], rtol=1e-6)


def test_alias_validates_its_pieces():
  with pytest.raises(ValueError, match="learning_rate"):
    decayed_sgd(-0.1)
  with pytest.raises(ValueError, match="weight_decay"):
    decayed_sgd(0.1, weight_decay=-1.0)
  with pytest.raises(ValueError, match="weight_decay_mask"):
    decayed_sgd(0.1, weight_decay=0.1, weight_decay_mask=False)
