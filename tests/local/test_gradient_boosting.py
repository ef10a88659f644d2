"""GB-DNN: the fitted model replayed in float64 NumPy with the official code's residuals and
Newton step (`Base/_losses.py` `multi_class_loss`, re-expressed), frozen earlier stages, and
Keras-style early stopping replayed on the logged epoch losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.local import gradient_boosting as gb
from jaxlearn.local import gb_dnn_decision, gb_dnn_fit, gb_dnn_stage

N, D, K, UNITS = 48, 4, 3, 6


@pytest.fixture(autouse=True)
def fast_stage(monkeypatch):
  """gb_dnn_fit's programs with the fast-compile options of the tests."""
  monkeypatch.setattr(gb, "_train_stage", fast_jit(gb._train_stage_impl,
                                                   static_argnames=gb._STAGE_STATIC))
  monkeypatch.setattr(gb, "_new_layers", fast_jit(gb._new_layers_impl,
                                                  static_argnames=("units", "num_classes")))
  monkeypatch.setattr(gb, "_boost", fast_jit(gb._boost_impl))


def problem(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N, D)).astype(np.float32)
  labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.3).astype(int)
  return x, labels


def official_residuals(y, raw):
  """`multi_class_loss.derive`: Y - softmax(F)."""
  p = np.exp(raw - raw.max(1, keepdims=True))
  return y - p / p.sum(1, keepdims=True)


def official_newton_step(y, residuals, f):
  """`multi_class_loss.newton_step`."""
  p = y - residuals
  return -np.sum(f * (y - p)) / np.sum(f * f * p * (p - 1))


def test_fit_replayed_in_numpy_and_earlier_stages_stay_frozen():
  x, labels = problem()
  eta = 0.5
  kwargs = dict(units=UNITS, eta=eta, epochs=6, batch_size=16, learning_rate=1e-2)
  model, history = gb_dnn_fit(jax.random.key(0), x, labels, K, stages=3, **kwargs)
  y = np.eye(K)[labels]
  raw, h = np.zeros((N, K)), np.float64(x)
  for t, ((w, b), (wo, bo)) in enumerate(zip(model.hidden, model.outputs)):
    r = official_residuals(y, raw)
    h = np.maximum(h @ np.float64(w) + b, 0)
    f = h @ np.float64(wo) + bo
    rho = eta * official_newton_step(y, r, f)
    np.testing.assert_allclose(model.steps[t], rho, rtol=1e-4)
    raw = raw + rho * f
    loss = np.mean(np.log(np.exp(raw).sum(1)) - (y * raw).sum(1))
    np.testing.assert_allclose(history["loss"][t], loss, rtol=1e-4)
  np.testing.assert_allclose(gb_dnn_decision(model, x), raw, rtol=1e-4, atol=1e-5)
  assert history["loss"][-1] < history["loss"][0] < np.log(K)
  # Stage 3 changed nothing that stages 1 and 2 had trained.
  shorter, _ = gb_dnn_fit(jax.random.key(0), x, labels, K, stages=2, **kwargs)
  for a, b in zip(jax.tree.leaves((shorter.hidden, shorter.outputs, shorter.steps)),
                  jax.tree.leaves((model.hidden[:2], model.outputs[:2], model.steps[:2]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(model.outputs[2][0], model.outputs[1][0])  # the last stage trained


def test_early_stopping_follows_keras():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(N, D)).astype(np.float32)
  residuals = rng.normal(size=(N, K)).astype(np.float32)  # noise: the MSE soon stops improving
  layer = (rng.normal(size=(D, UNITS)).astype(np.float32), np.zeros(UNITS, np.float32))
  output = (rng.normal(size=(UNITS, K)).astype(np.float32), np.zeros(K, np.float32))
  patience = 2
  _, _, losses = gb_dnn_stage(jax.random.key(0), features, residuals, layer, output, 0.3,
                              epochs=30, batch_size=8, patience=patience)
  losses = np.asarray(losses)
  best, wait, stop = np.inf, 0, None
  for epoch, value in enumerate(losses):
    if value < best:
      best, wait = value, 0
    else:
      wait += 1
    if wait >= patience:
      stop = epoch
      break
  assert stop is not None and stop < 29, losses
  assert np.isfinite(losses[: stop + 1]).all() and np.isnan(losses[stop + 1:]).all()


def test_invalid_arguments_raise():
  x, labels = problem()
  for kwargs, name in (({"eta": 0.0}, "eta"), ({"units": 0}, "units"),
                       ({"batch_size": N + 1}, "batch_size"), ({"patience": 0}, "patience")):
    with pytest.raises(ValueError, match=name):
      gb_dnn_fit(jax.random.key(0), x, labels, K, **kwargs)
  with pytest.raises(ValueError, match="labels"):
    gb_dnn_fit(jax.random.key(0), x, labels - 1, K)
