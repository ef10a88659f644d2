"""Momentum Auxiliary Network against a float64 NumPy transcription of the official code's local
objective and EMA update.

References: y_i = LB_i(h_i) + EMA_i(h_i) fed to a linear auxiliary classifier, cross-entropy,
written out in NumPy; EMA_i <- m EMA_i + (1 - m) theta_{i+1} (pre-update parameters, as the
official code updates the EMA before optimizer.step()), iterated in NumPy over several steps; the
EMA's exactly-zero derivative and the exactly-zero cross-block Jacobian.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import local
from jaxlearn._compile import fast_jit
from tests.local._checks import assert_no_gradient_crosses_blocks

C = 3
WIDTHS = (5, 4, 4)


def make_batch(seed=0, batch_size=7):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(batch_size, 6)).astype(np.float32),
          "y": rng.integers(0, C, size=batch_size).astype(np.int32)}


def make_model():
  return local.LocalModel.mlp(WIDTHS, jnp.tanh)


def np_dense(p, x, act=None):
  z = x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)
  return np.tanh(z) if act else z


def np_ce(logits, y):
  logits = logits - logits.max(1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return -np.mean(log_p[np.arange(len(y)), y])


def test_local_objectives_match_numpy_and_cross_no_block():
  model = make_model()
  rule = local.MomentumAuxiliary(model, C, momentum=0.9)
  params, ema = fast_jit(lambda k: model.init(k, rule, make_batch()))(jax.random.PRNGKey(0))
  batch = make_batch(1)
  got = fast_jit(lambda p: local.block_losses(model, rule, p, ema, batch, None)[0])(params)
  h = np.asarray(batch["x"], np.float64)
  for i, p in enumerate(params.blocks):
    h = np_dense(p, h, act=True)
    head = params.heads[i]
    if i < len(WIDTHS) - 1:  # y_i = LB_i(h_i) + EMA_i(h_i), both shaped like block i + 1
      y = np_dense(head["bias_net"], h, act=True) + np_dense(ema[i], h, act=True)
    else:
      y = h
    want = np_ce(np_dense(head["classifier"], y), batch["y"])
    np.testing.assert_allclose(got[i], want, rtol=1e-5)
  # LB_i, EMA_i and block i + 1 are three independent initializations.
  for i in range(len(WIDTHS) - 1):
    kernels = [params.heads[i]["bias_net"]["kernel"], ema[i]["kernel"],
               params.blocks[i + 1]["kernel"]]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])
  assert_no_gradient_crosses_blocks(model, rule, params, ema, batch)


def test_ema_gets_no_gradient_and_follows_a_numpy_ema():
  model = make_model()
  m = 0.8
  rule = local.MomentumAuxiliary(model, C, momentum=m)
  optimizer = optax.adam(0.05)
  state = fast_jit(lambda k: local.init_train_state(model, rule, optimizer, k, make_batch()))(
      jax.random.PRNGKey(0))
  # d(objectives)/d(EMA) is exactly zero: the EMA is read, never trained.
  jac = fast_jit(jax.jacrev(lambda e: local.block_losses(
      model, rule, state.params, e, make_batch(1), None)[0]))(state.rule_state)
  for leaf in jax.tree.leaves(jac):
    np.testing.assert_array_equal(leaf, 0.0)
  step = local.local_train_step(model, rule, optimizer)
  expected = [{k: np.asarray(v, np.float64) for k, v in e.items()} for e in state.rule_state]
  for seed in range(3):
    for i, e in enumerate(expected):  # with the parameters this step's objectives use
      for k in e:
        e[k] = m * e[k] + (1 - m) * np.asarray(state.params.blocks[i + 1][k], np.float64)
    state, _ = step(state, make_batch(seed), jax.random.PRNGKey(seed))
    for got, want in zip(state.rule_state, expected):
      for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
  # The trained bias net moved; the EMA is not a trained parameter (no optimizer state for it).
  assert len(jax.tree.leaves(state.params.heads[0]["bias_net"])) == 2


def test_invalid_arguments_raise():
  model = make_model()
  with pytest.raises(ValueError, match="momentum"):
    local.MomentumAuxiliary(model, C, momentum=1.0)
  with pytest.raises(ValueError, match="num_classes"):
    local.MomentumAuxiliary(model, 1)
  with pytest.raises(ValueError, match="model"):
    local.MomentumAuxiliary("mlp", C)
  other = local.LocalModel.mlp(WIDTHS[:2], jnp.tanh)
  with pytest.raises(ValueError, match="blocks"):
    fast_jit(lambda k: other.init(k, local.MomentumAuxiliary(make_model(), C), make_batch()))(
        jax.random.PRNGKey(0))
