"""MaskSparsity against a NumPy transcription of the official `update_bn_by_names_dict`
(CASIA-IVA-Lab/MaskSparsity, `netslim/sparse.py`), and the L2 variant against optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import mask_sparsity

S, LR = 0.05, 0.4  # lr * s = 0.02: the smooth-L1 switch


def official_update(gamma, grad, mask, lr, s, regular_method):
  """`update_bn_by_names_dict` for one BatchNorm layer: the term added to `weight.grad`."""
  if regular_method == "L1":
    add_grad = s * np.sign(gamma)
  elif regular_method == "L2":
    add_grad = s * gamma
  else:  # smoothL1
    l2_mask = np.abs(gamma) < lr * s
    add_grad = s * np.sign(gamma) * ~l2_mask + l2_mask * (s * gamma)
  return grad + add_grad * mask


@pytest.mark.parametrize("penalty, method", [("l1", "L1"), ("l2", "L2"),
                                             ("smooth_l1", "smoothL1")])
def test_matches_official_code(penalty, method):
  rng = np.random.default_rng(0)
  gamma = rng.normal(size=8) * np.array([1, 1, 1, 1, 0.01, 0.01, 0.03, 0.0])  # both sides of 0.02
  channels = np.array([True, False, True, True, True, False, True, True])
  params = {"bn": {"scale": gamma, "bias": rng.normal(size=8)}, "kernel": rng.normal(size=(3, 8))}
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape), params)
  mask = {"bn": {"scale": channels, "bias": False}, "kernel": False}
  opt = mask_sparsity(S, mask, LR if penalty == "smooth_l1" else None, penalty=penalty)
  f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  out, _ = jax.jit(opt.update)(f32(grads), opt.init(f32(params)), f32(params))
  expected = official_update(gamma, grads["bn"]["scale"], channels, LR, S, method)
  np.testing.assert_allclose(out["bn"]["scale"], expected, rtol=1e-6, atol=1e-7)
  # Unmasked channels and leaves pass through bitwise.
  np.testing.assert_array_equal(out["bn"]["scale"][~channels],
                                np.float32(grads["bn"]["scale"])[~channels])
  for leaf in (lambda t: t["bn"]["bias"], lambda t: t["kernel"]):
    np.testing.assert_array_equal(leaf(out), np.float32(leaf(grads)))


def test_l2_with_whole_leaf_flags_is_optax_add_decayed_weights():
  params = {"a": jnp.array([0.5, -2.0]), "b": jnp.array([1.0, 3.0])}
  grads = {"a": jnp.array([0.1, 0.2]), "b": jnp.array([-0.3, 0.4])}
  flags = {"a": True, "b": False}
  ours, theirs = (opt.update(grads, opt.init(params), params)[0] for opt in (
      mask_sparsity(0.1, flags, penalty="l2"), optax.add_decayed_weights(0.1, flags)))
  for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(x, y, rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: mask_sparsity(1e-4, None), "mask is required"),
    (lambda: mask_sparsity(1e-4, np.ones(3, bool)), "mask"),
    (lambda: mask_sparsity(1e-4, {"w": np.ones(3)}), r"mask\['w'\] must be a bool"),
    (lambda: mask_sparsity(1e-4, {"w": True}, penalty="smooth_l1"), "base_learning_rate"),
    (lambda: mask_sparsity(1e-4, {"w": True}, 0.0, penalty="smooth_l1"), "base_learning_rate"),
    (lambda: mask_sparsity(1e-4, {"w": np.ones(2, bool)}).init({"w": jnp.ones(3)}),
     r"mask\['w'\] has shape \(2,\)"),
    (lambda: mask_sparsity(1e-4, {"v": True}).init({"w": jnp.ones(3)}), "pytree"),
], ids=["none", "single_array", "float_leaf", "smooth_without_lr", "smooth_zero_lr",
        "wrong_shape", "wrong_structure"])
def test_bad_masks_raise(make, message):
  with pytest.raises(ValueError, match=message):
    make()
