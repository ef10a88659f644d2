"""Stable weight decay (AdamS) against the official code (NumPy transcription) and pytorch-optimizer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim
from tests.optim._helpers import (
    assert_bfloat16_gradients_give_the_float32_state,
    run_optimizer,
)

STEPS = 6


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
  grads = [{k: (rng.normal(size=v.shape) * (0.1 if k == "b" else 1.0)).astype(np.float32)
            for k, v in params.items()} for _ in range(STEPS)]
  return params, grads


def numpy_adams(params, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-8, decayed=("w", "b")):
  """zeke-xie/stable-weight-decay-regularization swd_optim/adams.py (amsgrad=False), float64."""
  theta = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  v = {k: np.zeros_like(x) for k, x in theta.items()}
  size = sum(x.size for x in theta.values())
  for t, g in enumerate(grads, start=1):
    total = 0.0
    for k in theta:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      total += np.sum(v[k] / (1 - b2**t))
    root_mean = math.sqrt(total / size)
    for k in theta:
      if k in decayed:
        theta[k] = theta[k] * (1 - wd * lr / root_mean)
      denom = np.sqrt(v[k] / (1 - b2**t)) + eps
      theta[k] = theta[k] - lr / (1 - b1**t) * m[k] / denom
  return theta


def _close(got, want, rtol=1e-5, atol=1e-6):
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def test_adams_matches_the_official_code():
  params, grads = _problem()
  got, _ = run_optimizer(optim.adams(0.01, weight_decay=0.5), params, grads)
  _close(got, numpy_adams(params, grads, 0.01, 0.5))


def test_own_second_moment_equals_reading_the_inner_state():
  params, grads = _problem(1)
  adam = optax.scale_by_adam()
  own = optax.chain(optim.with_stable_weight_decay(adam, 0.5), optax.scale_by_learning_rate(0.01))
  shared = optax.chain(
      optim.with_stable_weight_decay(adam, 0.5, inner_nu=lambda s: s.nu),
      optax.scale_by_learning_rate(0.01))
  got_own, own_state = run_optimizer(own, params, grads)
  got_shared, shared_state = run_optimizer(shared, params, grads)
  _close(got_own, got_shared, rtol=1e-6, atol=1e-7)
  assert own_state[0].nu is not None and shared_state[0].nu is None


def test_mask_skips_the_decay_but_every_leaf_counts_in_the_mean():
  params, grads = _problem(2)
  mask = lambda p: {"w": True, "b": False}
  got, _ = run_optimizer(optim.adams(0.01, weight_decay=0.5, weight_decay_mask=mask), params, grads)
  _close(got, numpy_adams(params, grads, 0.01, 0.5, decayed=("w",)))
  injected, _ = run_optimizer(
      optim.inject_hyperparams(optim.adams)(0.01, weight_decay=0.5, weight_decay_mask=mask),
      params, grads)
  _close(injected, got, rtol=1e-6, atol=1e-7)


def test_all_zero_gradients_apply_no_decay_instead_of_dividing_by_zero():
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  optimizer = optim.adams(1e-3)
  state = optimizer.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, state = optimizer.update(zeros, state, params)
  np.testing.assert_array_equal(updates["w"], 0.0)
  # As soon as one gradient is nonzero the mean is positive and the decay is back.
  updates, _ = optimizer.update({"w": zeros["w"], "b": jnp.array([1.0, 0.0])}, state, params)
  assert float(updates["w"][0, 0]) < 0.0


def test_bfloat16_gradients_give_the_float32_second_moment():
  """The wrapper's own second moment casts the gradient to float32 before (1 - b2) * g**2
  (`_common.update_moment`); it used to square and scale it in bfloat16."""
  assert_bfloat16_gradients_give_the_float32_state(
      optim.with_stable_weight_decay(optim.scale_by_adapnm(), 1e-2), ("nu",),
      params=jnp.ones((4, 3)))


@pytest.mark.parity
def test_adams_matches_pytorch_optimizer():
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  params, grads = _problem(3)
  tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
  reference = pytorch_optimizer.AdamS(list(tensors.values()), lr=0.01, weight_decay=0.5)
  for g in grads:
    for k, t in tensors.items():
      t.grad = torch.tensor(g[k], dtype=torch.float64)
    reference.step()
  got, _ = run_optimizer(optim.adams(0.01, weight_decay=0.5), params, grads)
  _close(got, {k: t.detach().numpy() for k, t in tensors.items()})


@pytest.mark.parametrize("kwargs, name", [
    (dict(weight_decay=-1.0), "weight_decay"), (dict(eps=0.0), "eps"), (dict(b2=1.0), "b2"),
    (dict(weight_decay_mask=jnp.array(True)), "weight_decay_mask"),
])
def test_bad_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optim.with_stable_weight_decay(optax.scale_by_adam(), **kwargs)
