"""AGC: optax's clipping units against the NFNets paper (NumPy) and pytorch-optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim

CLIP, EPS = 0.05, 1e-3
FACTORIES = {
    "jaxlearn": lambda **kw: optim.adaptive_grad_clip(CLIP, EPS, **kw),
    "optax": lambda **kw: optax.adaptive_grad_clip(CLIP, EPS, **kw),
}


def _numpy_agc_rows(g, w, clipping, eps):
  """The paper's Eq. (3) on a (units, fan_in) matrix: row i is the i-th output unit."""
  w_norm = np.maximum(np.linalg.norm(w, axis=1, keepdims=True), eps)
  g_norm = np.linalg.norm(g, axis=1, keepdims=True)
  clipped = clipping * w_norm / g_norm * g
  return np.where(g_norm / w_norm > clipping, clipped, g)


def _units_first(x, kind):
  """Flax layout -> (output units, fan-in) rows, and back."""
  if kind == "dense":  # (in, out)
    return x.T, lambda rows: rows.T
  if kind == "conv_hwio":  # (H, W, I, O)
    rows = np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)
    return rows, lambda r: np.moveaxis(r.reshape(x.shape[-1], *x.shape[:-1]), 0, -1)
  if kind == "conv1d_wio":  # (W, I, O)
    rows = np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)
    return rows, lambda r: np.moveaxis(r.reshape(x.shape[-1], *x.shape[:-1]), 0, -1)
  if kind == "vector":
    return x[None], lambda r: r[0]
  raise ValueError(kind)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"dense": (6, 5), "conv_hwio": (3, 3, 4, 5), "conv1d_wio": (3, 4, 5), "vector": (5,)}
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  # Gradient scales from 1e-3 to 1 per unit, so some units are clipped and some are not.
  grads = {
      k: (rng.normal(size=s) * 10.0 ** rng.uniform(-3, 0, size=s[-1])).astype(np.float32)
      for k, s in shapes.items()
  }
  params["zero_init"] = np.zeros((6, 5), np.float32)  # ||W|| = 0: the eps floor engages
  grads["zero_init"] = rng.normal(size=(6, 5)).astype(np.float32) * 1e-3
  return params, grads


def _paper(params, grads):
  out = {}
  for k in params:
    kind = "dense" if k == "zero_init" else k
    g_rows, back = _units_first(grads[k].astype(np.float64), kind)
    w_rows, _ = _units_first(params[k].astype(np.float64), kind)
    out[k] = back(_numpy_agc_rows(g_rows, w_rows, CLIP, EPS))
  return out


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_dense_conv_and_vector_units_follow_the_paper(factory):
  params, grads = _problem()
  updates, _ = factory().update(grads, optax.EmptyState(), params)
  want = _paper(params, grads)
  for k in ("dense", "conv_hwio", "vector", "zero_init"):
    np.testing.assert_allclose(updates[k], want[k], rtol=1e-5, atol=1e-8, err_msg=k)
  clipped = ~np.isclose(want["dense"], grads["dense"]).all(axis=0)
  assert clipped.any() and not clipped.all()  # the test exercises both branches


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_rank3_kernels_are_not_per_output_unit_by_default(factory):
  """optax and the official code read rank-3 kernels as multi-head (in, heads, dim): norms over
  axis 0 only. For a 1-D conv kernel (W, I, O) the paper's unit needs axis=(0, 1)."""
  params, grads = _problem(1)
  want = _paper(params, grads)["conv1d_wio"]
  default, _ = factory().update(grads, optax.EmptyState(), params)
  assert not np.allclose(default["conv1d_wio"], want, rtol=1e-4)
  per_unit, _ = factory(axis=(0, 1)).update(
      {"k": grads["conv1d_wio"]}, optax.EmptyState(), {"k": params["conv1d_wio"]}
  )
  np.testing.assert_allclose(per_unit["k"], want, rtol=1e-5, atol=1e-8)


@pytest.mark.parity
def test_matches_pytorch_optimizer_agc_in_pytorch_layout():
  torch = pytest.importorskip("torch")
  agc = pytest.importorskip("pytorch_optimizer").agc
  params, grads = _problem(2)
  ours, _ = optim.adaptive_grad_clip(CLIP, EPS).update(grads, optax.EmptyState(), params)
  to_torch = {"dense": (1, 0), "conv_hwio": (3, 2, 0, 1), "vector": (0,)}  # -> (O, I, ...)
  for k, perm in to_torch.items():
    p = torch.tensor(params[k].transpose(perm), dtype=torch.float64)
    g = torch.tensor(grads[k].transpose(perm), dtype=torch.float64)
    theirs = agc(p, g, agc_eps=EPS, agc_clip_val=CLIP).numpy()
    np.testing.assert_allclose(np.asarray(ours[k]).transpose(perm), theirs, rtol=1e-5, atol=1e-8)


def test_dtypes_are_kept_under_inject_hyperparams():
  params = {"w": jnp.ones((4, 3), jnp.bfloat16), "s": jnp.ones(3, jnp.float32)}
  grads = jax.tree.map(lambda p: p * 10, params)
  ours = optim.inject_hyperparams(optim.adaptive_grad_clip)(clipping=0.01)
  updates, _ = jax.jit(ours.update)(grads, ours.init(params), params)
  assert updates["w"].dtype == jnp.bfloat16
  # Each column: ||W_i|| = 2, ||G_i|| = 20 > 0.01 * 2, so G_i -> G_i * 0.02 / 20 = 0.01 each.
  np.testing.assert_allclose(np.asarray(updates["w"], np.float32), 0.01, rtol=1e-2)
  theirs = optax.inject_hyperparams(optax.adaptive_grad_clip)(clipping=0.01)
  assert theirs.update(grads, theirs.init(params), params)[0]["w"].dtype == jnp.float32
