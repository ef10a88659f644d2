"""SoRA: soft-thresholding by hand; SparseAdamW against a NumPy transcription of the official code
(TsinghuaC3I/SoRA src/sparse_optimizer.py) with the paper's soft threshold, and the official
three-mask threshold's difference; the official trainer's gate penalty; the gated LoRA adapter
against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlearn import nn, optim, registry
from jaxlearn.nn.lora import LinenLoRA


def test_soft_threshold_by_hand():
  t = optim.soft_threshold(0.5)
  params = {"g": jnp.asarray([2.0, -2.0, 0.3, -0.1, 0.0])}
  updates = {"g": jnp.asarray([-0.25, 0.25, 0.1, 0.0, 0.4])}
  out, _ = t.update(updates, t.init(params), params)
  new = optax.apply_updates(params, out)["g"]
  np.testing.assert_allclose(new, [1.25, -1.25, 0.0, 0.0, 0.0], atol=1e-7)


def test_soft_threshold_mask_and_dtype_and_params_requirement():
  params = {"g": jnp.asarray([0.2, -0.2], jnp.bfloat16), "w": jnp.asarray([0.2, -0.2])}
  t = optim.soft_threshold(0.5, mask={"g": True, "w": False})
  zeros = jax.tree.map(jnp.zeros_like, params)
  out, _ = t.update(zeros, t.init(params), params)
  assert out["g"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out["g"], np.float32), [-0.2, 0.2], rtol=1e-2)
  np.testing.assert_array_equal(out["w"], 0.0)
  with pytest.raises(ValueError, match="params"):
    optim.soft_threshold(0.1).update(zeros, optax.EmptyState())


def _official_threshold(p, lam):
  """The official code's three in-place masks, applied one after the other:
  p[p > lam] -= lam; p[p < -lam] += lam; p[abs(p) < lam] = 0."""
  p = p.copy()
  p[p > lam] -= lam
  p[p < -lam] += lam
  p[np.abs(p) < lam] = 0.0
  return p


def _soft_threshold(p, lam):
  """The proximal step of lam * ||p||_1 (the paper's update)."""
  return np.sign(p) * np.maximum(np.abs(p) - lam, 0.0)


def _sparse_adamw(p, grads, lr, b1, b2, eps, wd, lam, threshold=_soft_threshold):
  """The official SparseAdamW step (HF AdamW: eps on sqrt(v), bias correction in the step size),
  then `threshold` (the official code's is `_official_threshold`)."""
  p = p.astype(np.float64).copy()
  m, v = np.zeros_like(p), np.zeros_like(p)
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    p = threshold(p + (-step * m / (np.sqrt(v) + eps) - lr * wd * p), lam)
  return p


def _run_sora(start, grads, **kwargs):
  opt = optim.sora(**kwargs)
  params = {"gate": jnp.asarray(start)}
  state = opt.init(params)
  for g in grads:
    updates, state = opt.update({"gate": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params["gate"])


def test_sora_is_the_official_sparse_adamw_with_the_true_soft_threshold():
  rng = np.random.default_rng(0)
  start = rng.normal(scale=0.05, size=16).astype(np.float32)
  grads = [rng.normal(size=16).astype(np.float32) for _ in range(5)]
  lr, wd, lam = 1e-2, 0.1, 3e-3
  got = _run_sora(start, grads, learning_rate=lr, weight_decay=wd, sparse_lambda=lam)
  expected = _sparse_adamw(start, grads, lr, 0.9, 0.999, 1e-6, wd, lam)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  assert np.sum(expected == 0) > 0 and np.array_equal(got == 0, expected == 0)


def test_the_official_three_masks_zero_every_value_between_lambda_and_two_lambda():
  """Known difference: after p -= lam on p > lam, the third mask (|p| < lam) zeroes every value
  that started in (lam, 2 lam) (and in (-2 lam, -lam)); the true soft threshold (ours, the
  paper's proximal step) keeps them as |p| - lam. Outside that band both agree."""
  lam = 0.1
  inside = np.asarray([0.11, 0.15, 0.19, -0.12, -0.18])
  outside = np.asarray([0.0, 0.05, -0.09, 0.25, -0.3, 1.0])
  values = np.concatenate([inside, outside])
  t = optim.soft_threshold(lam)
  params = {"g": jnp.asarray(values, jnp.float32)}
  ours = np.asarray(optax.apply_updates(params, t.update(jax.tree.map(jnp.zeros_like, params),
                                                         t.init(params), params)[0])["g"])
  official = _official_threshold(values, lam)
  np.testing.assert_array_equal(official[:5], 0.0)
  np.testing.assert_allclose(ours[:5], _soft_threshold(inside, lam), rtol=1e-5)
  assert np.all(np.abs(ours[:5]) > 0)
  np.testing.assert_allclose(ours[5:], official[5:], rtol=1e-5, atol=1e-7)
  notes = registry.get("sora_sparse_lora").notes
  assert "(lambda, 2 lambda)" in notes and "sora_gate_penalty" in notes


def test_gate_penalty_is_the_official_trainers_lambda_times_mean_abs_gate():
  """src/trainer.py: loss += sparse_lambda * sum|gate| / numel over every lora.gate parameter."""
  params = {"layer1": {"a": jnp.ones((3, 2)), "gate": jnp.asarray([0.5, -1.5])},
            "layer2": {"a": jnp.ones((3, 4)), "gate": jnp.asarray([2.0, 0.0, -1.0, 0.25],
                                                                 jnp.bfloat16)}}
  gates = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == "gate", tree)
  penalty = optim.sora_gate_penalty(params, 10.0, gates)
  expected = 10.0 * (0.5 + 1.5 + 2.0 + 0.0 + 1.0 + 0.25) / 6
  np.testing.assert_allclose(penalty, expected, rtol=1e-6)
  assert penalty.dtype == jnp.float32
  grads = jax.grad(lambda p: optim.sora_gate_penalty(p, 10.0, gates))(params)
  np.testing.assert_allclose(grads["layer1"]["gate"], 10.0 / 6 * np.asarray([1.0, -1.0]))
  np.testing.assert_array_equal(grads["layer1"]["a"], 0.0)
  every_leaf = optim.sora_gate_penalty({"g": jnp.asarray([1.0, -3.0])}, 0.5)
  np.testing.assert_allclose(every_leaf, 0.5 * 2.0, rtol=1e-6)
  with pytest.raises(ValueError, match="sparse_lambda"):
    optim.sora_gate_penalty(params, -1.0, gates)
  assert "jaxlearn.optim.sora_gate_penalty" in registry.get("sora_sparse_lora").symbols


@pytest.mark.parametrize("kwargs, name", [
    (dict(sparse_lambda=-1e-3), "sparse_lambda"), (dict(b1=1.0), "b1"), (dict(eps=0.0), "eps"),
    (dict(learning_rate=-1.0), "learning_rate"), (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_arguments_raise(kwargs, name):
  if name == "sparse_lambda":
    with pytest.raises(ValueError, match="threshold"):
      optim.soft_threshold(-1e-3)
  with pytest.raises(ValueError, match=name):
    optim.sora(**{"learning_rate": 1e-3, **kwargs})


def test_lora_delta_matches_numpy_and_starts_at_zero():
  rng = np.random.default_rng(1)
  x, a = rng.normal(size=(3, 5)), rng.normal(size=(5, 4))
  b, gate = rng.normal(size=(4, 2)), rng.normal(size=4)
  np.testing.assert_allclose(nn.lora_delta(x, a, b, gate, 0.5), 0.5 * ((x @ a) * gate) @ b,
                             rtol=1e-5)
  params = nn.init_lora(jax.random.PRNGKey(0), 25, 3, 4, gated=True)
  assert params["a"].shape == (25, 4) and params["gate"].shape == (4,)
  assert float(jnp.max(jnp.abs(params["a"]))) <= 1 / 5
  np.testing.assert_array_equal(nn.lora_delta(jnp.ones((2, 25)), **params), 0.0)


def test_nnx_and_linen_adapters_compute_the_same_function():
  module = nn.LoRA(5, 3, 2, gated=True, scaling=2.0, rngs=nnx.Rngs(0))
  module.b[...] = jnp.arange(6.0).reshape(2, 3)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5)), jnp.float32)
  linen = LinenLoRA(5, 3, 2, gated=True, scaling=2.0)
  variables = {"params": {"a": module.a[...], "b": module.b[...], "gate": module.gate[...]}}
  np.testing.assert_allclose(module(x), linen.apply(variables, x), rtol=1e-6)
  assert set(linen.init(jax.random.PRNGKey(0), x)["params"]) == {"a", "b", "gate"}
  with pytest.raises(ValueError, match="rank"):
    nn.init_lora(jax.random.PRNGKey(0), 5, 3, 0)
