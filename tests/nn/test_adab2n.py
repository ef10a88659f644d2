"""AdaB²N against a NumPy transcription of the official code (lvyilin/AdaB2N,
``models/utils/adab2n.py``: ``AdaB2N.training_forward``, ``get_eta``; the per-task counts of
``models/derpp_ada.py``'s ``set_counts``), in float64, channels last."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn
from jaxlearn.nn import linen as jnn_linen

C, K, EPS = 3, 4, 1e-5


class OfficialNumPy:
  """The official layer's training forward, written in NumPy (torch momentum m)."""

  def __init__(self, m, kappa):
    self.m, self.kappa = m, kappa
    self.mean, self.var = np.zeros(C), np.ones(C)
    self.tracked, self.last_eta = 0, None

  def eta(self):
    if self.kappa == 0.0:
      return 1.0 / self.tracked
    if self.kappa == 1.0:
      return self.m
    if self.last_eta is None:
      self.last_eta = self.m ** self.kappa
    else:
      self.last_eta = self.last_eta / (self.last_eta + (1 - self.m) ** self.kappa)
    return self.last_eta

  def __call__(self, x, w, ids, task, gamma, beta):
    self.tracked += 1
    eta = self.eta()
    if task > 0:
      uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
      extended = np.zeros(task + 1)
      extended[uniq] = counts
      concentration = np.exp(w[: task + 1]) + extended
      task_w = concentration / concentration.sum()
      sample_w = task_w[uniq[inverse]] / counts[inverse]
      mean = x.mean(axis=(1, 2)).T @ sample_w
      var = ((x - mean) ** 2).mean(axis=(1, 2)).T @ sample_w
    else:
      mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    y = gamma * (x - mean) / np.sqrt(var + EPS) + beta
    self.mean = self.mean + eta * (mean - self.mean)
    self.var = (1 - eta) * self.var + eta * var
    loss = np.mean((mean - self.mean) ** 2) + np.mean((var - self.var) ** 2)
    return y, loss


RNG = np.random.default_rng(0)
GAMMA, BETA = RNG.uniform(0.5, 1.5, C), RNG.normal(size=C)
W = RNG.normal(size=K) * 0.5
# (task ids, current task): task 0 alone, then replay with an absent task (2 of 0..2 missing).
STEPS = [(np.array([0, 0, 0, 0, 0, 0]), 0), (np.array([1, 1, 1, 0, 0, 1]), 1),
         (np.array([3, 3, 0, 1, 3, 0]), 3)]


def test_training_matches_the_official_code_in_numpy():
  layer = jnn.AdaB2N(C, num_tasks=K, kappa=0.5, momentum=0.8, rngs=nnx.Rngs(0))
  layer.scale[...], layer.bias[...], layer.task_weight[...] = GAMMA, BETA, W
  reference = OfficialNumPy(m=0.2, kappa=0.5)
  for step, (ids, task) in enumerate(STEPS):
    x = (RNG.normal(size=(6, 2, 2, C)) * (1 + step) + step).astype(np.float32)
    y_ref, loss_ref = reference(x.astype(np.float64), W, ids, task, GAMMA, BETA)
    y = layer(x, task_ids=jnp.asarray(ids), current_task=task)
    np.testing.assert_allclose(y, y_ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(layer.mean[...], reference.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.var[...], reference.var, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.regularizer[...], loss_ref, rtol=1e-4, atol=1e-6)
  # The current task defaults to the largest task id of the batch.
  np.testing.assert_allclose(
      jnn.adab2n_statistics(x, W, ids), jnn.adab2n_statistics(x, W, ids, 3), rtol=1e-6)


def test_modified_momentum_and_task_weight_gradient():
  for kappa in (0.0, 0.3, 1.0):
    reference, last = OfficialNumPy(m=0.1, kappa=kappa), 0.0
    for t in range(1, 5):
      reference.tracked = t
      last = jnn.adab2n_eta(float(t), last, momentum=0.9, kappa=kappa)
      np.testing.assert_allclose(last, reference.eta(), rtol=1e-6)

  # Gradient of the output w.r.t. the task weights against central differences of the NumPy code.
  x = RNG.normal(size=(6, 2, 2, C))
  ids, task = STEPS[2]
  probe = RNG.normal(size=x.shape)
  def numpy_objective(w):
    return np.sum(OfficialNumPy(0.1, 1.0)(x, w, ids, task, GAMMA, BETA)[0] * probe)
  def objective(w):
    mean, var = jnn.adab2n_statistics(jnp.asarray(x, jnp.float32), w, jnp.asarray(ids), task)
    return jnp.sum((GAMMA * (x - mean) * jax.lax.rsqrt(var + EPS) + BETA) * probe)
  grad = jax.jit(jax.grad(objective))(jnp.asarray(W, jnp.float32))
  h = 1e-5
  numeric = [(numpy_objective(W + h * e) - numpy_objective(W - h * e)) / (2 * h)
             for e in np.eye(K)]
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-3)
  assert np.all(np.asarray(grad)[task + 1:] == 0) and np.any(np.asarray(grad) != 0)

  # Task-weighted statistics of a batch spread over a named axis equal the full batch's.
  x32 = jnp.asarray(x, jnp.float32)
  synced = jax.vmap(lambda xs, i: jnn.adab2n_statistics(xs, W, i, axis_name="b"),
                    axis_name="b")(x32.reshape(2, 3, *x.shape[1:]), ids.reshape(2, 3))
  full = jnn.adab2n_statistics(x32, W, jnp.asarray(ids))
  for a, b in zip(synced, full):
    np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-6)


def test_linen_sows_the_same_regularizer_and_task_ids_are_checked():
  x = RNG.normal(size=(6, 2, 2, C)).astype(np.float32)
  ids, task = STEPS[2]
  layer = jnn.AdaB2N(C, num_tasks=K, kappa=0.5, rngs=nnx.Rngs(0))
  y = layer(x, task_ids=jnp.asarray(ids))
  module = jnn_linen.AdaB2N(num_tasks=K, kappa=0.5)
  variables = module.init(jax.random.key(0), x, use_running_average=True)
  y_linen, updates = module.apply(variables, x, jnp.asarray(ids), use_running_average=False,
                                  mutable=["batch_stats", "losses"])
  np.testing.assert_allclose(y_linen, y, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jnn.adab2n_regularizer(updates["losses"]),
                             jnn.adab2n_regularizer(layer), rtol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], layer.var[...], rtol=1e-6)

  with pytest.raises(ValueError, match="expects `task_ids`"):
    layer(x)  # training with several tasks needs task ids
  with pytest.raises(ValueError, match="task_ids must be in"):
    layer(x, task_ids=jnp.asarray(ids), current_task=1)
  with pytest.raises(ValueError, match="task_ids must be in"):
    layer(x, task_ids=jnp.asarray(ids - 1))
  with pytest.raises(ValueError, match="kappa"):
    jnn.AdaB2N(C, num_tasks=K, kappa=1.5)
  layer.eval()
  layer(x)  # evaluation needs no task ids
