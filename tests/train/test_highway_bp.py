"""Highway-BP against a float64 NumPy transcription of the paper's fixed-point iteration (explicit
per-block VJPs and the reverse cumulative sum), and its limits: k = L iterations is backprop
(`jax.grad`), k = 0 the residual-path-only gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import HighwayParams, highway_bp, highway_value_and_grad, residual_loss

L, B, DIN, D = 4, 6, 3, 5


def stem(p, x):
  return x @ p


def block(p, h):
  return jnp.tanh(h @ p)


def head(p, h, y):
  return 0.5 * jnp.mean(jnp.sum((h @ p - y) ** 2, axis=-1))


def make(seed=0):
  rng = np.random.default_rng(seed)
  params = HighwayParams(
      rng.normal(size=(DIN, D)).astype(np.float32),
      (0.6 * rng.normal(size=(L, D, D))).astype(np.float32),
      rng.normal(size=(D, 2)).astype(np.float32),
  )
  x = rng.normal(size=(B, DIN)).astype(np.float32)
  y = rng.normal(size=(B, 2)).astype(np.float32)
  return params, x, y


def numpy_highway(params, x, y, k):
  """The paper's iteration in float64 with loops: w_i^{k+1} = delta + sum_{j>i} w_j^k J_j."""
  ws, w_head = [np.float64(a) for a in params.blocks], np.float64(params.head)
  hs = [np.float64(x) @ np.float64(params.stem)]
  acts = []
  for w in ws:
    acts.append(np.tanh(hs[-1] @ w))
    hs.append(hs[-1] + acts[-1])
  delta = (hs[-1] @ w_head - y) @ w_head.T / B
  head_grad = hs[-1].T @ (hs[-1] @ w_head - y) / B
  vjp_h = lambda j, w: (w * (1 - acts[j] ** 2)) @ ws[j].T  # w_j J_j for block j (0-based)
  out = [delta.copy() for _ in range(L)]  # w at the output of block j
  stem_w = delta.copy()
  for _ in range(k):
    v = [vjp_h(j, out[j]) for j in range(L)]
    out = [delta + sum(v[c] for c in range(j + 1, L)) for j in range(L)]
    stem_w = delta + sum(v)
  block_grads = [hs[j].T @ (out[j] * (1 - acts[j] ** 2)) for j in range(L)]
  stem_grad = np.float64(x).T @ stem_w
  return stem_grad, np.stack(block_grads), head_grad


@pytest.fixture(scope="module")
def grads_by_k():
  """Highway-BP for k = 0..L, vmapped over a traced k (one program)."""
  params, x, y = make()
  fn = lambda k: highway_value_and_grad(stem, block, head, params, x, y, iterations=k)[1]
  return params, x, y, fast_jit(jax.vmap(fn))(jnp.arange(L + 1))


def test_every_iteration_count_matches_the_numpy_transcription(grads_by_k):
  params, x, y, grads = grads_by_k
  for k in (0, 1, 2, L):
    ours = jax.tree.map(lambda g: np.asarray(g[k]), grads)
    stem_ref, blocks_ref, head_ref = numpy_highway(params, x, y, k)
    np.testing.assert_allclose(ours.stem, stem_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.blocks, blocks_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.head, head_ref, rtol=1e-4, atol=1e-5)


def test_k_equal_to_depth_is_backprop_and_k_zero_is_the_residual_path(grads_by_k):
  params, x, y, grads = grads_by_k
  exact = fast_jit(jax.grad(residual_loss(stem, block, head)))(params, x, y)
  at = lambda k: jax.tree.map(lambda g: np.asarray(g[k]), grads)
  for got, want in zip(jax.tree.leaves(at(L)), jax.tree.leaves(exact)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # From k = L - 1 the blocks are exact, the stem (w_0) still is not.
  np.testing.assert_allclose(at(L - 1).blocks, exact.blocks, rtol=1e-4, atol=1e-5)
  assert not np.allclose(at(L - 1).stem, exact.stem, rtol=1e-3, atol=1e-4)
  # k = 0 (the residual path only, checked against NumPy above) is not backprop.
  assert not np.allclose(at(0).blocks, exact.blocks, rtol=1e-3, atol=1e-4)


def test_the_step_applies_the_estimate_and_checks_iterations():
  params, x, y = make(1)
  training = highway_bp(stem, block, head, optax.sgd(0.1), iterations=1)
  state = training.init(params, jax.random.key(0))
  new, metrics = fast_jit(training.step)(state, (x, y), jax.random.key(1))
  stem_ref, blocks_ref, head_ref = numpy_highway(params, x, y, 1)
  np.testing.assert_allclose(new.params.blocks, params.blocks - 0.1 * blocks_ref, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(new.params.stem, params.stem - 0.1 * stem_ref, rtol=1e-4, atol=1e-5)
  assert not bool(metrics["skipped"])
  for bad in (-1, 1.5, None, float("nan"), True):
    with pytest.raises(ValueError, match="iterations"):
      highway_bp(stem, block, head, optax.sgd(0.1), iterations=bad)
