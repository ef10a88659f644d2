"""SoRA: soft-thresholding by hand and SparseAdamW against a NumPy transcription of the official
code (TsinghuaC3I/SoRA src/sparse_optimizer.py); the gated LoRA adapter against NumPy."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlearn import nn, optim
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


def _official_sparse_adamw(p, grads, lr, b1, b2, eps, wd, lam):
  """The official SparseAdamW step (HF AdamW: eps on sqrt(v), bias correction in the step size),
  then p[p > lam] -= lam; p[p < -lam] += lam; p[|p| < lam] = 0."""
  p = p.astype(np.float64).copy()
  m, v = np.zeros_like(p), np.zeros_like(p)
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    p = p + (-step * m / (np.sqrt(v) + eps) - lr * wd * p)
    p = np.where(p > lam, p - lam, np.where(p < -lam, p + lam, np.where(np.abs(p) < lam, 0.0, p)))
  return p


def test_sora_matches_the_official_sparse_adamw():
  rng = np.random.default_rng(0)
  start = rng.normal(scale=0.05, size=16).astype(np.float32)
  grads = [rng.normal(size=16).astype(np.float32) for _ in range(5)]
  lr, wd, lam = 1e-2, 0.1, 3e-3
  opt = optim.sora(lr, weight_decay=wd, sparse_lambda=lam)
  params = {"gate": jnp.asarray(start)}
  state = opt.init(params)
  for g in grads:
    updates, state = opt.update({"gate": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  expected = _official_sparse_adamw(start, grads, lr, 0.9, 0.999, 1e-6, wd, lam)
  np.testing.assert_allclose(params["gate"], expected, rtol=1e-4, atol=1e-6)
  assert np.sum(expected == 0) > 0 and np.array_equal(params["gate"] == 0, expected == 0)


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


def test_experiment_quick_run(tmp_path):
  from experiments import sora_sparse_lora_lambda_sweep as experiment

  experiment.run(quick=True, out=tmp_path, seed=0)
  saved = json.loads((tmp_path / f"{experiment.NAME}.json").read_text())
  assert (tmp_path / f"{experiment.NAME}.png").exists()
  assert saved["claim_held"] is None
  assert len(saved["metrics"]["nonzero_gates"]) == len(saved["metrics"]["lambdas"])
  assert all(0.0 <= a <= 1.0 for a in saved["metrics"]["test_accuracy"])
