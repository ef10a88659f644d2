"""StableMax (arXiv:2501.04697): values, gradients, and the Softmax Collapse it avoids.

References: hand-computed values; a float64 NumPy transcription of the official `utils.py`
(s with its eps = 1e-30, log of the ratio, gather); the analytic gradient
(p_j - 1[j = y]) / (1 + |x_j|); and optax's float32 softmax cross-entropy for the collapse.
The shared battery (`test_loss_battery.py`) covers finite differences, extreme logits, shape and
label-range errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.losses import (
    log_stablemax,
    softmax_collapse_fraction,
    stablemax,
    stablemax_cross_entropy,
    stablemax_cross_entropy_with_probs,
    zero_gradient_fraction,
)

softmax_ce = optax.losses.softmax_cross_entropy_with_integer_labels


def _official_s(x, eps=1e-30):
  """s from the official utils.py, in float64."""
  x = np.asarray(x, np.float64)
  with np.errstate(divide="ignore"):
    return np.where(x < 0, 1 / (1 - x + eps), x + 1)


def _official_stablemax(x, axis=-1):
  s = _official_s(x)
  return s / s.sum(axis=axis, keepdims=True)


def _grad(loss, logits, labels):
  return jax.grad(lambda z: jnp.sum(loss(z, labels)))(logits)


def test_hand_computed_values():
  # s(0, 1, -1) = (1, 2, 1/2): sum 7/2, probabilities (2/7, 4/7, 1/7).
  logits = jnp.array([[0.0, 1.0, -1.0]])
  np.testing.assert_allclose(stablemax(logits), [[2 / 7, 4 / 7, 1 / 7]], rtol=1e-6)
  np.testing.assert_allclose(log_stablemax(logits), np.log([[2 / 7, 4 / 7, 1 / 7]]), rtol=1e-6)
  np.testing.assert_allclose(stablemax_cross_entropy(logits, jnp.array([1])), [np.log(7 / 4)],
                             rtol=1e-6)


@pytest.mark.parametrize("scale", [0.1, 3.0, 300.0])
def test_matches_official_float64_formula(scale):
  logits = np.random.default_rng(0).normal(size=(6, 9)).astype(np.float32) * scale
  labels = np.arange(6) % 9
  expected = _official_stablemax(logits)
  np.testing.assert_allclose(stablemax(logits), expected, rtol=2e-6, atol=1e-12)
  np.testing.assert_allclose(log_stablemax(logits), np.log(expected), rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(
      stablemax_cross_entropy(logits, labels), -np.log(expected[np.arange(6), labels]),
      rtol=2e-6, atol=2e-6,
  )


def test_probabilities_sum_to_one_along_any_axis():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5, 3)) * 50, jnp.float32)
  for axis in (0, 1, -1):
    probs = stablemax(logits, axis=axis)
    assert bool(jnp.all(probs >= 0))
    np.testing.assert_allclose(jnp.sum(probs, axis=axis), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.exp(log_stablemax(logits, axis=axis)), probs, rtol=1e-5)
    np.testing.assert_allclose(probs, _official_stablemax(logits, axis=axis), rtol=2e-6)


def test_gradient_matches_analytic_formula():
  """dL/dx_j = (p_j - 1[j = y]) / (1 + |x_j|), since d log s(x) / dx = 1 / (1 + |x|)."""
  logits = np.random.default_rng(2).normal(size=(5, 7)) * 4
  labels = np.array([0, 3, 6, 2, 2])
  with jax.enable_x64(True):
    grads = _grad(stablemax_cross_entropy, jnp.asarray(logits, jnp.float64), jnp.asarray(labels))
  probs = _official_stablemax(logits)
  expected = (probs - np.eye(7)[labels]) / (1 + np.abs(logits))
  np.testing.assert_allclose(grads, expected, rtol=1e-12, atol=1e-15)


def test_log_s_is_continuously_differentiable_at_zero():
  """s(0) = s'(0) = 1 from both sides: the gradient barely moves across x = 0."""
  grad_at = lambda v: _grad(stablemax_cross_entropy, jnp.array([[v, 0.5, -0.5]]), jnp.array([1]))
  left, middle, right = grad_at(-1e-6), grad_at(0.0), grad_at(1e-6)
  np.testing.assert_allclose(left, middle, atol=1e-5)
  np.testing.assert_allclose(right, middle, atol=1e-5)


def test_float32_softmax_collapses_where_stablemax_does_not():
  """The paper's Softmax Collapse, reproduced in float32 (the dtype the paper warns about)."""
  labels = jnp.array([0])
  # Lead 30: e^-30 is absorbed by 1, so the softmax loss and the correct logit's gradient are
  # exactly zero (only tiny gradients on the wrong logits remain).
  lead30 = jnp.array([[30.0, 0.0, 0.0, 0.0]], jnp.float32)
  assert float(softmax_ce(lead30, labels)[0]) == 0.0
  assert float(_grad(softmax_ce, lead30, labels)[0, 0]) == 0.0
  assert float(softmax_collapse_fraction(lead30)) == 1.0
  # Lead 100: every other exponential underflows and the whole gradient is exactly zero.
  lead100 = jnp.array([[100.0, 0.0, 0.0, 0.0]], jnp.float32)
  assert bool(jnp.all(_grad(softmax_ce, lead100, labels) == 0))
  assert float(zero_gradient_fraction(softmax_ce, lead100, labels)) == 1.0
  # StableMax at the same logits: positive loss, every gradient entry non-zero.
  for logits in (lead30, lead100):
    assert float(stablemax_cross_entropy(logits, labels)[0]) > 0
    assert bool(jnp.all(_grad(stablemax_cross_entropy, logits, labels) != 0))
    assert float(zero_gradient_fraction(stablemax_cross_entropy, logits, labels)) == 0.0
  # The StableMax loss at lead 100 is log(1 + 3/101) (s = 101, 1, 1, 1), not a rounding artefact.
  np.testing.assert_allclose(stablemax_cross_entropy(lead100, labels), [np.log1p(3 / 101)],
                             rtol=1e-6)


def test_no_absorption_where_the_official_float32_formula_collapses():
  """Deviation from the official code's arithmetic (same function): at a lead of 1e8 the official
  `log(s / sum s)` evaluated in float32 is exactly 0, with the correct logit's gradient exactly 0;
  ours sums the small terms apart (`log1p`) and matches the float64 value log(1 + 3 / (1e8 + 1))."""
  logits32 = np.array([[1e8, 0.0, 0.0, 0.0]], np.float32)
  s32 = np.where(logits32 < 0, 1 / (1 - logits32), logits32 + 1).astype(np.float32)
  assert np.log(s32 / s32.sum(-1, keepdims=True))[0, 0] == 0.0  # official formula, float32
  labels = jnp.array([0])
  np.testing.assert_allclose(stablemax_cross_entropy(logits32, labels), [np.log1p(3 / (1e8 + 1))],
                             rtol=1e-6)
  grad = _grad(stablemax_cross_entropy, jnp.asarray(logits32), labels)
  probs = _official_stablemax(logits32)
  expected = (probs - np.eye(4)[0]) / (1 + np.abs(logits32.astype(np.float64)))
  np.testing.assert_allclose(grad, expected, rtol=1e-5)
  assert float(grad[0, 0]) < 0


def test_diagnostics_count_examples():
  logits = jnp.array([[100.0, 0, 0], [1.0, 0, 0], [30.0, 0, 0], [0.0, 0, 2.0]], jnp.float32)
  labels = jnp.array([0, 0, 0, 2])
  # Only the lead-100 row has an all-zero softmax gradient; rows with lead 100 and 30 collapse.
  assert float(zero_gradient_fraction(softmax_ce, logits, labels)) == 0.25
  assert float(softmax_collapse_fraction(logits)) == 0.5
  assert float(zero_gradient_fraction(stablemax_cross_entropy, logits, labels)) == 0.0
  with pytest.raises(ValueError, match="per-example losses"):
    zero_gradient_fraction(lambda z, y: jnp.mean(softmax_ce(z, y)), logits, labels)


def test_probability_targets():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, 6)).astype(np.float32) * 3
  labels = np.array([5, 0, 2, 2])
  one_hot = np.eye(6, dtype=np.float32)[labels]
  np.testing.assert_allclose(
      stablemax_cross_entropy_with_probs(logits, one_hot), stablemax_cross_entropy(logits, labels),
      rtol=1e-6,
  )
  smooth = 0.9 * one_hot + 0.1 / 6
  expected = -(smooth * np.log(_official_stablemax(logits))).sum(-1)
  np.testing.assert_allclose(stablemax_cross_entropy_with_probs(logits, smooth), expected,
                             rtol=2e-6)


def test_low_precision_inputs_compute_in_float32():
  logits = jnp.asarray(np.random.default_rng(4).normal(size=(3, 5)) * 20, jnp.bfloat16)
  labels = jnp.array([0, 1, 4])
  loss = stablemax_cross_entropy(logits, labels)
  assert loss.dtype == jnp.bfloat16 and stablemax(logits).dtype == jnp.bfloat16
  expected = stablemax_cross_entropy(logits.astype(jnp.float32), labels).astype(jnp.bfloat16)
  np.testing.assert_array_equal(loss, expected)


def test_jit_and_vmap_match_eager():
  logits = jnp.asarray(np.random.default_rng(5).normal(size=(3, 4, 6)), jnp.float32)
  labels = jnp.array([[0, 1, 2, 3], [5, 4, 3, 2], [1, 1, 1, 1]])
  eager = stablemax_cross_entropy(logits, labels)
  np.testing.assert_allclose(jax.jit(stablemax_cross_entropy)(logits, labels), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(stablemax_cross_entropy)(logits, labels), eager, rtol=1e-6)


def test_nan_logits_propagate():
  loss = stablemax_cross_entropy(jnp.array([[jnp.nan, 0.0], [1.0, 0.0]]), jnp.array([0, 0]))
  assert bool(jnp.isnan(loss[0])) and bool(jnp.isfinite(loss[1]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: stablemax(jnp.ones((2, 3), jnp.int32)), "logits must be a floating-point"),
        (lambda: stablemax(jnp.ones((2, 3)), axis=2), r"axis must be an integer in \[-2, 2\)"),
        (lambda: log_stablemax(jnp.ones((2, 3)), axis=-3), "axis"),
        (lambda: stablemax_cross_entropy(jnp.ones((2, 0)), jnp.array([0, 0])), "class axis"),
    ],
)
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_experiment_mlp_gathers_exactly_what_the_one_hot_matmul_computes():
  from jaxlearn.experiments.stablemax_softmax_collapse import _apply_mlp, _init_mlp
  from jaxlearn.data import modular_arithmetic, one_hot_pairs

  p = 7
  tokens = modular_arithmetic(p, train_fraction=0.5).x_train
  weights = _init_mlp(jax.random.PRNGKey(0), (2 * p, 8, 8, p))
  hidden = jax.nn.relu(jnp.asarray(one_hot_pairs(tokens, p)) @ weights[0])
  dense = jax.nn.relu(hidden @ weights[1]) @ weights[2]
  np.testing.assert_array_equal(_apply_mlp(weights, jnp.asarray(tokens)), dense)
