"""PS-KD against the official training loop (github.com/lgcnsai/PS-KD-Pytorch, `main.py`).

The battery checks one call against a float64 transcription; here: the schedule under a traced
epoch, and two epochs of the official loop (epoch-0 one-hot buffer, alpha_t from the epoch,
rows overwritten with the softmax) through `buffered_classifier`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn._compile import fast_jit
from jaxlearn.losses import buffered_classifier, ps_kd_alpha, ps_kd_loss


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_schedule_under_a_traced_epoch():
  epochs = np.arange(5, dtype=np.int32)
  got = fast_jit(jax.vmap(lambda t: ps_kd_alpha(t, num_epochs=5, alpha_T=0.8)))(epochs)
  np.testing.assert_allclose(got, 0.8 * (epochs + 1) / 5, rtol=1e-6)


def test_two_epochs_of_the_official_loop():
  rng = np.random.default_rng(0)
  n, d, classes, num_epochs = 6, 3, 4, 2
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.integers(0, classes, size=n).astype(np.int32)
  params = [rng.normal(size=(d, classes)).astype(np.float32) for _ in range(4)]
  schedule = [(0, np.array([4, 0, 2])), (0, np.array([1, 5, 3])),
              (1, np.array([0, 3, 5])), (1, np.array([2, 4, 1]))]

  loss = lambda z, labels, prev, epoch: ps_kd_loss(
      z, labels, prev, alpha=ps_kd_alpha(epoch, num_epochs=num_epochs))
  init, loss_fn, _ = buffered_classifier(
      lambda w, inputs: inputs @ w, lambda key: params[0], loss,
      jax.nn.one_hot(y, classes))  # the official epoch-0 assignment, made up front
  step = fast_jit(loss_fn)
  _, state = init(jax.random.key(0))

  all_predictions = np.zeros((n, classes))  # official: zeros, one-hot written at epoch 0
  for w, (epoch, idx) in zip(params, schedule):
    value, state = step(w, state, x[idx], y[idx], indices=idx, epoch=jnp.int32(epoch))
    alpha_t = max(0.0, 0.8 * (epoch + 1) / num_epochs)
    one_hot = np.eye(classes)[y[idx]]
    if epoch == 0:
      all_predictions[idx] = one_hot
    soft_targets = (1 - alpha_t) * one_hot + alpha_t * all_predictions[idx]
    outputs = x[idx].astype(np.float64) @ w
    expected = (-soft_targets * np.log(_softmax(outputs))).mean(0).sum()
    all_predictions[idx] = _softmax(outputs)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(state["buffer"], all_predictions, rtol=1e-5, atol=1e-7)
