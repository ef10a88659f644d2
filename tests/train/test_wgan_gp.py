"""WGAN-GP (arXiv:1704.00028): the gradient penalty against a hand-computed value and against
`torch.autograd.grad` (the official code's tf.gradients construction), and one step's structure."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import gradient_penalty, interpolate_gradient_norms, wgan_gp

RNG = np.random.default_rng(0)
B = 6
REAL = RNG.normal(size=(B, 2)).astype(np.float32)
FAKE = RNG.normal(size=(B, 2)).astype(np.float32)
CRITIC = {
    "w1": RNG.normal(size=(2, 8)).astype(np.float32),
    "b1": (0.1 * RNG.normal(size=8)).astype(np.float32),
    "w2": (RNG.normal(size=8) / 3).astype(np.float32),
}


def critic_fn(params, x):
  return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def _alphas(key, shape):
  """The documented draw: one uniform weight per example, broadcast over the other axes."""
  return np.asarray(jax.random.uniform(key, (shape[0],) + (1,) * (len(shape) - 1)), np.float64)


def test_penalty_by_hand_for_a_tanh_critic():
  key = jax.random.key(3)
  value, norms = fast_jit(lambda p, r, f: (
      gradient_penalty(critic_fn, p, r, f, key, lam=0.5),
      interpolate_gradient_norms(critic_fn, p, r, f, key)))(CRITIC, REAL, FAKE)
  eps = _alphas(key, REAL.shape)
  x_hat = eps * REAL + (1 - eps) * FAKE
  w1, b1, w2 = (CRITIC[k].astype(np.float64) for k in ("w1", "b1", "w2"))
  # d/dx [tanh(x W1 + b1) w2] = W1 diag(1 - tanh^2) w2
  slope = (1 - np.tanh(x_hat @ w1 + b1) ** 2) * w2  # (B, 8)
  by_hand = np.linalg.norm(slope @ w1.T, axis=1)
  np.testing.assert_allclose(norms, by_hand, rtol=1e-5)
  np.testing.assert_allclose(value, 0.5 * np.mean((by_hand - 1) ** 2), rtol=1e-5)


@pytest.mark.parity
def test_penalty_value_and_gradient_match_torch_autograd():
  torch = pytest.importorskip("torch")
  key = jax.random.key(7)
  lam = 10.0
  value, grads = fast_jit(jax.value_and_grad(
      lambda p, r, f: gradient_penalty(critic_fn, p, r, f, key, lam)))(CRITIC, REAL, FAKE)

  params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in CRITIC.items()}
  eps = torch.tensor(_alphas(key, REAL.shape))
  real, fake = torch.tensor(REAL, dtype=torch.float64), torch.tensor(FAKE, dtype=torch.float64)
  interpolates = (eps * real + (1 - eps) * fake).requires_grad_(True)
  scores = torch.tanh(interpolates @ params["w1"] + params["b1"]) @ params["w2"]
  (input_grads,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
  penalty = lam * ((input_grads.norm(2, dim=1) - 1) ** 2).mean()
  penalty.backward()
  np.testing.assert_allclose(value, penalty.item(), rtol=1e-5)
  for name, p in params.items():
    np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_one_iteration_runs_n_critic_critic_steps_then_a_generator_step():
  """With SGD and a linear critic D(x) = x.w + c, everything is in closed form: each critic step
  adds lr (mean real_i - mean fake_i) - lr 2 lam (|w| - 1) w/|w| to w; the generator step moves
  the shift c_g by lr * w_new (d/dc -mean D(z A + c) = -w)."""
  lam, lr, n_critic = 0.5, 0.1, 3
  generator = lambda g, z: z @ g["a"] + g["c"]
  critic = lambda c, x: x @ c["w"] + c["b"]
  training = wgan_gp(generator, critic, optax.sgd(lr), optax.sgd(lr), noise_shape=(2,),
                     n_critic=n_critic, lam=lam)
  params = {"generator": {"a": np.eye(2, dtype=np.float32), "c": np.zeros(2, np.float32)},
            "critic": {"w": np.array([0.3, -0.2], np.float32), "b": np.zeros([], np.float32)}}
  real = RNG.normal(size=(n_critic, 16, 2)).astype(np.float32) + 2.0
  state = training.init(params, jax.random.key(0))
  key = jax.random.key(5)
  new, metrics = fast_jit(training.step)(state, (real,), key)

  # Replay the critic steps in NumPy with the same noise (the documented key usage).
  critic_key, _ = jax.random.split(key)
  keys = jax.random.split(critic_key, (n_critic, 2))
  w = params["critic"]["w"].astype(np.float64)
  losses = []
  for i in range(n_critic):
    z = np.asarray(jax.random.normal(keys[i, 0], (16, 2)), np.float64)  # fake = z (A = I, c = 0)
    gap = real[i].mean(0) - z.mean(0)
    norm = np.linalg.norm(w)  # a linear critic's input gradient is w at every interpolate
    losses.append(-gap @ w + lam * (norm - 1) ** 2)
    w = w - lr * (-gap + 2 * lam * (norm - 1) * w / norm)
  np.testing.assert_allclose(new.params["critic"]["w"], w, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], losses[0], rtol=1e-5)
  np.testing.assert_allclose(metrics["critic_loss"], losses[-1], rtol=1e-5)
  np.testing.assert_allclose(new.params["generator"]["c"], lr * w, rtol=1e-5)
  # b cancels in E D(fake) - E D(real) and the penalty: it never moves.
  np.testing.assert_allclose(new.params["critic"]["b"], 0.0, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_critic": 0}, "n_critic"),
    ({"lam": -1.0}, "lam"),
    ({"noise_shape": (0,)}, "noise_shape"),
    ({"noise_shape": None}, "noise_shape"),
])
def test_bad_arguments_raise(kwargs, match):
  kwargs = {"noise_shape": (2,), **kwargs}
  with pytest.raises(ValueError, match=match):
    wgan_gp(lambda g, z: z, critic_fn, optax.sgd(0.1), optax.sgd(0.1), **kwargs)
  with pytest.raises(ValueError, match="lam"):
    gradient_penalty(critic_fn, CRITIC, REAL, FAKE, jax.random.key(0), lam=float("nan"))
