"""tpSGD against a float64 NumPy transcription of its layer-wise delta rules.

References: the l2 update (t - y) * sigma'(z) and the l1 (sign) update sign(t - y) * sigma'(z) of
each hidden layer against its target onehot(y) P_i, written out by hand with the layer's input;
DRTP's output layer (softmax - onehot); the exactly-zero cross-block Jacobian.
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
FEATURES = 6
HIDDEN = (5, 4)


def make_batch(seed=0, batch_size=7):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(batch_size, FEATURES)).astype(np.float32),
          "y": rng.integers(0, C, size=batch_size).astype(np.int32)}


def make_model():
  blocks = tuple(local.dense_block(w, jnp.tanh) for w in HIDDEN) + (local.dense_block(C, None),)
  return local.LocalModel(blocks)


def np_grads(params, projections, batch, loss, output_loss):
  """d J_i / d (W_i, b_i) of every layer, by the hand-written delta rules, in float64."""
  x = np.asarray(batch["x"], np.float64)
  y = np.asarray(batch["y"])
  one_hot = np.eye(C)[y]
  n = len(x)
  grads = []
  for i, p in enumerate(params.blocks):
    w, b = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
    z = x @ w + b
    if i < len(HIDDEN):
      h = np.tanh(z)
      r = one_hot @ np.asarray(projections[i], np.float64) - h
      error = (r if loss == "l2" else np.sign(r)) * (1.0 - h**2)
      delta = -(2.0 if loss == "l2" else 1.0) * error / n  # dJ/dz
      x_next = h
    else:
      if output_loss == "cross_entropy":
        e = np.exp(z - z.max(1, keepdims=True))
        delta = (e / e.sum(1, keepdims=True) - one_hot) / n
      else:
        r = one_hot - z
        delta = -(2.0 * r if output_loss == "l2" else np.sign(r)) / n
      x_next = None
    grads.append({"kernel": x.T @ delta, "bias": delta.sum(0)})
    x = x_next
  return grads


@pytest.mark.parametrize("loss,output_loss", [("l2", "cross_entropy"), ("l1", "l2")])
def test_update_is_the_layerwise_delta_rule(loss, output_loss):
  rule = local.TargetProjection(C, loss=loss, output_loss=output_loss)
  model = make_model()
  params, projections = fast_jit(lambda k: model.init(k, rule, make_batch()))(
      jax.random.PRNGKey(0))
  batch = make_batch(1)
  grad_fn = fast_jit(jax.grad(lambda p: local.local_loss(model, rule, p, projections, batch,
                                                          None)[0]))
  got = grad_fn(params)
  for got_block, want in zip(got.blocks, np_grads(params, projections, batch, loss, output_loss)):
    for name in ("kernel", "bias"):
      np.testing.assert_allclose(got_block[name], want[name], rtol=2e-5, atol=1e-6)


def test_no_gradient_crosses_a_block_and_projections_stay_fixed():
  rule = local.TargetProjection(C)
  model = make_model()
  optimizer = optax.sgd(0.1)
  state = fast_jit(lambda k: local.init_train_state(model, rule, optimizer, k, make_batch()))(
      jax.random.PRNGKey(0))
  batch = make_batch(2)
  assert_no_gradient_crosses_blocks(model, rule, state.params, state.rule_state, batch)
  # The projections are DRTP's kaiming-uniform: inside +-sqrt(6 / width), and never trained.
  for p, width in zip(state.rule_state, HIDDEN):
    bound = np.sqrt(6.0 / width)
    assert p.shape == (C, width) and np.all(np.abs(p) <= bound) and np.abs(p).max() > bound / 2
  step = local.local_train_step(model, rule, optimizer, sequential=True)
  new, _ = step(state, batch, jax.random.PRNGKey(3))
  for a, b in zip(new.rule_state, state.rule_state):
    np.testing.assert_array_equal(a, b)


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="loss"):
    local.TargetProjection(C, loss="l3")
  with pytest.raises(ValueError, match="output_loss"):
    local.TargetProjection(C, output_loss="hinge")
  with pytest.raises(ValueError, match="projection_scale"):
    local.TargetProjection(C, projection_scale=float("nan"))
  with pytest.raises(ValueError, match="num_classes"):
    local.TargetProjection(1)
  wrong = local.LocalModel((local.dense_block(4), local.dense_block(C + 1, None)))
  with pytest.raises(ValueError, match="num_classes"):
    fast_jit(lambda k: wrong.init(k, local.TargetProjection(C), make_batch()))(
        jax.random.PRNGKey(0))
