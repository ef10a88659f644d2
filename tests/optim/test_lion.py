"""Lion: optax's and jaxlearn's against the paper's Algorithm 2 (NumPy) and pytorch-optimizer."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim
from tests.optim._helpers import run_optimizer

STEPS = 6


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float32)}
  grads = [
      {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
      for _ in range(STEPS)
  ]
  return params, grads


def _numpy_lion(params, grads, lr, b1, b2, wd):
  """Algorithm 2 of arXiv:2302.06675, transcribed in float64."""
  theta = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  for g in grads:
    for k in theta:
      c = b1 * m[k] + (1 - b1) * g[k]
      theta[k] = theta[k] - lr * (np.sign(c) + wd * theta[k])
      m[k] = b2 * m[k] + (1 - b2) * g[k]
  return theta


@pytest.mark.parametrize("factory", [optim.lion, optax.lion], ids=["jaxlearn", "optax"])
@pytest.mark.parametrize("b1,b2,wd", [(0.9, 0.99, 0.0), (0.9, 0.99, 0.1), (0.5, 0.9, 0.03)])
def test_matches_numpy_transcription_of_algorithm_2(factory, b1, b2, wd):
  params, grads = _problem()
  lr = 0.01
  got, _ = run_optimizer(factory(lr, b1=b1, b2=b2, weight_decay=wd), params, grads)
  want = _numpy_lion(params, grads, lr, b1, b2, wd)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_without_weight_decay_every_coordinate_moves_by_exactly_the_learning_rate():
  params, grads = _problem(1)
  lr = 3e-4
  optimizer = optim.lion(lr)
  state = optimizer.init(params)
  for g in grads:
    updates, state = optimizer.update(g, state, params)
    for u in jax.tree.leaves(updates):
      np.testing.assert_array_equal(np.abs(np.asarray(u)), np.float32(lr))


@pytest.mark.parity
def test_matches_pytorch_optimizer_lion():
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  params, grads = _problem(2)
  lr, betas, wd = 0.01, (0.9, 0.99), 0.05
  tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
  reference = pytorch_optimizer.Lion(list(tensors.values()), lr=lr, betas=betas, weight_decay=wd)
  for g in grads:
    for k, t in tensors.items():
      t.grad = torch.tensor(g[k], dtype=torch.float64)
    reference.step()
  got, _ = run_optimizer(optim.lion(lr, *betas, weight_decay=wd), params, grads)
  for k, t in tensors.items():
    np.testing.assert_allclose(got[k], t.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_defaults_follow_the_paper_where_optax_differs():
  ours = inspect.signature(optim.lion).parameters
  theirs = inspect.signature(optax.lion).parameters
  assert (ours["b1"].default, ours["b2"].default) == (0.9, 0.99)  # paper, Section 3
  assert ours["weight_decay"].default == 0.0  # official code (google/automl lion_pytorch.py)
  assert theirs["weight_decay"].default == 1e-3  # optax's choice, documented difference
  assert "weight_decay_mask" in ours and "mask" in theirs


def test_bfloat16_params_get_float32_momentum_and_bfloat16_updates():
  params = {"w": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  ours = optim.lion(1e-3, weight_decay=0.1)
  updates, state = ours.update(grads, ours.init(params), params)
  assert state[0].mu["w"].dtype == jnp.float32
  assert updates["w"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
  # optax, by contrast: bf16 momentum by default, f32 updates when asked for f32 momentum.
  theirs = optax.lion(1e-3)
  assert theirs.init(params)[0].mu["w"].dtype == jnp.bfloat16
  theirs32 = optax.lion(1e-3, mu_dtype=jnp.float32)
  assert theirs32.update(grads, theirs32.init(params), params)[0]["w"].dtype == jnp.float32


def test_weight_decay_mask_also_under_inject_hyperparams():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  grads = jax.tree.map(jnp.zeros_like, params)  # sign(0) = 0: the update is the decay alone
  mask = lambda p: {"w": True, "b": False}
  for optimizer in (
      optim.lion(0.1, weight_decay=0.5, weight_decay_mask=mask),
      optim.inject_hyperparams(optim.lion)(
          learning_rate=0.1, weight_decay=0.5, weight_decay_mask=mask
      ),
  ):
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.05)
    np.testing.assert_allclose(updates["b"], 0.0)


def test_compute_in_float32_upcasts_state_and_reductions_and_restores_dtypes():
  seen = {}

  def init_fn(params):
    seen["init"] = jax.tree.map(lambda p: p.dtype, params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, scale, **extra_args):
    del extra_args
    seen["update"] = jax.tree.map(lambda u: u.dtype, updates)
    return jax.tree.map(lambda u: u * scale, updates), state

  wrapped = optim.compute_in_float32(optax.GradientTransformationExtraArgs(init_fn, update_fn))
  params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float16),
            "i": jnp.ones(2, jnp.int32)}
  state = wrapped.init(params)
  updates, _ = wrapped.update(params, state, params, scale=jnp.float32(0.5), ignored=1)
  assert seen["init"] == {"a": jnp.float32, "b": jnp.float32, "i": jnp.int32}
  assert seen["update"] == seen["init"]
  assert {k: v.dtype for k, v in updates.items()} == {k: v.dtype for k, v in params.items()}
  # Abstract initialization (as orbax restore and optax.tree.map_params use) stays abstract.
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  lion_state = optim.scale_by_lion().init(abstract)
  assert lion_state.mu["a"].dtype == jnp.float32
  # A plain optax transform inside: unknown extra arguments are dropped, not passed on.
  concrete = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  optim.scale_by_lion().update(concrete, optim.scale_by_lion().init(concrete), unknown=1)


def _assert_same_steps_as_optax(ours, theirs, steps=20):
  """Same updates and momentum as optax's update, step by step from the same state."""
  rng = np.random.default_rng(7)
  params = jnp.zeros((64, 32))
  state = ours.init(params)
  ours_update, theirs_update = jax.jit(ours.update), jax.jit(theirs.update)
  for _ in range(steps):
    grads = jnp.asarray(rng.normal(size=params.shape), jnp.float32)
    got, new_state = ours_update(grads, state, params)
    want, want_state = theirs_update(grads, state)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(new_state.mu, want_state.mu)
    state = new_state


@pytest.mark.parametrize("b1,b2", [(0.9, 0.99), (0.95, 0.9), (0.0, 0.5)])
def test_sign_from_the_new_momentum_matches_optax(b1, b2):
  """`scale_by_lion` reads the sign from m_t (one pass per buffer): b2 c_t = b1 m_t +
  (b2 - b1) g_t. The same signs and momentum as optax's update, 20 steps of 2048 coordinates."""
  _assert_same_steps_as_optax(optim.scale_by_lion(b1, b2), optax.scale_by_lion(b1, b2))


@pytest.mark.parametrize("kwargs", [{"b2": 0.0}, {"mu_dtype": jnp.bfloat16}])
def test_signs_come_from_the_old_momentum_where_the_new_one_cannot_give_them(kwargs):
  """b2 = 0 leaves no trace of m_{t-1} in m_t (the new-momentum form would give sign 0); a
  bfloat16 m_t would round the sign's input to bfloat16. Both run optax's update as is."""
  _assert_same_steps_as_optax(optim.scale_by_lion(**kwargs), optax.scale_by_lion(**kwargs), 5)
