"""GBNN against the official package `gbnn` 0.0.2 (its `GBNN.py` loaded by path: the package's
`__init__` needs pandas): pseudo-residuals, Newton steps, the decision function and the exact
`to_NN` collapse; and our own fit replayed in float64 NumPy (every stage's residuals and Newton
step)."""

import importlib.util
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.local import gbnn as gbnn_module
from jaxlearn.local import (GBNNModel, boosting_newton_step, boosting_residuals, gbnn_decision,
                            gbnn_fit, gbnn_to_mlp)

T, J, D, K, N = 4, 2, 3, 3, 40


def official():
  """`gbnn/GBNN.py` as a module, or skip."""
  pytest.importorskip("sklearn")
  spec = importlib.util.find_spec("gbnn")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("gbnn is not installed")
  path = Path(list(spec.submodule_search_locations)[0]) / "GBNN.py"
  module_spec = importlib.util.spec_from_file_location("gbnn_official_GBNN", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  # gbnn 0.0.2 predates scikit-learn's estimator tags: under scikit-learn >= 1.6
  # `is_classifier(GNEGNEClassifier())` is False and its fit takes the regression branch.
  module.is_classifier = lambda estimator: isinstance(estimator, module.ClassifierMixin)
  return module


def random_model(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  return GBNNModel(f(K), f(T, D, J), f(T, J), f(T, J, K), f(T, K), np.abs(f(T)) + 0.5)


def sigmoid(z):
  return 1 / (1 + np.exp(-z))


def test_collapse_is_exact_and_dropping_stages_drops_the_last_units():
  model = random_model()
  x = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
  w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in gbnn_to_mlp(model))
  hidden = sigmoid(x @ w1 + b1)
  collapsed = hidden @ w2 + b2
  decide = fast_jit(lambda m, x, s: gbnn_decision(m, x, s))
  np.testing.assert_allclose(decide(model, x, T), collapsed, rtol=1e-5, atol=1e-5)
  # The first 2 stages are the first 2 * J hidden units (units ordered by stage).
  kept = hidden[:, : 2 * J] @ w2[: 2 * J] + (b2 - np.einsum("t,tk->k", model.steps[2:],
                                                            model.output_bias[2:]))
  np.testing.assert_allclose(decide(model, x, 2), kept, rtol=1e-5, atol=1e-5)


def test_fit_replayed_in_numpy():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(N, D)).astype(np.float32)
  labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
  eta = 0.7
  y = np.eye(K)[labels]
  # gbnn_fit's program (the default L-BFGS) with the fast-compile options of the tests.
  fit = fast_jit(gbnn_module._fit_impl, static_argnames=gbnn_module._STATIC)
  model, losses = fit(jax.random.key(0), x, jnp.asarray(y, jnp.float32), eta, 1e-4, stages=T,
                      units=J, size=30, max_iter=8, activation="logistic",
                      solver=gbnn_module._DEFAULT_SOLVER)
  x64 = np.float64(x)
  raw = np.zeros((N, K))
  for t in range(T):
    p = np.exp(raw - raw.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = y - p
    f = (sigmoid(x64 @ np.float64(model.hidden_kernel[t]) + model.hidden_bias[t])
         @ np.float64(model.output_kernel[t]) + model.output_bias[t])
    rho = eta * (-np.sum(f * (y - p)) / np.sum(f * f * p * (p - 1)))
    np.testing.assert_allclose(model.steps[t], rho, rtol=1e-4)
    raw = raw + rho * f
    loss = np.mean(np.log(np.exp(raw).sum(1)) - (y * raw).sum(1))
    np.testing.assert_allclose(losses[t], loss, rtol=1e-4)
  assert losses[-1] < 0.6 * np.log(K)
  # Earlier stages receive no update from later ones: T - 1 stages are the first T - 1 of T.
  shorter, _ = fit(jax.random.key(0), x, jnp.asarray(y, jnp.float32), eta, 1e-4, stages=T - 1,
                   units=J, size=30, max_iter=8, activation="logistic",
                   solver=gbnn_module._DEFAULT_SOLVER)
  staged = lambda m: (m.hidden_kernel, m.hidden_bias, m.output_kernel, m.output_bias, m.steps)
  for a, b in zip(staged(shorter), staged(model)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[: T - 1])


@pytest.mark.parity
def test_matches_the_official_package():
  gbnn = official()
  import warnings
  from sklearn.exceptions import ConvergenceWarning
  rng = np.random.default_rng(3)
  x = rng.normal(size=(N, D))
  labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf = gbnn.GNEGNEClassifier(total_nn=T * J, num_nn_step=J, eta=0.8, subsample=0.75,
                                max_iter=15, random_state=0)
    clf.fit(x, labels)
  # Their stages as our model: decision function, steps and collapse must agree.
  model = GBNNModel(
      np.asarray(clf.intercept, np.float32),
      np.stack([m.coefs_[0] for m in clf.models]).astype(np.float32),
      np.stack([m.intercepts_[0] for m in clf.models]).astype(np.float32),
      np.stack([m.coefs_[1] for m in clf.models]).astype(np.float32),
      np.stack([m.intercepts_[1] for m in clf.models]).astype(np.float32),
      np.asarray(clf.steps, np.float32),
  )
  ours = np.asarray(fast_jit(gbnn_decision)(model, x.astype(np.float32)))
  np.testing.assert_allclose(ours, clf._decision_function(x), rtol=1e-4, atol=1e-4)
  collapsed = clf.to_NN()
  for mine, theirs in zip(gbnn_to_mlp(model), collapsed.coefs_[:1] + collapsed.intercepts_[:1]
                          + collapsed.coefs_[1:] + collapsed.intercepts_[1:]):
    np.testing.assert_allclose(np.asarray(mine), theirs, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.nn.softmax(ours), collapsed.predict_proba(x), rtol=1e-4,
                             atol=1e-5)
  # Replaying their boosting with our residuals and Newton step gives their steps.
  y = np.eye(K)[labels]
  loss = gbnn.multi_class_loss()
  raw = np.zeros((N, K))
  for t, (m, step) in enumerate(zip(clf.models, clf.steps)):
    r = np.asarray(boosting_residuals(y, raw))
    np.testing.assert_allclose(r, loss.derive(y, raw), rtol=1e-5, atol=1e-6)
    f = m.predict(x)
    ours_step = 0.8 * float(boosting_newton_step(y, r, f))
    np.testing.assert_allclose(ours_step, step, rtol=1e-4)
    np.testing.assert_allclose(ours_step / 0.8, loss.newton_step(y, loss.derive(y, raw), f),
                               rtol=1e-4)
    raw = raw + step * f


def test_invalid_arguments_raise():
  x = np.zeros((N, D), np.float32)
  labels = np.zeros(N, int)
  for kwargs, name in (({"subsample": 0.0}, "subsample"), ({"eta": -1.0}, "eta"),
                       ({"units": 0}, "units"), ({"activation": "gelu"}, "activation")):
    with pytest.raises(ValueError, match=name):
      gbnn_fit(jax.random.key(0), x, labels, K, **kwargs)
  with pytest.raises(ValueError, match="labels"):
    gbnn_fit(jax.random.key(0), x, labels + K, K)
