"""NoProp (discrete time) against float64 NumPy transcriptions of its schedule, objective and
inference chain.

References: the cosine schedule written out by hand; the variance-preserving chain's marginals
q(z_t | y) = N(sqrt(alpha_bar_t) u, 1 - alpha_bar_t), which the inference coefficients must
reproduce for a perfect denoiser; the per-block objective eta/2 (SNR(t) - SNR(t-1)) E||u_hat - u||^2
(+ the classifier's cross-entropy on the last block) recomputed in NumPy from the same samples.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn import local
from jaxlearn._compile import fast_jit
from tests.local._checks import assert_no_gradient_crosses_blocks

C = 3
T = 3
FEATURES = 5


def make_batch(seed=0, batch_size=6):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(batch_size, FEATURES)).astype(np.float32),
          "y": rng.integers(0, C, size=batch_size).astype(np.int32)}


def make(rule, seed=0):
  model = local.LocalModel(tuple(local.denoising_block(C, (6,), jnp.tanh) for _ in range(T)))
  params, state = fast_jit(lambda k: model.init(k, rule, make_batch()))(jax.random.PRNGKey(seed))
  return model, params, state


def test_schedule_and_coefficients_reproduce_the_chain_marginals():
  alpha_bar = local.noprop_alpha_bar(T)
  s = 0.008
  want = [0.0] + [np.cos(np.pi / 2 * ((T + 1 - t) / (T + 1) + s) / (1 + s)) ** 2
                  / np.cos(np.pi / 2 * s / (1 + s)) ** 2 for t in range(1, T + 1)]
  np.testing.assert_allclose(alpha_bar, want, rtol=1e-12, atol=0.0)
  assert np.all(np.diff(alpha_bar) > 0) and alpha_bar[-1] < 1.0  # noise -> signal, never clean
  a, b, c = local.noprop_coefficients(alpha_bar)
  # A perfect denoiser (u_hat = u) started from z_0 ~ q(z_0 | y) = N(0, I) reproduces every
  # marginal: mean a_t u + b_t m_{t-1} = sqrt(alpha_bar_t) u, var b_t^2 v_{t-1} + c_t = 1 - ab_t.
  mean, var = 0.0, 1.0
  for t in range(1, T + 1):
    mean, var = a[t - 1] + b[t - 1] * mean, b[t - 1] ** 2 * var + c[t - 1]
    np.testing.assert_allclose([mean, var], [np.sqrt(alpha_bar[t]), 1 - alpha_bar[t]],
                               rtol=1e-12)
  assert np.all(np.isfinite([a, b, c])) and np.all(c > 0)


def test_blocks_neither_propagate_nor_backpropagate():
  rule = local.NoProp(C, T)
  model, params, _ = make(rule)
  batch, key = make_batch(1), jax.random.PRNGKey(7)
  assert_no_gradient_crosses_blocks(model, rule, params, (), batch, key)
  # No forward propagation either: changing block 0 changes no other block's objective value.
  losses = fast_jit(lambda p: local.block_losses(model, rule, p, (), batch, key)[0])
  blocks = (jax.tree.map(lambda w: w + 1.0, params.blocks[0]),) + params.blocks[1:]
  before = np.asarray(losses(params))
  after = np.asarray(losses(params._replace(blocks=blocks)))
  assert after[0] != before[0]
  np.testing.assert_array_equal(after[1:], before[1:])


def test_block_objectives_match_numpy():
  rule = local.NoProp(C, T, eta=0.7)
  model, params, _ = make(rule)
  batch, key = make_batch(2), jax.random.PRNGKey(3)
  got = fast_jit(lambda p: local.block_losses(model, rule, p, (), batch, key)[0])(params)
  u = np.eye(C)[batch["y"]]
  alpha_bar = local.noprop_alpha_bar(T)
  snr = alpha_bar / (1 - alpha_bar)
  ctx = local.LocalContext(batch, (), key)
  for k in range(T):
    x, z = rule.block_input(k, None, ctx)
    h = np.concatenate([np.asarray(x, np.float64), np.asarray(z, np.float64)], 1)
    p = params.blocks[k]
    for name in ("Dense_0", "Dense_1"):
      h = h @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"], np.float64)
      h = np.tanh(h) if name == "Dense_0" else h
    want = 0.5 * 0.7 * (snr[k + 1] - snr[k]) * np.mean(np.sum((h - u) ** 2, 1))
    if k == T - 1:  # + the classifier's cross-entropy on z_T ~ q(z_T | y)
      z_t = np.sqrt(alpha_bar[T]) * u + np.sqrt(1 - alpha_bar[T]) * np.asarray(
          jax.random.normal(jax.random.fold_in(key, T), u.shape), np.float64)
      head = params.heads[k]
      logits = z_t @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)
      log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
      want += -np.mean(log_p[np.arange(len(u)), batch["y"]])
    np.testing.assert_allclose(got[k], want, rtol=2e-5)


def test_noisy_latents_follow_q():
  rule = local.NoProp(C, T)
  labels = np.full(20000, 1, np.int32)
  ctx = local.LocalContext({"x": np.zeros((20000, 1), np.float32), "y": labels}, (),
                           jax.random.PRNGKey(0))
  alpha_bar = local.noprop_alpha_bar(T)
  for k in (0, 2):
    _, z = rule.block_input(k, None, ctx)
    z = np.asarray(z, np.float64)
    np.testing.assert_allclose(z.mean(0), np.sqrt(alpha_bar[k]) * np.eye(C)[1], atol=0.03)
    np.testing.assert_allclose(z.var(0), 1 - alpha_bar[k], atol=0.03)


def test_deterministic_inference_of_a_perfect_denoiser_lands_on_sqrt_alpha_bar_u():
  rule = local.NoProp(C, T, inference_noise=False)
  target = np.array([0.2, -1.0, 0.5], np.float32)
  # Blocks that ignore their inputs and output a constant embedding (their only parameter).
  constant = local.Block(lambda key, inputs: {"u": jnp.asarray(target)},
                         lambda p, inputs: jnp.broadcast_to(p["u"], (inputs[0].shape[0], C)))
  model = local.LocalModel((constant,) * T)
  params, _ = model.init(jax.random.PRNGKey(0), rule, make_batch())
  head = {"kernel": jnp.eye(C), "bias": jnp.zeros(C)}  # logits = z_T
  params = params._replace(heads=params.heads[:-1] + (head,))
  z_t = np.asarray(fast_jit(lambda p, x: rule.predict_logits(model, p, x))(
      params, make_batch()["x"]))
  alpha_bar = local.noprop_alpha_bar(T)
  np.testing.assert_allclose(z_t, np.broadcast_to(np.sqrt(alpha_bar[-1]) * target, z_t.shape),
                             rtol=1e-5)


def test_orthogonal_embeddings_are_orthonormal_and_seeded():
  rule = local.NoProp(C, T, embedding="orthogonal", embedding_dim=5, embedding_seed=1)
  u = np.asarray(rule.embeddings(), np.float64)
  assert u.shape == (C, 5)
  np.testing.assert_allclose(u @ u.T, np.eye(C), atol=1e-6)
  np.testing.assert_array_equal(u, rule.embeddings())
  other = local.NoProp(C, T, embedding="orthogonal", embedding_dim=5, embedding_seed=2)
  assert not np.allclose(u, other.embeddings())


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="embedding"):
    local.NoProp(C, T, embedding="learned")
  with pytest.raises(ValueError, match="embedding_dim"):
    local.NoProp(C, T, embedding="orthogonal", embedding_dim=2)
  with pytest.raises(ValueError, match="eta"):
    local.NoProp(C, T, eta=0.0)
  with pytest.raises(ValueError, match="num_blocks"):
    local.NoProp(C, 0)
  rule = local.NoProp(C, T + 1)
  with pytest.raises(ValueError, match="num_blocks"):
    make(rule)
  model, params, _ = make(local.NoProp(C, T))
  with pytest.raises(ValueError, match="key"):
    local.block_losses(model, local.NoProp(C, T), params, (), make_batch(), None)
  with pytest.raises(ValueError, match="key"):
    local.NoProp(C, T).predict(model, params, make_batch()["x"])
