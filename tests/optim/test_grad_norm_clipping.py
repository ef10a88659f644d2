"""Norm clipping and the vanishing-gradient regularizer Ω of Pascanu et al. (2013).

References: a NumPy transcription of Algorithm 1, torch's clip_grad_norm_, and for Ω a float64
NumPy RNN with finite-difference error signals ∂E/∂x_k and a finite-difference ∂⁺Ω/∂W.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim, registry

# ---------------------------------------------------------------------------------------------
# Clipping


def _numpy_clip(grads, threshold):
  """Algorithm 1: g <- threshold * g / ||g|| if ||g|| >= threshold (global norm)."""
  norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values()))
  scale = threshold / norm if norm >= threshold else 1.0
  return {k: np.asarray(g, np.float64) * scale for k, g in grads.items()}


@pytest.mark.parametrize("factory", [optim.clip_by_global_norm, optax.clip_by_global_norm],
                         ids=["jaxlearn", "optax"])
@pytest.mark.parametrize("threshold", [0.5, 3.0, 100.0])
def test_clipping_matches_algorithm_1(factory, threshold):
  rng = np.random.default_rng(0)
  grads = {"w": rng.normal(size=(4, 3)).astype(np.float32),
           "b": rng.normal(size=3).astype(np.float32)}
  updates, _ = factory(threshold).update(grads, optax.EmptyState())
  want = _numpy_clip(grads, threshold)
  for k in grads:
    np.testing.assert_allclose(updates[k], want[k], rtol=1e-6)


@pytest.mark.parity
def test_clipping_matches_torch_clip_grad_norm():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  grads = {"w": rng.normal(size=(4, 3)) * 5, "b": rng.normal(size=3) * 5}
  tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
  for t, g in zip(tensors, grads.values()):
    t.grad = torch.tensor(g)
  torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.0)
  ours, _ = optim.clip_by_global_norm(1.0).update(
      {k: v.astype(np.float32) for k, v in grads.items()}, optax.EmptyState()
  )
  # torch divides by ||g|| + 1e-6, a relative difference of ~1e-6 / ||g||.
  for t, k in zip(tensors, grads):
    np.testing.assert_allclose(ours[k], t.grad.numpy(), rtol=1e-5)


def test_clipping_under_inject_hyperparams_keeps_bfloat16_where_optax_fails():
  grads = {"w": jnp.full(4, 10.0, jnp.bfloat16), "s": jnp.ones(2, jnp.float32)}
  ours = optim.inject_hyperparams(optim.clip_by_global_norm)(max_norm=1.0)
  updates, _ = jax.jit(ours.update)(grads, ours.init(grads))
  assert updates["w"].dtype == jnp.bfloat16 and updates["s"].dtype == jnp.float32
  norm = np.sqrt(sum(np.sum(np.asarray(u, np.float64) ** 2) for u in updates.values()))
  assert abs(norm - 1.0) < 1e-2
  theirs = optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=1.0)
  with pytest.raises(TypeError, match="select"):
    theirs.update(grads, theirs.init(grads))


# ---------------------------------------------------------------------------------------------
# The regularizer Ω, on an RNN in the paper's form x_k = W tanh(x_{k-1}) + U u_k + b.

T, B, H, I = 6, 3, 4, 2


def _rnn_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {
      "W": rng.normal(size=(H, H)) * 0.9, "U": rng.normal(size=(I, H)),
      "b": rng.normal(size=H) * 0.1,
      "V": rng.normal(size=(H, 1)), "c": np.zeros(1),
  }
  x0 = rng.normal(size=(B, H)) * 0.5
  inputs = rng.normal(size=(T, B, I))
  targets = rng.normal(size=(B, 1))
  return params, x0, inputs, targets


def _step(params, x, u):
  # Row-vector convention: x_k = tanh(x_{k-1}) @ W + u_k @ U + b, so J = diag(tanh') W.
  return jnp.tanh(x) @ params["W"] + u @ params["U"] + params["b"]


def _make_loss(targets):
  def loss_fn(params, states):
    prediction = jnp.tanh(states[-1]) @ params["V"] + params["c"]
    return 0.5 * jnp.mean(jnp.sum((prediction - targets) ** 2, axis=-1))
  return loss_fn


def _numpy_forward(params, x0, inputs, targets, start=0, x_start=None):
  """E as a function of the state x_start at time `start` (x_0 if start == 0)."""
  x = x0 if x_start is None else x_start
  for k in range(start, T):
    x = np.tanh(x) @ params["W"] + inputs[k] @ params["U"] + params["b"]
  prediction = np.tanh(x) @ params["V"] + params["c"]
  return 0.5 * np.mean(np.sum((prediction - targets) ** 2, axis=-1))


def _numpy_states(params, x0, inputs):
  xs, x = [x0], x0
  for k in range(T):
    x = np.tanh(x) @ params["W"] + inputs[k] @ params["U"] + params["b"]
    xs.append(x)
  return xs  # x_0 .. x_T


def _numpy_error_signals(params, x0, inputs, targets, h=1e-6):
  """∂E/∂x_k for k = 1..T by central finite differences in float64."""
  xs = _numpy_states(params, x0, inputs)
  deltas = []
  for k in range(1, T + 1):
    d = np.zeros((B, H))
    for b in range(B):
      for j in range(H):
        plus, minus = xs[k].copy(), xs[k].copy()
        plus[b, j] += h
        minus[b, j] -= h
        d[b, j] = (_numpy_forward(params, x0, inputs, targets, k, plus)
                   - _numpy_forward(params, x0, inputs, targets, k, minus)) / (2 * h)
    deltas.append(d)
  return xs, deltas


def _numpy_omega(W, xs, deltas, squared=False):
  """Eq. (9): sum_k mean_batch (||δ_{k+1} J_{k+1}|| / ||δ_{k+1}|| - 1)^2, J = diag(tanh'(x_k)) W;
  squared=True: the ratio of squared norms, the form Eq. (10) differentiates."""
  total = 0.0
  for k in range(T):
    carried = (deltas[k] @ W.T) * (1.0 - np.tanh(xs[k]) ** 2)  # δ J for the row convention
    num, den = np.sum(carried**2, -1), np.sum(deltas[k] ** 2, -1)
    ratio = num / den if squared else np.sqrt(num / den)
    total += np.mean((ratio - 1.0) ** 2)
  return total


def test_state_gradients_match_finite_differences():
  params, x0, inputs, targets = _rnn_problem()
  xs, deltas = _numpy_error_signals(params, x0, inputs, targets)
  jparams = jax.tree.map(jnp.asarray, params)
  loss, states, state_grads = optim.rnn_state_gradients(
      _step, _make_loss(targets), jparams, jnp.asarray(x0), jnp.asarray(inputs)
  )
  np.testing.assert_allclose(loss, _numpy_forward(params, x0, inputs, targets), rtol=1e-5)
  np.testing.assert_allclose(states, np.stack(xs[1:]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state_grads, np.stack(deltas), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("squared", [False, True], ids=["eq9_norms", "eq10_squared_norms"])
def test_omega_value_and_its_immediate_gradient_match_numpy(squared):
  params, x0, inputs, targets = _rnn_problem(1)
  xs, deltas = _numpy_error_signals(params, x0, inputs, targets)
  omega_of = lambda p: optim.vanishing_gradient_regularizer(
      _step, _make_loss(targets), p, jnp.asarray(x0), jnp.asarray(inputs), squared=squared
  )
  jparams = jax.tree.map(jnp.asarray, params)
  value, grads = jax.value_and_grad(omega_of)(jparams)
  np.testing.assert_allclose(value, _numpy_omega(params["W"], xs, deltas, squared), rtol=1e-3)

  # ∂⁺Ω/∂W: x_k and ∂E/∂x_{k+1} held fixed (the paper's Eq. 10), by finite differences.
  h, fd = 1e-6, np.zeros((H, H))
  for i in range(H):
    for j in range(H):
      plus, minus = params["W"].copy(), params["W"].copy()
      plus[i, j] += h
      minus[i, j] -= h
      fd[i, j] = (_numpy_omega(plus, xs, deltas, squared)
                  - _numpy_omega(minus, xs, deltas, squared)) / (2 * h)
  np.testing.assert_allclose(grads["W"], fd, rtol=2e-3, atol=1e-5)
  for name in ("U", "b", "V", "c"):  # no path through the (constant) states or error signals
    np.testing.assert_array_equal(grads[name], 0.0)


def test_the_docs_say_which_form_is_which_equation():
  """Eq. (9) defines Ω with a ratio of norms; Eq. (10), the ∂⁺ gradient the paper prescribes, is
  written with a ratio of squared norms (as the official code computes it): squared=True is the
  paper's Eq. (10) form, not a deviation from the paper."""
  from jaxlearn.optim import grad_norm_clipping as module

  notes = registry.get("grad_norm_clipping").notes
  for text in (notes, module.__doc__, optim.vanishing_gradient_regularizer.__doc__):
    assert "Eq. (10)" in text and "squared" in text
  assert "could not be checked" not in module.__doc__


def test_official_code_averages_squared_ratios_over_steps():
  """The official RNN.py: mean over batch of (|δJ|²/|δ|² - 1)², summed over k, divided by the
  number of steps with |δ|² >= bound; Eq. (9) sums norms ratios. Same terms, rescaled by T."""
  params, x0, inputs, targets = _rnn_problem(2)
  xs, deltas = _numpy_error_signals(params, x0, inputs, targets)
  official = _numpy_omega(params["W"], xs, deltas, squared=True) / T
  ours = optim.vanishing_gradient_regularizer(
      _step, _make_loss(targets), jax.tree.map(jnp.asarray, params), jnp.asarray(x0),
      jnp.asarray(inputs), squared=True,
  )
  np.testing.assert_allclose(ours / T, official, rtol=1e-3)
  paper = _numpy_omega(params["W"], xs, deltas, squared=False)
  assert not np.isclose(official * T, paper, rtol=1e-2)  # the two definitions really differ


def test_steps_without_error_signal_contribute_zero_and_no_nan():
  params, x0, inputs, _ = _rnn_problem(3)
  jparams = jax.tree.map(jnp.asarray, params)
  constant_loss = lambda p, states: jnp.sum(p["c"]) + 0.0 * jnp.sum(states[-1][:, :0])
  value, grads = jax.value_and_grad(
      lambda p: optim.vanishing_gradient_regularizer(
          _step, constant_loss, p, jnp.asarray(x0), jnp.asarray(inputs)
      )
  )(jparams)
  assert value == 0.0
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match="min_grad_norm_sq"):
    optim.vanishing_gradient_regularizer(
        _step, constant_loss, jparams, jnp.asarray(x0), jnp.asarray(inputs), min_grad_norm_sq=-1.0
    )
