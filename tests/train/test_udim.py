"""UDIM against a float64 NumPy transcription of the official IADA_FINAL.step (raw-input branch).

The model is softmax regression, logits = x W + b, whose per-sample gradients are closed-form
(x_n (p_n - y_n)^T and p_n - y_n, what BackPACK's BatchGrad returns for the official classifier
layer); the two derivatives the official code takes by autograd (the input gradient of
L + rho ||grad L|| and the parameter gradient of the inconsistency) are central differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import udim, udim_inconsistency

B, D, C = 6, 4, 3
RHO, SYN_LR, WORST = 0.05, 0.5, 1.0


def _loss_fn(params, x, y):
  logits = x @ params["w"] + params["b"]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _np_loss(w, b, x, y):
  p = _softmax(x @ w + b)
  return -np.mean(np.log(p[np.arange(len(y)), y]))


def _np_grads(w, b, x, y):
  delta = _softmax(x @ w + b) - np.eye(C)[y]
  return x.T @ delta / len(y), delta.mean(0)


def _np_per_sample(w, b, x, y):
  delta = _softmax(x @ w + b) - np.eye(C)[y]
  return np.einsum("nd,nc->ndc", x, delta).reshape(len(y), -1), delta


def _np_inconsistency(w, b, x, x_syn, y, penalize_bias):
  """_get_grads_var + _compute_distance_grads_var + _grads_norm_syn, official formulas."""
  origin = _np_per_sample(w, b, x, y)
  syn = _np_per_sample(w, b, x_syn, y)
  leaves = (0, 1) if penalize_bias else (0,)
  var_o, var_s, norm_term = [], [], 0.0
  for i in leaves:
    mean = origin[i].mean(0, keepdims=True)
    var_o.append(((origin[i] - mean) ** 2).mean(0))
    var_s.append(((syn[i] - mean) ** 2).mean(0))
    norm_term += (syn[i] ** 2).sum(1).mean() / origin[i].shape[1]
  var_o, var_s = np.concatenate(var_o), np.concatenate(var_s)
  avg = 0.5 * (var_o + var_s)
  return 0.5 * (((var_o - avg) ** 2).mean() + ((var_s - avg) ** 2).mean()) + norm_term


def _central(fn, value, h=1e-5):
  grad = np.zeros_like(value)
  for idx in np.ndindex(value.shape):
    up, down = value.copy(), value.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (fn(up) - fn(down)) / (2 * h)
  return grad


def _np_udim_direction(w, b, x, y, penalize_bias):
  gw, gb = _np_grads(w, b, x, y)

  def ascent(inputs):
    gw_, gb_ = _np_grads(w, b, inputs, y)
    return _np_loss(w, b, inputs, y) + RHO * np.sqrt((gw_**2).sum() + (gb_**2).sum())

  h = _central(ascent, x)
  x_syn = x + SYN_LR * h / np.maximum(np.sqrt((h**2).sum(0, keepdims=True)), 1e-12)
  scale = RHO / (np.sqrt((gw**2).sum() + (gb**2).sum()) + 1e-12)
  sam_w, sam_b = _np_grads(w + scale * gw, b + scale * gb, x, y)
  inc_w = _central(lambda w_: _np_inconsistency(w_, b, x, x_syn, y, penalize_bias), w)
  inc_b = _central(lambda b_: _np_inconsistency(w, b_, x, x_syn, y, penalize_bias), b)
  return sam_w + WORST * inc_w, sam_b + WORST * inc_b, x_syn


@pytest.mark.parametrize("penalize_bias", [True, False])
def test_one_step_matches_the_official_raw_input_branch(penalize_bias):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, D)).astype(np.float32)
  y = rng.integers(0, C, size=B).astype(np.int32)
  params = {"w": (0.5 * rng.normal(size=(D, C))).astype(np.float32),
            "b": (0.1 * rng.normal(size=C)).astype(np.float32)}
  mask = None if penalize_bias else {"w": True, "b": False}
  training = udim(_loss_fn, optax.sgd(1.0), rho=RHO, syn_lr=SYN_LR, worst_weight=WORST,
                  penalty_mask=mask)

  def one_step(params, x, y):
    state = training.init(params, jax.random.key(0))
    state, metrics = training.step(state, (x, y), jax.random.key(1))
    return state.params, metrics

  new, metrics = fast_jit(one_step)(params, x, y)
  w64, b64 = params["w"].astype(np.float64), params["b"].astype(np.float64)
  dw, db, x_syn = _np_udim_direction(w64, b64, x.astype(np.float64), y, penalize_bias)
  np.testing.assert_allclose(new["w"], w64 - dw, rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(new["b"], b64 - db, rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(metrics["loss"], _np_loss(w64, b64, x, y), rtol=1e-5)
  np.testing.assert_allclose(
      metrics["inconsistency"],
      _np_inconsistency(w64, b64, x.astype(np.float64), x_syn, y, penalize_bias), rtol=2e-4)


def test_inconsistency_is_zero_for_identical_domains_without_the_norm_term():
  """With x_perturbed = x both variances agree, so only the squared-norm term remains:
  sum over leaves of mean_n ||g_n||^2 / leaf size (hand formula, float64)."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(B, D)).astype(np.float32)
  y = rng.integers(0, C, size=B).astype(np.int32)
  params = {"w": rng.normal(size=(D, C)).astype(np.float32),
            "b": rng.normal(size=C).astype(np.float32)}
  value = fast_jit(lambda p, x, y: udim_inconsistency(_loss_fn, p, x, x, y))(params, x, y)
  gw, gb = _np_per_sample(params["w"].astype(np.float64), params["b"].astype(np.float64), x, y)
  expected = (gw**2).sum(1).mean() / (D * C) + (gb**2).sum(1).mean() / C
  np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_rejects_bad_arguments():
  for name in ("rho", "syn_lr", "worst_weight"):
    with pytest.raises(ValueError, match=name):
      udim(_loss_fn, optax.sgd(0.1), **{name: -1.0})
  training = udim(_loss_fn, optax.sgd(0.1), penalty_mask={"w": False, "b": False})
  with pytest.raises(ValueError, match="penalty_mask"):
    training.init({"w": jnp.zeros((D, C)), "b": jnp.zeros(C)}, jax.random.key(0))
