"""GradNorm (arXiv:1711.02257) against a float64 NumPy transcription of the paper's update, and
against `gradnorm-pytorch` (which inverts the exponent: parity only at alpha = 0)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import gradnorm

RNG = np.random.default_rng(0)
N, D, H = 8, 3, 4
X = RNG.normal(size=(N, D)).astype(np.float32)
Y = RNG.normal(size=(2, N)).astype(np.float32)
SCALES = np.array([1.0, 5.0], np.float32)  # task 2's loss is 5x larger
PARAMS = {
    "shared": (0.5 * RNG.normal(size=(D, H))).astype(np.float32),
    "heads": (0.5 * RNG.normal(size=(2, H))).astype(np.float32),
}


def task_losses(params, x, y):
  """A linear trunk x W and one linear head per task; task i's loss is s_i mean (h v_i - y_i)^2."""
  h = x @ params["shared"]
  predictions = jnp.einsum("nh,th->tn", h, params["heads"])
  return SCALES * jnp.mean((predictions - y) ** 2, axis=1)


def numpy_gradnorm_step(params, weights, initial_losses, alpha, lr_net, lr_w, exponent_sign=1.0):
  """One step of the paper's algorithm in float64, the gradients written out by hand."""
  x, y = X.astype(np.float64), Y.astype(np.float64)
  w_shared = params["shared"].astype(np.float64)
  heads = params["heads"].astype(np.float64)
  h = x @ w_shared
  residual = h @ heads.T - y.T  # (N, T)
  losses = SCALES * np.mean(residual ** 2, axis=0)
  # dL_i/dW = x^T (2 s_i / N residual_i) v_i^T ; dL_i/dv_i = h^T (2 s_i / N residual_i)
  coef = 2 * SCALES / N * residual  # (N, T)
  grad_shared = np.stack([x.T @ np.outer(coef[:, i], heads[i]) for i in range(2)])
  grad_heads = np.stack([h.T @ coef[:, i] for i in range(2)])
  g = np.sqrt((grad_shared ** 2).sum(axis=(1, 2)))
  big_g = weights * g
  ratios = losses / initial_losses
  r = ratios / ratios.mean()
  target = big_g.mean() * r ** (exponent_sign * alpha)
  dw = np.sign(big_g - target) * g  # the closed-form derivative of sum |G_i - target_i|
  new_w = weights - lr_w * dw
  new_w = 2 * new_w / new_w.sum()
  new_shared = w_shared - lr_net * np.tensordot(weights, grad_shared, axes=1)
  new_heads = heads - lr_net * weights[:, None] * grad_heads
  return losses, new_w, new_shared, new_heads


def _run_one_step(alpha, weights, initial, lr_w):
  training = gradnorm(task_losses, optax.sgd(0.1), optax.sgd(lr_w), num_tasks=2,
                      shared_params=lambda p: p["shared"], alpha=alpha)
  state = training.init(PARAMS, jax.random.key(0))
  state = state._replace(method_state=state.method_state._replace(
      weights=jnp.asarray(weights, jnp.float32), initial_losses=jnp.asarray(initial, jnp.float32),
      has_initial_losses=jnp.asarray(True)))
  return fast_jit(training.step)(state, (X, Y), jax.random.key(1))


def test_one_step_matches_the_paper_update_with_the_exponent_plus_alpha():
  weights = np.array([1.3, 0.7])
  losses0 = numpy_gradnorm_step(PARAMS, weights, np.ones(2), 0.0, 0.1, 0.05)[0]
  initial = losses0 * np.array([0.5, 2.0])  # task 1 trains slowly (ratio 2), task 2 fast (0.5)
  new, metrics = _run_one_step(1.5, weights, initial, 0.05)
  losses, new_w, new_shared, new_heads = numpy_gradnorm_step(PARAMS, weights, initial, 1.5, 0.1,
                                                             0.05)
  np.testing.assert_allclose(metrics["task_losses"], losses, rtol=1e-5)
  np.testing.assert_allclose(new.method_state.weights, new_w, rtol=1e-5)
  np.testing.assert_allclose(new.params["shared"], new_shared, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.params["heads"], new_heads, rtol=1e-5, atol=1e-6)
  # The exponent's sign matters here: -alpha gives different weights.
  inverted = numpy_gradnorm_step(PARAMS, weights, initial, 1.5, 0.1, 0.05, exponent_sign=-1.0)[1]
  assert not np.allclose(inverted, new_w, rtol=1e-3)


def test_initial_losses_are_the_first_steps_losses():
  training = gradnorm(task_losses, optax.sgd(0.1), optax.sgd(0.01), num_tasks=2,
                      shared_params=lambda p: p["shared"])
  state = training.init(PARAMS, jax.random.key(0))
  new, metrics = fast_jit(training.step)(state, (X, Y), jax.random.key(1))
  np.testing.assert_array_equal(new.method_state.initial_losses, metrics["task_losses"])
  assert bool(new.method_state.has_initial_losses)


@pytest.mark.parity
@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_gradnorm_pytorch_agrees_only_at_alpha_zero(alpha):
  torch = pytest.importorskip("torch")
  gradnorm_pytorch = pytest.importorskip("gradnorm_pytorch")
  weights = np.array([1.3, 0.7])
  losses0 = numpy_gradnorm_step(PARAMS, weights, np.ones(2), 0.0, 0.1, 0.05)[0]
  initial = losses0 * np.array([0.5, 2.0])
  lr = 0.05
  shared = torch.nn.Parameter(torch.tensor(PARAMS["shared"], dtype=torch.float64))
  heads = torch.tensor(PARAMS["heads"], dtype=torch.float64, requires_grad=True)
  weighter = gradnorm_pytorch.GradNormLossWeighter(
      loss_weights=torch.tensor(weights, dtype=torch.float64), learning_rate=lr,
      restoring_force_alpha=alpha, grad_norm_parameters=shared)
  weighter.initial_losses.copy_(torch.tensor(initial))
  weighter.initted.fill_(True)
  h = torch.tensor(X, dtype=torch.float64) @ shared
  residual = h @ heads.T - torch.tensor(Y.T, dtype=torch.float64)
  losses = torch.tensor(SCALES, dtype=torch.float64) * (residual ** 2).mean(0)
  weighter.backward(losses)
  theirs = weighter.loss_weights.detach().numpy()

  # Theirs: mean |.| (a 1/T factor) and r^(-alpha); ours: sum and r^(+alpha).
  new, _ = _run_one_step(alpha, weights, initial, lr / 2)
  ours = np.asarray(new.method_state.weights)
  paper = numpy_gradnorm_step(PARAMS, weights, initial, alpha, 0.1, lr / 2)[1]
  inverted = numpy_gradnorm_step(PARAMS, weights, initial, alpha, 0.1, lr / 2,
                                 exponent_sign=-1.0)[1]
  np.testing.assert_allclose(ours, paper, rtol=1e-5)
  np.testing.assert_allclose(theirs, inverted, rtol=1e-6)
  if alpha == 0.0:
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  else:
    assert not np.allclose(ours, theirs, rtol=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_tasks": 1}, "num_tasks"),
    ({"num_tasks": 2.0}, "num_tasks"),
    ({"num_tasks": 2, "alpha": -0.5}, "alpha"),
    ({"num_tasks": 2, "alpha": float("inf")}, "alpha"),
    ({"num_tasks": 2, "shared_params": "shared"}, "shared_params"),
])
def test_bad_arguments_raise(kwargs, match):
  kwargs = {"shared_params": lambda p: p["shared"], **kwargs}
  with pytest.raises(ValueError, match=match):
    gradnorm(task_losses, optax.sgd(0.1), optax.sgd(0.1), **kwargs)
