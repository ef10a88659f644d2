"""Model-free Forward-Forward (physical local learning) against the official code's equations.

References: a float64 NumPy transcription of the goodness, loss and prediction; the official
`Layer.train` loop (MomeniAli/PhyLL `DNNs/main.py`: nn.Linear + GELU, CosineSimilarity, Adam,
inner iterations, detached outputs passed on) run in PyTorch where installed; the black-box
sentinel (a `jax.pure_callback` that JAX refuses to differentiate).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import erf

from jaxlearn import local
from tests.local._checks import assert_no_gradient_crosses_blocks
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")

C, FEATURES, WIDTH, BATCH = 3, 6, 5, 8


def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, C, BATCH)
  y_neg = (y + rng.integers(1, C, BATCH)) % C
  return {"x": jnp.asarray(rng.normal(size=(BATCH, FEATURES)), jnp.float32),
          "y": jnp.asarray(y, jnp.int32), "y_neg": jnp.asarray(y_neg, jnp.int32)}


def make(physical=True, seed=0):
  phys = ((local.random_physical_system(1, FEATURES, WIDTH),
           local.random_physical_system(2, WIDTH, WIDTH)) if physical else ())
  rule = local.ModelFreeForwardForward(C, physical=phys)
  model = local.LocalModel.mlp([WIDTH, WIDTH], local.exact_gelu,
                               kernel_init=local.torch_linear_init)
  params, state = model.init(jax.random.PRNGKey(seed), rule, make_batch())
  return model, rule, params, state, phys


def np_physical(seed, n_in, n_out):
  medium = np.random.default_rng(seed).normal(size=(n_in, n_out)) / np.sqrt(n_in)
  return lambda x: np.abs(x @ medium.astype(np.float32).astype(np.float64))


def np_overlay(x, labels):
  out = x.copy()
  out[:, :C] = 0.0
  out[np.arange(len(x)), labels] = x.max()
  return out


def np_gelu(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_cos(h, p):
  return h @ p / (np.maximum(np.linalg.norm(h, axis=1), 1e-6) * max(np.linalg.norm(p), 1e-6))


def np_forward(params, p_vectors, x, physical):
  goodness, h = [], x
  for k, block in enumerate(params.blocks):
    h = physical[k](h)
    h = np_gelu(h @ np.asarray(block["kernel"], np.float64) + np.asarray(block["bias"], np.float64))
    goodness.append(np_cos(h, np.asarray(p_vectors[k], np.float64)))
  return goodness


def test_losses_and_prediction_follow_the_official_equations():
  model, rule, params, state, _ = make()
  batch = make_batch(1)
  physical = (np_physical(1, FEATURES, WIDTH), np_physical(2, WIDTH, WIDTH))

  @jax.jit
  def run(params):
    losses, _ = local.block_losses(model, rule, params, state, batch, None)
    return losses, rule.goodness_per_label(model, params, state, batch["x"])

  losses, per_label = run(params)
  x = np.asarray(batch["x"], np.float64)
  g_pos = np_forward(params, state, np_overlay(x, np.asarray(batch["y"])), physical)
  g_neg = np_forward(params, state, np_overlay(x, np.asarray(batch["y_neg"])), physical)
  want = [np.mean(np.log1p(np.exp(-4.0 * (gp - gn)))) for gp, gn in zip(g_pos, g_neg)]
  np.testing.assert_allclose(losses, want, rtol=1e-5)
  want_per_label = np.stack(
      [sum(np_forward(params, state, np_overlay(x, np.full(BATCH, c)), physical))
       for c in range(C)], 1)
  np.testing.assert_allclose(per_label, want_per_label, rtol=1e-5, atol=1e-6)
  for p in state:  # fixed unit directions: z / (|z| + 1e-4)
    assert abs(float(jnp.linalg.norm(p)) - 1.0) < 1e-3
  assert_no_gradient_crosses_blocks(model, rule, params, state, batch)


def test_black_box_physics_is_never_differentiated():
  model, rule, _, _, _ = make()
  optimizer = local.per_block_optimizer(optax.adam(1e-3))
  train = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), make_batch())
  step = local.local_train_step(model, rule, optimizer, sequential=True, inner_steps=2)
  new, metrics = step(train, make_batch(2), jax.random.PRNGKey(1))
  assert bool(metrics["grads_finite"])
  assert not np.allclose(new.params.blocks[1]["kernel"], train.params.blocks[1]["kernel"])
  # The same black box DOWNSTREAM of the trainable layer would have to be differentiated: JAX
  # refuses (a model-free method must never need that).
  dense = local.dense_block(WIDTH, local.exact_gelu)
  after = local.random_physical_system(3, WIDTH, WIDTH)
  downstream = local.LocalModel(
      (local.Block(dense.init, lambda p, x: after(dense.apply(p, x))),) * 2)
  no_input_physics = local.ModelFreeForwardForward(C)
  bad = local.init_train_state(downstream, no_input_physics, optimizer, jax.random.PRNGKey(0),
                               make_batch())
  with pytest.raises(ValueError, match="(?i)pure.?callback"):
    local.local_train_step(downstream, no_input_physics, optimizer, sequential=True)(
        bad, make_batch(2), jax.random.PRNGKey(1))


@pytest.mark.parity
def test_inner_steps_match_the_official_pytorch_layer_loop():
  torch = pytest.importorskip("torch")

  model, rule, params, state, _ = make(physical=False, seed=3)
  rule = local.ModelFreeForwardForward(C)  # the DNN version: no physical layer
  inner, lr = 4, 1e-2
  optimizer = local.per_block_optimizer(optax.adam(lr, eps=1e-8))
  train = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(3), make_batch())
  train = train._replace(params=params, opt_state=optimizer.init(params), rule_state=state)
  batch = make_batch(4)
  new, _ = local.local_train_step(model, rule, optimizer, sequential=True, inner_steps=inner)(
      train, batch, jax.random.PRNGKey(0))

  # The official Layer.train, block by block (float64).
  torch.set_default_dtype(torch.float64)
  try:
    x = np.asarray(batch["x"], np.float64)
    h_pos = torch.tensor(np_overlay(x, np.asarray(batch["y"])))
    h_neg = torch.tensor(np_overlay(x, np.asarray(batch["y_neg"])))
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-6)
    for k, block in enumerate(params.blocks):
      layer = torch.nn.Linear(*np.shape(block["kernel"]))
      with torch.no_grad():
        layer.weight.copy_(torch.tensor(np.asarray(block["kernel"], np.float64).T))
        layer.bias.copy_(torch.tensor(np.asarray(block["bias"], np.float64)))
      opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=0)
      gelu = torch.nn.GELU()
      p = torch.tensor(np.asarray(state[k], np.float64))[None].repeat(BATCH, 1)
      for _ in range(inner):
        delta = cos(gelu(layer(h_pos)), p) - cos(gelu(layer(h_neg)), p)
        loss = torch.log(1 + torch.exp(-4.0 * delta)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
      np.testing.assert_allclose(new.params.blocks[k]["kernel"],
                                 layer.weight.detach().numpy().T, rtol=2e-4, atol=2e-6)
      np.testing.assert_allclose(new.params.blocks[k]["bias"], layer.bias.detach().numpy(),
                                 rtol=2e-4, atol=2e-6)
      h_pos, h_neg = gelu(layer(h_pos)).detach(), gelu(layer(h_neg)).detach()
  finally:
    torch.set_default_dtype(torch.float32)


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="theta"):
    local.ModelFreeForwardForward(C, theta=0.0)
  with pytest.raises(ValueError, match="physical"):
    local.ModelFreeForwardForward(C, physical=[lambda x: x])
  with pytest.raises(ValueError, match="physical"):
    rule = local.ModelFreeForwardForward(C, physical=(lambda x: x,))
    local.LocalModel.mlp([WIDTH, WIDTH]).init(jax.random.PRNGKey(0), rule, make_batch())
  with pytest.raises(ValueError, match="num_classes"):
    local.ModelFreeForwardForward(1)
