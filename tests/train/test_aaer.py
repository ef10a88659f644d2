"""AAER against a float64 NumPy transcription of the official training script's step.

The transcription keeps the script's boolean indexing (`output_org[abnormal_example]`), its
`l2_square` (squared distance summed over logits, mean over examples), its detached loss terms and
its `normal_variation.item()`; gradients come from central differences with those held fixed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import aaer, aaer_regularizer

L1, L2, L3 = 1.0, 4.0, 1.5


def _np_regularizer(loss_before, loss_after, z_before, z_after, l1=L1, l2=L2, l3=L3):
  """The script's lines, verbatim in NumPy (boolean indexing, Python `if`s)."""
  abnormal = loss_before > loss_after
  normal = loss_before <= loss_after
  m, k = np.count_nonzero(abnormal), np.count_nonzero(normal)
  l2_square = lambda a, b: ((a - b) ** 2).sum(1).mean(0)
  if m == 0 or k == 0:
    return 0.0
  abnormal_variation = l2_square(z_before[abnormal], z_after[abnormal])
  normal_variation = l2_square(z_before[normal], z_after[normal])
  abnormal_ce = (abnormal * (loss_before - loss_after)).sum() / m
  return (l1 * m / len(loss_before)) * (
      l2 * abnormal_ce + l3 * max(abnormal_variation - normal_variation, 0.0))


def test_regularizer_matches_the_script_and_its_gradient():
  rng = np.random.default_rng(0)
  cases = []
  for split in ([1, 0, 1, 0, 0, 1], [1] * 6, [0] * 6):
    before = rng.uniform(1.0, 2.0, size=6)
    after = np.where(np.array(split) == 1, before - 0.3, before + 0.3)
    z0, z1 = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    z1[np.array(split) == 1] *= 2.5  # abnormal examples vary more: the max(., 0) is active
    cases.append((before, after, z0, z1))
  for before, after, z0, z1 in cases:
    args = [a.astype(np.float32) for a in (before, after, z0, z1)]
    value, grads = fast_jit(jax.value_and_grad(aaer_regularizer, argnums=(1, 3)))(*args)
    np.testing.assert_allclose(value, _np_regularizer(before, after, z0, z1), rtol=1e-5)
    # The loss terms are detached in the script: no gradient through loss_after.
    np.testing.assert_array_equal(grads[0], 0.0)
    abnormal = before > after
    m = abnormal.sum()
    expected = np.zeros_like(z1)
    if 0 < m < len(before):
      normal_variation = ((z1 - z0)[~abnormal] ** 2).sum(1).mean()
      if ((z1 - z0)[abnormal] ** 2).sum(1).mean() > normal_variation:
        expected[abnormal] = L1 * m / len(before) * L3 * 2 * (z1 - z0)[abnormal] / m
    np.testing.assert_allclose(grads[1], expected, rtol=1e-5, atol=1e-6)


D, H, C, B = 3, 4, 3, 8
EPS, ALPHA, LR = 0.4, 1.0, 0.5


def _np_forward(p, x):
  h = np.tanh(x @ p["w1"] + p["b1"])
  return h @ p["w2"] + p["b2"]


def _np_losses(p, x, y):
  z = _np_forward(p, x)
  z = z - z.max(1, keepdims=True)
  return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))), _np_forward(p, x)


def _central(fn, value, h=1e-6):
  grad = np.zeros_like(value)
  for idx in np.ndindex(value.shape):
    up, down = value.copy(), value.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (fn(up) - fn(down)) / (2 * h)
  return grad


def _model_fn(params, x, y):
  z = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
  losses = -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1)[:, 0]
  return losses, z


def test_one_step_matches_the_official_script():
  rng = np.random.default_rng(3)
  params = {"w1": 2.0 * rng.normal(size=(D, H)), "b1": rng.normal(size=H),
            "w2": 2.0 * rng.normal(size=(H, C)), "b2": rng.normal(size=C)}
  params = {k: v.astype(np.float32) for k, v in params.items()}
  x = rng.uniform(0.0, 1.0, size=(B, D)).astype(np.float32)
  y = rng.integers(0, C, size=B).astype(np.int32)
  key = jax.random.key(7)
  training = aaer(_model_fn, optax.sgd(LR), epsilon=EPS, alpha=ALPHA, clip_min=0.0, clip_max=1.0)

  def one_step(params, x, y):
    state = training.init(params, jax.random.key(0))
    state, metrics = training.step(state, (x, y), key)
    return state.params, metrics

  new, metrics = fast_jit(one_step)(params, x, y)

  # The script, with its random start drawn as documented: U(-2 eps, 2 eps), clipped to [0, 1].
  p64 = {k: v.astype(np.float64) for k, v in params.items()}
  x64 = x.astype(np.float64)
  delta0 = np.asarray(jax.random.uniform(key, x.shape, jnp.float32, -1.0, 1.0), np.float64)
  delta0 = np.clip(2 * EPS * delta0, -x64, 1 - x64)
  loss_before, z_before = _np_losses(p64, x64 + delta0, y)
  grad = _central(lambda d: _np_losses(p64, x64 + d, y)[0].mean(), delta0)
  delta = np.clip(delta0 + ALPHA * EPS * np.sign(grad), -x64, 1 - x64)
  x_adv = x64 + delta
  loss_after, z_after = _np_losses(p64, x_adv, y)
  abnormal = loss_before > loss_after
  assert 0 < abnormal.sum() < B, "the case must hold abnormal and normal examples"
  objective = loss_after.mean() + _np_regularizer(loss_before, loss_after, z_before, z_after)
  np.testing.assert_allclose(metrics["objective"], objective, rtol=1e-4)
  np.testing.assert_allclose(metrics["abnormal_fraction"], abnormal.mean(), rtol=1e-6)

  normal_variation = ((z_after - z_before)[~abnormal] ** 2).sum(1).mean()  # .item(): constant

  def detached_objective(p):
    after, z = _np_losses(p, x_adv, y)
    m = abnormal.sum()
    variation = ((z - z_before)[abnormal] ** 2).sum(1).mean()
    return after.mean() + L1 * m / B * L3 * max(variation - normal_variation, 0.0)

  for name in params:
    grad_name = _central(
        lambda v, name=name: detached_objective({**p64, name: v}), p64[name])
    np.testing.assert_allclose(new[name], p64[name] - LR * grad_name, rtol=1e-4, atol=1e-5)


def test_projected_variant_ends_on_the_budget():
  """project=True (the script's --clamp 1): start in U(-eps, eps), clip the step to +-eps. For
  losses l_i = c . x_i and alpha = 2 the adversarial input is exactly x + eps sign(c), whatever
  the start (delta0 + 2 eps sign(c) lies beyond the budget), so the adversarial loss is
  mean(c . x) + eps ||c||_1 (hand-derived)."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(6, 4)).astype(np.float32)
  c = rng.normal(size=4).astype(np.float32)
  model_fn = lambda params, x, y: (x @ params, (x @ params)[:, None])
  training = aaer(model_fn, optax.sgd(0.1), epsilon=0.3, alpha=2.0, project=True)
  # With the warm-up, the first step (count 0) has w = 0: the projection to +-eps w = 0 leaves
  # the clean input.
  warming = aaer(model_fn, optax.sgd(0.1), epsilon=0.3, alpha=2.0, project=True,
                 warmup_steps=10)

  def one_step(c, x):
    losses = []
    for t in (training, warming):
      state = t.init(c, jax.random.key(0))
      losses.append(t.step(state, (x, jnp.zeros(6, jnp.int32)), jax.random.key(4))[1]["loss"])
    return losses

  adversarial, warm = fast_jit(one_step)(c, x)
  clean = np.mean(x.astype(np.float64) @ c)
  np.testing.assert_allclose(adversarial, clean + 0.3 * np.abs(c).sum(), rtol=1e-5)
  np.testing.assert_allclose(warm, clean, rtol=1e-5, atol=1e-6)


def test_rejects_bad_arguments():
  for kwargs, name in (({"epsilon": 0.0}, "epsilon"), ({"epsilon": 0.1, "alpha": -1.0}, "alpha"),
                       ({"epsilon": 0.1, "lambda3": -1.0}, "lambda3"),
                       ({"epsilon": 0.1, "clip_min": 1.0, "clip_max": 0.0}, "clip_min"),
                       ({"epsilon": 0.1, "project": "yes"}, "project")):
    with pytest.raises(ValueError, match=name):
      aaer(_model_fn, optax.sgd(0.1), **kwargs)
  with pytest.raises(ValueError, match="loss_before"):
    aaer_regularizer(jnp.zeros(3), jnp.zeros(4), jnp.zeros((3, 2)), jnp.zeros((3, 2)))
