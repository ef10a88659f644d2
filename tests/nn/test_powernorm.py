"""PowerNorm against a NumPy transcription of the official `MaskPowerNorm` / `PowerFunction`.

The reference below is written from the equations of github.com/sIncerass/powernorm,
`fairseq/modules/norms/mask_powernorm.py` (forward, approximate backward, Γ = `ema_gz` increment,
warm-up branches, padding), in our (B, T, C) layout with a mask that is True on real tokens, plus
the hand-derived backward of the group-scaling pre-step (autodiff in the official code).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn
from jaxlearn.nn import linen as jnn_linen
from jaxlearn.nn.powernorm import power_normalize

B, T, C, G = 3, 4, 6, 2
EPS = 1e-5
AF, AB, WARMUP = 0.8, 0.7, 3


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = (1.5 * rng.normal(size=(B, T, C)) + 0.5).astype(np.float32)
  mask = np.ones((B, T), bool)
  mask[0, 2:] = False  # padding
  mask[2, 1:] = False
  x[~mask] = 7.0  # large padded values: must not enter the statistics
  return dict(
      x=x, mask=mask,
      scale=rng.uniform(0.5, 1.5, C).astype(np.float32),
      bias=rng.normal(size=C).astype(np.float32),
      psi=rng.uniform(0.5, 2.0, C).astype(np.float32),
      ema_gz=rng.normal(size=C).astype(np.float32),
      dy=rng.normal(size=(B, T, C)).astype(np.float32),
  )


def np_group_scale(x, groups, eps=1e-5):
  g = x.reshape(*x.shape[:-1], groups, -1).astype(np.float64)
  r = np.sqrt(np.mean(g * g, axis=-1, keepdims=True) + eps)
  return (g / r).reshape(x.shape), r


def np_group_scale_backward(x, groups, dxg, eps=1e-5):
  g = x.reshape(*x.shape[:-1], groups, -1).astype(np.float64)
  d = dxg.reshape(g.shape)
  m = g.shape[-1]
  r = np.sqrt(np.mean(g * g, axis=-1, keepdims=True) + eps)
  dx = d / r - g * np.sum(d * g, axis=-1, keepdims=True) / (m * r**3)
  return dx.reshape(x.shape)


def np_powernorm(x, mask, scale, bias, psi, t, ema_gz, dy, *, afwd, abkw, warmup, eps, groups):
  """One official training call (t = the already-incremented counter) and its backward."""
  xg, _ = np_group_scale(x, groups)
  var = np.mean(xg[mask] ** 2, axis=0)  # mask_input: the real tokens only
  z = xg / np.sqrt(var + eps) if t <= warmup else xg / np.sqrt(psi + eps)
  new_psi = psi.astype(np.float64)
  if t < warmup:
    new_psi = new_psi * (t - 1) / t + var / t
  new_psi = afwd * new_psi + (1 - afwd) * var
  y = scale * z + bias
  # PowerFunction.backward
  g = dy * scale
  approx = g - (1 - abkw) * ema_gz * z
  increment = np.mean(approx * z, axis=(0, 1))  # all tokens, padding included
  dxg = approx / np.sqrt(var + eps)
  dx = np_group_scale_backward(x, groups, dxg)
  return dict(y=y, psi=new_psi, dx=dx, dscale=np.sum(dy * z, axis=(0, 1)),
              dbias=np.sum(dy, axis=(0, 1)), increment=increment)


@functools.partial(jax.jit, static_argnames=("alpha_bkw", "custom_backward"))
def _train_call(d, step, alpha_bkw=AB, custom_backward=True):
  def f(x, scale, bias, ema_gz):
    return power_normalize(
        x, scale=scale, bias=bias, psi=d["psi"], step=step, ema_gz=ema_gz, mask=d["mask"],
        num_groups=G, alpha_fwd=AF, alpha_bkw=alpha_bkw, warmup=WARMUP, epsilon=EPS,
        custom_backward=custom_backward)

  (y, psi, t), vjp = jax.vjp(f, d["x"], d["scale"], d["bias"], d["ema_gz"])
  no_step = np.zeros((), jax.dtypes.float0)  # the cotangent of the integer counter
  dx, dscale, dbias, increment = vjp((d["dy"], jnp.zeros_like(psi), no_step))
  return dict(y=y, psi=psi, t=t, dx=dx, dscale=dscale, dbias=dbias, increment=increment)


@pytest.mark.parametrize("step", [0, 1, 2, 5], ids=["t1_cumulative", "t2_cumulative",
                                                     "t3_last_batch_statistics", "t6_running"])
def test_training_call_and_backward_match_the_official_function(step):
  d = _data()
  out = _train_call({k: jnp.asarray(v) for k, v in d.items()}, jnp.int32(step))
  ref = np_powernorm(d["x"], d["mask"], d["scale"], d["bias"], d["psi"], step + 1, d["ema_gz"],
                     d["dy"], afwd=AF, abkw=AB, warmup=WARMUP, eps=EPS, groups=G)
  assert int(out["t"]) == step + 1
  for name in ("y", "psi", "dx", "dscale", "dbias", "increment"):
    np.testing.assert_allclose(out[name], ref[name], rtol=2e-5, atol=2e-5, err_msg=name)


def test_alpha_bkw_one_equals_autodiff_with_constant_batch_statistics():
  d = {k: jnp.asarray(v) for k, v in _data(1).items()}
  out = _train_call(d, jnp.int32(0), alpha_bkw=1.0)  # t = 1 <= warmup: batch statistics

  def independent(x, scale):  # x / stop_gradient(sqrt(var + eps)) after the group scaling
    g = x.reshape(B, T, G, C // G)
    xg = (g / jnp.sqrt(jnp.mean(g * g, -1, keepdims=True) + 1e-5)).reshape(x.shape)
    var = jnp.sum(jnp.where(d["mask"][..., None], xg**2, 0), (0, 1)) / jnp.sum(d["mask"])
    y = scale * xg / jax.lax.stop_gradient(jnp.sqrt(var + EPS)) + d["bias"]
    return jnp.sum(y * d["dy"])

  dx, dscale = jax.jit(jax.grad(independent, (0, 1)))(d["x"], d["scale"])
  np.testing.assert_allclose(out["dx"], dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["dscale"], dscale, rtol=1e-5, atol=1e-5)
  # ... while alpha_bkw < 1 with a nonzero Γ corrects the gradient.
  assert not np.allclose(_train_call(d, jnp.int32(0))["dx"], dx, atol=1e-3)


def test_eval_uses_psi_and_updates_nothing_and_padding_is_ignored():
  d = _data(2)
  model = jnn.PowerNorm(C, num_groups=G, rngs=nnx.Rngs(0))
  model.psi[...] = jnp.asarray(d["psi"])
  model.eval()
  y = nnx.jit(lambda m, x, mask: m(x, mask))(model, jnp.asarray(d["x"]), jnp.asarray(d["mask"]))
  xg, _ = np_group_scale(d["x"], G)
  np.testing.assert_allclose(y, xg / np.sqrt(d["psi"] + EPS), rtol=1e-5, atol=1e-6)
  assert int(model.step[...]) == 0
  np.testing.assert_allclose(model.psi[...], d["psi"])


def test_masked_statistics_sync_across_devices_with_unequal_padding():
  d = _data(3)
  x = jnp.asarray(np.concatenate([d["x"], d["x"][:1]]))  # batch 4: shards of 2
  mask = np.concatenate([d["mask"], d["mask"][2:3]])  # shard 0: 1 padded row, shard 1: 2
  c = jnp.ones(C)

  def call(x, mask, axis_name=None):
    return power_normalize(x, scale=c, bias=0 * c, psi=c, step=jnp.int32(0), ema_gz=0 * c,
                           mask=mask, num_groups=G, axis_name=axis_name)

  _, psi_full, _ = jax.jit(call)(x, jnp.asarray(mask))
  sharded = jax.jit(jax.vmap(functools.partial(call, axis_name="b"), axis_name="b"))
  _, psi_shards, _ = sharded(x.reshape(2, 2, T, C), jnp.asarray(mask).reshape(2, 2, T))
  np.testing.assert_allclose(psi_shards, np.stack([psi_full, psi_full]), rtol=1e-6)


def test_bad_mask_and_hyperparameters_raise():
  x = jnp.ones((2, 3, 4))
  model = jnn.PowerNorm(4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="mask must have"):
    model(x, jnp.ones((3, 2), bool))
  with pytest.raises(ValueError, match="mask must be a boolean"):
    model(x, jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="mask must have"):
    jax.eval_shape(lambda: jnn_linen.PowerNorm().init(jax.random.key(0), x, jnp.ones((2,), bool),
                                                      use_running_average=False))
  for kwargs, name in [({"alpha_fwd": 1.5}, "alpha_fwd"), ({"alpha_bkw": float("nan")},
                       "alpha_bkw"), ({"warmup": -1}, "warmup"), ({"epsilon": 0.0}, "epsilon"),
                       ({"num_groups": 3}, "num_groups"), ({"warmup": 2.5}, "warmup")]:
    with pytest.raises(ValueError, match=name):
      jnn.PowerNorm(4, **kwargs, rngs=nnx.Rngs(0))
