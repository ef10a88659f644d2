"""Online Normalization against a NumPy transcription of the official NumPy code.

The reference below transcribes `online-norm/numpy_on/online_norm_1d.py` and `online_norm_2d.py`
of github.com/Cerebras/online-normalization (per-sample loops for the forward statistics and the
backward u, v control, the affine, activation clamping and layer scaling), written channels last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn import nn as jnn

A_FWD, A_BKW, EPS = 0.9, 0.8, 1e-5  # faster than the defaults so that a short stream moves them


def reference_forward(x, mean, var, a_fwd, eps):
  """Per sample: normalize with the previous statistics, then update them (spatial moments)."""
  x = x.astype(np.float64)
  mean, var = mean.astype(np.float64).copy(), var.astype(np.float64).copy()
  spatial = tuple(range(1, x.ndim - 1))
  z, scales = np.empty_like(x), []
  for t in range(x.shape[0]):
    scale = np.sqrt(var + eps)
    z[t] = (x[t] - mean) / scale
    scales.append(scale)
    m_t = x[t].mean(axis=tuple(a - 1 for a in spatial)) if spatial else x[t]
    s2_t = x[t].var(axis=tuple(a - 1 for a in spatial)) if spatial else 0.0
    var = a_fwd * var + (1 - a_fwd) * s2_t + a_fwd * (1 - a_fwd) * (m_t - mean) ** 2
    mean = mean + (1 - a_fwd) * (m_t - mean)
  return z, mean, var, np.stack(scales)


def reference_backward(g, z, scales, u, v, a_bkw):
  """Per sample in forward order: the v (scale) control, then the u (mean) control."""
  u, v = u.astype(np.float64).copy(), v.astype(np.float64).copy()
  spatial = tuple(range(g.ndim - 2))
  dx = np.empty_like(g, dtype=np.float64)
  for t in range(g.shape[0]):
    grad = g[t] - (1 - a_bkw) * v * z[t]
    v = v + ((grad * z[t]).mean(axis=spatial) if spatial else grad * z[t])
    grad = grad / scales[t]
    dx[t] = grad - (1 - a_bkw) * u
    u = u + (dx[t].mean(axis=spatial) if spatial else dx[t])
  return dx, u, v


def reference_layer(x, dy, state, gamma, beta, ecm, clamp=5.0, ls_eps=1e-5):
  """Forward and backward of Norm -> affine -> ECM, and the state after the step."""
  mean, var, u, v = state
  z, new_mean, new_var, scales = reference_forward(x, mean, var, A_FWD, EPS)
  a = z * gamma + beta
  if ecm == "ac":
    y = np.clip(a, -clamp, clamp)
    da = np.where(np.abs(y) == clamp, 0.0, dy)
  else:  # layer scaling over all non-batch axes
    axes = tuple(range(1, a.ndim))
    s = np.sqrt((a * a).mean(axis=axes, keepdims=True) + ls_eps)
    y = a / s
    da = (dy - (dy * y).mean(axis=axes, keepdims=True) * y) / s
  batch_axes = tuple(range(a.ndim - 1))
  d_gamma, d_beta = (da * z).sum(axis=batch_axes), da.sum(axis=batch_axes)
  dx, new_u, new_v = reference_backward(da * gamma, z, scales, u, v, A_BKW)
  return y, dx, d_gamma, d_beta, (new_mean, new_var, new_u, new_v)


def _case(shape, seed):
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = (2.0 * rng.normal(size=shape) + 1.0).astype(np.float32)
  dy = rng.normal(size=shape).astype(np.float32)
  state = tuple(a.astype(np.float32) for a in (
      0.3 * rng.normal(size=c), rng.uniform(0.5, 2.0, c), 0.2 * rng.normal(size=c),
      0.2 * rng.normal(size=c)))
  gamma = rng.uniform(1.0, 3.0, c).astype(np.float32)  # large enough for some clamping
  beta = (0.5 * rng.normal(size=c)).astype(np.float32)
  return x, dy, state, gamma, beta


def _jax_layer(ecm):
  def step(x, dy, state, gamma, beta):
    mean, var, u, v = state

    def f(x, gamma, beta, u, v):
      return jnn.online_norm(
          x, mean=mean, var=var, u=u, v=v, scale=gamma, bias=beta, alpha_fwd=A_FWD,
          alpha_bkw=A_BKW, epsilon=EPS, ecm=ecm)

    (y, new_mean, new_var), vjp = jax.vjp(f, x, gamma, beta, u, v)
    dx, d_gamma, d_beta, du, dv = vjp((dy, jnp.zeros_like(new_mean), jnp.zeros_like(new_var)))
    return y, dx, d_gamma, d_beta, (new_mean, new_var, u + du, v + dv)
  return jax.jit(step)


@pytest.mark.parametrize("shape, ecm", [((7, 5), "ac"), ((3, 2, 3, 4), "ls")],
                         ids=["1d_clamp", "2d_layer_scaling"])
def test_layer_matches_numpy_transcription_forward_backward_and_state(shape, ecm):
  x, dy, state, gamma, beta = _case(shape, seed=len(shape))
  expected = reference_layer(x, dy, state, gamma, beta, ecm)
  if ecm == "ac":
    assert np.any(np.abs(expected[0]) == 5.0), "the case must exercise the clamp"
  actual = _jax_layer(ecm)(x, dy, state, gamma, beta)
  for name, a, e in zip(("y", "dx", "d_gamma", "d_beta", "state"), actual, expected):
    for leaf_a, leaf_e in zip(jax.tree.leaves(a), jax.tree.leaves(e)):
      np.testing.assert_allclose(leaf_a, leaf_e, rtol=2e-5, atol=2e-5, err_msg=name)


def test_streamed_gradient_is_zero_mean_and_orthogonal_to_the_output():
  # The paper's claim for the backward control: over a stream, the input gradient has zero mean
  # and no component along the normalized output, whatever the output gradient's bias and its
  # correlation with the output (here g = 1 + 2 z + noise, batch size 1, default decays).
  rng = np.random.default_rng(0)
  n, c = 3000, 2
  x = (3.0 * rng.normal(size=(n, c)) - 2.0).astype(np.float32)
  mean, var = np.full(c, -2.0, np.float32), np.full(c, 9.0, np.float32)
  zeros = np.zeros(c, np.float32)

  @jax.jit
  def stream(x, noise):
    f = lambda x: jnn.online_normalize(x, mean=mean, var=var, u=zeros, v=zeros)[0]
    z, vjp = jax.vjp(f, x)
    g = 1.0 + 2.0 * z + noise
    return z, g, vjp(g)[0]

  z, g, dx = map(np.asarray, stream(x, rng.normal(size=(n, c)).astype(np.float32)))
  tail = slice(n // 2, None)  # after the controls settled (time constant 1 / (1 - 0.99))
  plain = g[tail] / 3.0  # what dx would be without the control
  assert np.all(np.abs(plain.mean(0)) > 0.3) and np.all(np.abs((plain * z[tail]).mean(0)) > 0.6)
  np.testing.assert_array_less(np.abs(dx[tail].mean(0)), 0.02)
  np.testing.assert_array_less(np.abs((dx[tail] * z[tail]).mean(0)), 0.02)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="alpha_fwd"):
    jnn.OnlineNorm(3, alpha_fwd=1.5)
  with pytest.raises(ValueError, match="alpha_bkw"):
    jnn.OnlineNorm(3, alpha_bkw=float("nan"))
  with pytest.raises(ValueError, match="ecm"):
    jnn.OnlineNorm(3, ecm="bn")
  with pytest.raises(ValueError, match="clamp_value"):
    jnn.OnlineNorm(3, clamp_value=0.0)
  with pytest.raises(ValueError, match="axis_name"):  # per-device streams cannot be averaged
    jnn.OnlineNorm(3, axis_name="batch")(np.ones((2, 3), np.float32))
