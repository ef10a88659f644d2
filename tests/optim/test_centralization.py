"""Gradient centralization and normalization against NumPy, optax.centralize and pytorch-optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim


def _grads(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "dense": rng.normal(size=(5, 3)).astype(np.float32),  # Flax (in, out)
      "conv": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),  # HWIO
      "bias": rng.normal(size=3).astype(np.float32),
      "pair": rng.normal(size=2).astype(np.float32),
  }


def _apply(transform, grads):
  state = transform.init(grads)
  return jax.jit(transform.update)(jax.tree.map(jnp.asarray, grads), state)[0]


def test_centralization_removes_each_output_units_mean():
  grads = _grads()
  out = _apply(optim.centralize_gradients(), grads)
  np.testing.assert_allclose(out["dense"], grads["dense"] - grads["dense"].mean(0), atol=1e-6)
  np.testing.assert_allclose(
      out["conv"], grads["conv"] - grads["conv"].mean((0, 1, 2), keepdims=True), atol=1e-6)
  np.testing.assert_array_equal(out["bias"], grads["bias"])  # ndim <= 1: unchanged
  np.testing.assert_allclose(np.asarray(out["conv"]).mean((0, 1, 2)), 0.0, atol=1e-6)


def test_optax_centralize_uses_the_pytorch_axis_which_is_wrong_for_flax_kernels():
  """optax averages over axes 1.. (PyTorch's (out, in)); on a Flax (in, out) kernel it centres each
  input row across outputs. jaxlearn's channel_axis=0 reproduces optax exactly."""
  grads = _grads(1)
  ours = _apply(optim.centralize_gradients(), grads)
  theirs = _apply(optax.centralize(), grads)
  assert not np.allclose(ours["dense"], theirs["dense"], atol=1e-3)
  np.testing.assert_allclose(np.asarray(theirs["dense"]).mean(1), 0.0, atol=1e-6)
  torch_layout = _apply(optim.centralize_gradients(channel_axis=0), grads)
  for name in grads:
    np.testing.assert_allclose(torch_layout[name], theirs[name], atol=1e-6)


def test_normalization_divides_by_the_unbiased_std():
  grads = _grads(2)
  out = _apply(optim.normalize_gradients(), grads)
  for name in ("dense", "conv", "bias"):
    g = grads[name].astype(np.float64)
    np.testing.assert_allclose(out[name], g / (g.std(ddof=1) + 1e-8), rtol=1e-5)
  np.testing.assert_array_equal(out["pair"], grads["pair"])  # 2 elements: unchanged


def test_zero_gradients_stay_zero_and_dtype_is_kept():
  grads = {"w": jnp.zeros((4, 3), jnp.bfloat16)}
  for transform in (optim.centralize_gradients(), optim.normalize_gradients()):
    out = _apply(transform, grads)
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(out["w"], 0.0)


@pytest.mark.parity
def test_match_pytorch_optimizer_helpers_in_pytorch_layout():
  torch = pytest.importorskip("torch")
  pytest.importorskip("pytorch_optimizer")
  from pytorch_optimizer.optimizer.gradient_centralization import centralize_gradient
  from pytorch_optimizer.optimizer.utils.gradient import normalize_gradient

  grads = _grads(3)
  ours_gc = _apply(optim.centralize_gradients(), grads)
  ours_gn = _apply(optim.normalize_gradients(), grads)
  for name, g in grads.items():
    torch_g = torch.tensor(np.moveaxis(g, -1, 0).copy()) if g.ndim > 1 else torch.tensor(g)
    centred, normalized = torch_g.clone(), torch_g.clone()
    centralize_gradient(centred, gc_conv_only=False)
    normalize_gradient(normalized)
    back = lambda t: np.moveaxis(t.numpy(), 0, -1) if g.ndim > 1 else t.numpy()
    np.testing.assert_allclose(ours_gc[name], back(centred), atol=1e-6)
    np.testing.assert_allclose(ours_gn[name], back(normalized), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory, kwargs, name", [
    (optim.normalize_gradients, dict(eps=0.0), "eps"),
    (optim.normalize_gradients, dict(eps=float("nan")), "eps"),
    (optim.centralize_gradients, dict(channel_axis=1.5), "channel_axis"),
])
def test_bad_arguments_raise(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)
