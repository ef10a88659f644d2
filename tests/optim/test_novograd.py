"""NovoGrad against a NumPy transcription of the official code, optax and pytorch-optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim
from tests.optim._helpers import run_optimizer

STEPS = 6


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {
      "w": rng.normal(size=(5, 3)).astype(np.float32),
      "b": rng.normal(size=3).astype(np.float32),
  }
  grads = [
      {k: (rng.normal(size=v.shape) * 10.0 ** rng.uniform(-2, 1)).astype(np.float32)
       for k, v in params.items()}
      for _ in range(STEPS)
  ]
  return params, grads


def _numpy_novograd(params, grads, *, lr, b1, b2, eps, eps_root=0.0, wd=0.0, decayed=None,
                    grad_averaging=False):
  """NovoGrad (arXiv:1905.11286) as the official code runs it (NeMo `Novograd`), in float64.

  v_1 = |g_1|^2, v_t = b2 v + (1 - b2) |g_t|^2 per layer; u = g / (sqrt(v + eps_root) + eps)
  + wd * w; m = b1 m + a u with m_0 = 0 (a = 1 - b1 with grad averaging); w -= lr * m.
  """
  decayed = decayed or {k: True for k in params}
  w = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v = {}
  for g in grads:
    for k in w:
      g64 = g[k].astype(np.float64)
      norm_sq = np.sum(g64**2)
      v[k] = norm_sq if k not in v else b2 * v[k] + (1 - b2) * norm_sq
      u = g64 / (np.sqrt(v[k] + eps_root) + eps) + (wd * w[k] if decayed[k] else 0.0)
      m[k] = b1 * m[k] + ((1 - b1) if grad_averaging else 1.0) * u
      w[k] = w[k] - lr * m[k]
  return w, v


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight_decay": 0.01},
        {"grad_averaging": True, "weight_decay": 0.01},
        {"b1": 0.9, "b2": 0.25, "eps": 0.0, "eps_root": 1e-8},
    ],
    ids=["defaults", "decay", "grad_averaging", "eps_inside_root"],
)
def test_matches_numpy_transcription(kwargs):
  params, grads = _problem()
  hyper = {"b1": 0.95, "b2": 0.98, "eps": 1e-8, "eps_root": 0.0, "weight_decay": 0.0,
           "grad_averaging": False, **kwargs}
  got, state = run_optimizer(optim.novograd(0.01, **hyper), params, grads)
  want, want_v = _numpy_novograd(
      params, grads, lr=0.01, b1=hyper["b1"], b2=hyper["b2"], eps=hyper["eps"],
      eps_root=hyper["eps_root"], wd=hyper["weight_decay"], grad_averaging=hyper["grad_averaging"],
  )
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(state[0].nu[k], want_v[k], rtol=1e-5)
    assert state[0].nu[k].shape == ()  # one scalar per layer


def test_first_step_initializes_the_second_moment_with_the_squared_norm():
  params, grads = _problem(1)
  optimizer = optim.scale_by_novograd(b1=0.95, b2=0.98)
  updates, state = optimizer.update(grads[0], optimizer.init(params), params)
  for k in params:
    norm_sq = np.sum(grads[0][k].astype(np.float64) ** 2)
    np.testing.assert_allclose(state.nu[k], norm_sq, rtol=1e-6)  # not (1 - b2) * norm_sq
    np.testing.assert_allclose(updates[k], grads[0][k] / (np.sqrt(norm_sq) + 1e-8), rtol=1e-5)


def test_weight_decay_mask_matches_transcription_and_works_under_inject_hyperparams():
  params, grads = _problem(2)
  mask = lambda p: {"w": True, "b": False}
  want, _ = _numpy_novograd(params, grads, lr=0.01, b1=0.95, b2=0.98, eps=1e-8, wd=0.1,
                            decayed={"w": True, "b": False})
  for optimizer in (
      optim.novograd(0.01, weight_decay=0.1, weight_decay_mask=mask),
      optim.inject_hyperparams(optim.novograd)(
          learning_rate=0.01, weight_decay=0.1, weight_decay_mask=mask
      ),
  ):
    got, _ = run_optimizer(optimizer, params, grads)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_optax_novograd_where_they_overlap(weight_decay):
  params, grads = _problem(3)
  hyper = dict(b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=weight_decay)
  got, _ = run_optimizer(optim.novograd(0.01, **hyper), params, grads)
  want, _ = run_optimizer(optax.novograd(0.01, **hyper), params, grads)
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


def test_state_dtypes_for_bfloat16_params_differ_from_optax():
  params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
  grads = {"w": jnp.full((3, 2), 0.5, jnp.bfloat16)}
  ours = optim.novograd(1e-3)
  updates, state = ours.update(grads, ours.init(params), params)
  assert state[0].mu["w"].dtype == jnp.float32 and state[0].nu["w"].dtype == jnp.float32
  assert updates["w"].dtype == jnp.bfloat16
  theirs = optax.novograd(1e-3).init(params)[0]
  assert theirs.mu["w"].dtype == jnp.bfloat16 and theirs.nu["w"].dtype == jnp.bfloat16


def test_zero_first_gradient_gives_a_zero_update_not_nan():
  params = {"w": jnp.ones(4)}
  optimizer = optim.novograd(0.1)
  updates, _ = optimizer.update({"w": jnp.zeros(4)}, optimizer.init(params), params)
  np.testing.assert_array_equal(updates["w"], 0.0)


@pytest.mark.parity
@pytest.mark.parametrize("weight_decay", [0.0, 0.02])
def test_matches_pytorch_optimizer_novograd(weight_decay):
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  params, grads = _problem(4)
  tensors = _torchrun_optimizer(torch, pytorch_optimizer, params, grads, weight_decay=weight_decay)
  got, _ = run_optimizer(optim.novograd(0.01, 0.95, 0.98, 1e-8, weight_decay=weight_decay), params, grads)
  for k, t in tensors.items():
    np.testing.assert_allclose(got[k], t.detach().numpy(), rtol=2e-5, atol=1e-6)


@pytest.mark.parity
def test_grad_averaging_first_step_differs_from_pytorch_optimizer():
  """pytorch-optimizer copies u_1 into m_1; the official code (and jaxlearn) scales it by 1 - b1."""
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  params, grads = _problem(5)
  theirs = _torchrun_optimizer(torch, pytorch_optimizer, params, grads[:1], grad_averaging=True)
  ours, _ = run_optimizer(optim.novograd(0.01, 0.95, 0.98, grad_averaging=True), params, grads[:1])
  for k in params:
    their_step = theirs[k].detach().numpy() - params[k]
    our_step = np.asarray(ours[k]) - params[k]
    np.testing.assert_allclose(our_step, (1 - 0.95) * their_step, rtol=1e-4, atol=1e-7)


def _torchrun_optimizer(torch, pytorch_optimizer, params, grads, **kwargs):
  tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
  reference = pytorch_optimizer.NovoGrad(
      list(tensors.values()), lr=0.01, betas=(0.95, 0.98), eps=1e-8, **kwargs
  )
  for g in grads:
    for k, t in tensors.items():
      t.grad = torch.tensor(g[k], dtype=torch.float64)
    reference.step()
  return tensors


@pytest.mark.parametrize(
    "kwargs,name",
    [({"b1": 1.0}, "b1"), ({"b2": -0.5}, "b2"), ({"eps": -1.0}, "eps"),
     ({"eps": 0.0, "eps_root": 0.0}, "eps"), ({"weight_decay": -0.1}, "weight_decay"),
     ({"weight_decay": optax.constant_schedule(0.1)}, "weight_decay"),
     ({"learning_rate": -1.0}, "learning_rate")],
)
def test_bad_hyperparameters_raise(kwargs, name):
  kwargs = {"learning_rate": 1e-3, **kwargs}
  with pytest.raises(ValueError, match=name):
    optim.novograd(**kwargs)
