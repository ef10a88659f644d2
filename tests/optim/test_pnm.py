"""PNM and AdaPNM against a NumPy transcription of the official code and pytorch-optimizer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim
from tests.optim._helpers import (
    assert_bfloat16_gradients_give_the_float32_state,
    run_optimizer,
)

STEPS = 7


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(STEPS)]
  return params, grads


def numpy_pnm(params, grads, lr, b1, b0, wd, adaptive=False, b2=0.999, eps=1e-8, amsgrad=True,
              softplus_beta=None, pytorch_optimizer_eps=False):
  """zeke-xie/Positive-Negative-Momentum pnm.py / adapnm.py (decoupled decay), float64.

  `pytorch_optimizer_eps`: pytorch-optimizer AdaPNM's denominator
  (sqrt(v_max + 1e-15) + eps) / sqrt(1 - b2^t) instead of the official sqrt(v_max) / sqrt(1 - b2^t)
  + eps."""
  theta = {k: v.astype(np.float64) for k, v in params.items()}
  buffers = [{k: np.zeros_like(v) for k, v in theta.items()} for _ in range(2)]
  v = {k: np.zeros_like(x) for k, x in theta.items()}
  v_max = {k: np.zeros_like(x) for k, x in theta.items()}
  noise_norm = math.sqrt((1 + b0) ** 2 + b0**2)
  for t, g in enumerate(grads, start=1):
    pos, neg = (buffers[0], buffers[1]) if t % 2 == 1 else (buffers[1], buffers[0])
    for k in theta:
      theta[k] = theta[k] * (1 - lr * wd)
      pos[k] = b1**2 * pos[k] + (1 - b1**2) * g[k]
      direction = ((1 + b0) * pos[k] - b0 * neg[k]) / noise_norm
      if not adaptive:
        theta[k] = theta[k] - lr * direction
        continue
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      v_max[k] = np.maximum(v_max[k], v[k])
      denom = np.sqrt(v_max[k] if amsgrad else v[k]) / math.sqrt(1 - b2**t) + eps
      if pytorch_optimizer_eps:
        denom = (np.sqrt((v_max[k] if amsgrad else v[k]) + 1e-15) + eps) / math.sqrt(1 - b2**t)
      if softplus_beta is not None:
        denom = np.logaddexp(0.0, softplus_beta * denom) / softplus_beta
      theta[k] = theta[k] - lr / (1 - b1**t) * direction / denom
  return theta


def _close(got, want, rtol=1e-5, atol=1e-6):
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("b1,b0,wd", [(0.9, 1.0, 0.0), (0.9, 0.5, 0.1), (0.5, 0.0, 0.0)])
def test_pnm_matches_numpy_transcription(b1, b0, wd):
  params, grads = _problem()
  got, _ = run_optimizer(optim.pnm(0.05, b1=b1, b0=b0, weight_decay=wd), params, grads)
  _close(got, numpy_pnm(params, grads, 0.05, b1, b0, wd))


@pytest.mark.parametrize("amsgrad,softplus_beta,wd", [(True, None, 0.0), (False, None, 0.1),
                                                       (True, 50.0, 0.0)])
def test_adapnm_matches_numpy_transcription(amsgrad, softplus_beta, wd):
  params, grads = _problem(1)
  transform = optim.scale_by_adapnm(softplus_beta=softplus_beta, amsgrad=amsgrad)
  optimizer = optax.chain(transform, optim.decayed_weights(wd), optax.scale_by_learning_rate(0.01))
  got, _ = run_optimizer(optimizer, params, grads)
  want = numpy_pnm(params, grads, 0.01, 0.9, 1.0, wd, adaptive=True, amsgrad=amsgrad,
                   softplus_beta=softplus_beta)
  _close(got, want)


def test_adapnm_second_moment_is_the_bias_corrected_ema():
  params, grads = _problem(2)
  _, state = run_optimizer(optim.scale_by_adapnm(b2=0.99), params, grads)
  nu_hat = optim.adapnm_second_moment(state, 0.99)
  want = {k: sum((1 - 0.99) * 0.99 ** (STEPS - 1 - i) * g[k].astype(np.float64) ** 2
                 for i, g in enumerate(grads)) / (1 - 0.99**STEPS) for k in params}
  _close(nu_hat, want)


@pytest.mark.parity
@pytest.mark.parametrize("adaptive", [False, True], ids=["PNM", "AdaPNM"])
def test_matches_pytorch_optimizer(adaptive):
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  params, grads = _problem(3)
  tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
  if adaptive:
    reference = pytorch_optimizer.AdaPNM(list(tensors.values()), lr=0.01, weight_decay=0.1)
    ours = optim.adapnm(0.01, weight_decay=0.1)
  else:
    reference = pytorch_optimizer.PNM(list(tensors.values()), lr=0.05, weight_decay=0.1)
    ours = optim.pnm(0.05, weight_decay=0.1)
  for g in grads:
    for k, t in tensors.items():
      t.grad = torch.tensor(g[k], dtype=torch.float64)
    reference.step()
  got, _ = run_optimizer(ours, params, grads)
  _close(got, {k: t.detach().numpy() for k, t in tensors.items()})


@pytest.mark.parity
def test_pytorch_optimizer_adapnm_scales_eps_by_the_bias_correction():
  """The official AdaPNM (and jaxlearn) divides by sqrt(v_max) / sqrt(1 - b2^t) + eps;
  pytorch-optimizer divides by (sqrt(v_max + 1e-15) + eps) / sqrt(1 - b2^t), an eps larger by
  1 / sqrt(1 - b2^t) (31.6x at t = 1). Visible for gradients of the order of eps."""
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  params, grads = _problem(3)
  grads = [{k: 1e-8 * v for k, v in g.items()} for g in grads]
  tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
  reference = pytorch_optimizer.AdaPNM(list(tensors.values()), lr=0.01)
  for g in grads:
    for k, t in tensors.items():
      t.grad = torch.tensor(g[k], dtype=torch.float64)
    reference.step()
  theirs = {k: t.detach().numpy() for k, t in tensors.items()}
  ours, _ = run_optimizer(optim.adapnm(0.01), params, grads)
  _close(theirs, numpy_pnm(params, grads, 0.01, 0.9, 1.0, 0.0, adaptive=True,
                           pytorch_optimizer_eps=True))
  _close(ours, numpy_pnm(params, grads, 0.01, 0.9, 1.0, 0.0, adaptive=True))
  assert max(np.max(np.abs(ours[k] - params[k]) - np.abs(theirs[k] - params[k])) for k in ours) > 1e-3


def test_inject_hyperparams_matches_plain_and_keeps_dtypes():
  params, grads = _problem(4)
  plain, _ = run_optimizer(optim.adapnm(0.01, b0=0.7, weight_decay=0.1), params, grads)
  injected, state = run_optimizer(optim.inject_hyperparams(optim.adapnm)(0.01, b0=0.7, weight_decay=0.1),
                         params, grads)
  _close(injected, plain, rtol=1e-6, atol=1e-7)
  assert state.inner_state[0].mu_odd["w"].dtype == jnp.float32
  bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  updates, _ = optim.scale_by_adapnm().update(bf16, optim.scale_by_adapnm().init(bf16))
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


def test_bfloat16_gradients_give_the_float32_state():
  """Both momentum buffers and the second moment cast the gradient to float32 before
  (1 - b) * g (`_common.update_moment`); they used to round it to bfloat16 first."""
  assert_bfloat16_gradients_give_the_float32_state(
      optim.scale_by_adapnm(), ("mu_odd", "mu_even", "nu", "nu_max"))


@pytest.mark.parametrize("kwargs, name", [
    (dict(b1=1.0), "b1"), (dict(b2=-0.1), "b2"), (dict(b0=-1.0), "b0"), (dict(eps=-1.0), "eps"),
    (dict(softplus_beta=0.0), "softplus_beta"),
])
def test_bad_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optim.scale_by_adapnm(**kwargs)
