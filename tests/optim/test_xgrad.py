"""XGrad against a NumPy transcription of the official `SGD.py`, `Adam.py` and `AdamW.py`
(guanleics/XGrad): their `step` and `load_predicted_weights`, and the training loop the paper
describes (forward and backward at the predicted weights, the step from the current ones)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import (inject_hyperparams, predicted_params, xgrad_adam, xgrad_adamw,
                            xgrad_sgd, xgrad_step)

STEPS = 5
LR, S = 0.05, 1.5  # s != 1 so that a missing factor s shows


class OfficialSGD:
  """`SGD.py`: coupled weight decay, b <- momentum * b + (1 - dampening) * d_p, p -= lr * b."""

  def __init__(self, lr, momentum, dampening, wd):
    self.lr, self.momentum, self.dampening, self.wd = lr, momentum, dampening, wd
    self.buf = None

  def step(self, p, g):
    g = g + self.wd * p
    self.buf = np.zeros_like(p) if self.buf is None else self.buf
    self.buf = self.momentum * self.buf + (1 - self.dampening) * g
    return p - self.lr * self.buf

  def load_predicted_weights(self, p, s):
    return p if self.buf is None else p - self.lr * s * self.buf


class OfficialAdam:
  """`Adam.py` (decay=False: no weight decay at all) and `AdamW.py` (p *= 1 - lr * wd first)."""

  def __init__(self, lr, b1, b2, eps, wd, decay):
    self.lr, self.b1, self.b2, self.eps, self.wd, self.decay = lr, b1, b2, eps, wd, decay
    self.t, self.m, self.v = 0, None, None

  def step(self, p, g):
    if self.decay:
      p = p * (1 - self.lr * self.wd)
    if self.m is None:
      self.m, self.v = np.zeros_like(p), np.zeros_like(p)
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * g
    self.v = self.b2 * self.v + (1 - self.b2) * g * g
    denom = np.sqrt(self.v) / np.sqrt(1 - self.b2**self.t) + self.eps
    return p - self.lr / (1 - self.b1**self.t) * self.m / denom

  def load_predicted_weights(self, p, s):
    if self.m is None:
      return p
    denom = np.sqrt(self.v) / np.sqrt(1 - self.b2**self.t) + self.eps
    return p - s * self.lr / (1 - self.b1**self.t) * self.m / denom


CASES = {
    "sgd": (lambda: OfficialSGD(LR, 0.9, 0.1, 0.01),
            lambda: xgrad_sgd(LR, 0.9, dampening=0.1, weight_decay=0.01, prediction_steps=S)),
    "adam": (lambda: OfficialAdam(LR, 0.9, 0.99, 1e-8, 0.0, decay=False),
             lambda: xgrad_adam(LR, 0.9, 0.99, prediction_steps=S)),
}


def _problem():
  rng = np.random.default_rng(0)
  return rng.normal(size=(3, 4)), 0.5 + rng.uniform(size=(3, 4)), rng.normal(size=(3, 4))


def _loss(theta, curvature, target):
  return 0.5 * jnp.sum(curvature * (theta - target) ** 2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_loop_matches_the_official_prediction(name):
  """SGDM and Adam: predict, differentiate at the prediction, restore, step (float64 NumPy)."""
  make_official, make_ours = CASES[name]
  theta0, curvature, target = _problem()
  official, theta, expected = make_official(), theta0.copy(), []
  for _ in range(STEPS):
    ahead = official.load_predicted_weights(theta, S)
    theta = official.step(theta, curvature * (ahead - target))
    expected.append(theta)

  training = xgrad_step(lambda p: _loss(p, curvature, target), make_ours())

  def run(state):
    step = lambda s, _: (training.step(s, (), jax.random.key(0))[0],) * 2
    return jax.lax.scan(step, state, None, length=STEPS)[1].params

  got = jax.jit(run)(training.init(jnp.asarray(theta0, jnp.float32), jax.random.key(0)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-5, atol=2e-6)


def test_adamw_prediction_differs_from_the_official_by_the_decay_term():
  """Same gradients, same states: the official AdamW prediction omits -s * lr * wd * theta_{t-1},
  ours is theta_t + s * u_t with u_t the full step."""
  rng = np.random.default_rng(1)
  theta, wd = rng.normal(size=(3, 4)), 0.1
  grads = [rng.normal(size=(3, 4)) for _ in range(STEPS)]
  official = OfficialAdam(LR, 0.9, 0.999, 1e-8, wd, decay=True)
  opt = xgrad_adamw(LR, weight_decay=wd, prediction_steps=S)
  params = jnp.asarray(theta, jnp.float32)
  state = opt.init(params)
  update = jax.jit(opt.update)
  for g in grads:
    previous = theta
    theta = official.step(theta, g)
    updates, state = update(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
  ours = np.asarray(predicted_params(params, state), np.float64)
  np.testing.assert_allclose(ours, theta + S * (theta - previous), rtol=1e-5, atol=1e-6)
  official_prediction = official.load_predicted_weights(theta, S)
  np.testing.assert_allclose(official_prediction - ours, S * LR * wd * previous, rtol=1e-3,
                             atol=1e-6)
  assert np.abs(S * LR * wd * previous).max() > 1e-3  # the difference is not below tolerance


def test_predicted_params_finds_the_state_inside_wrappers():
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.25])}
  for opt in (inject_hyperparams(xgrad_sgd)(0.1, momentum=0.0, prediction_steps=2.0),
              optax.MultiSteps(xgrad_sgd(0.1, momentum=0.0, prediction_steps=2.0), 1)):
    updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(predicted_params(new, state)["w"], [0.85, -2.075], rtol=1e-6)
  with pytest.raises(ValueError, match="XGradState"):
    predicted_params(params, optax.sgd(0.1).init(params))
